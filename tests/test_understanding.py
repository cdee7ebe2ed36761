"""Query understanding has one home (`revision.vision.understanding`), used by mining and the
tools alike; models and thread pools belong to objects; no artefact is built inside a request
(the text index comes from `revision index build`, resumably); a batch search answers what it
can and says so in its exit code."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from revision.cli.main import app
from revision.errors import InputError, MissingArtifactError
from revision.search._base import Query
from revision.search.engine import SearchEngine
from revision.search.pipeline import SearchPipeline
from revision.text.embed import TextEncoder
from revision.tools.catalog import catalog_arrays
from revision.tools.executor import PlanExecutor
from revision.tools.info import QueryInfo
from revision.vision.encoder import ImageEncoder
from revision.vision.images import content_hash, load_image
from revision.vision.query_photos import make_query_photo
from revision.vision.understanding import CatalogLabels, QueryUnderstanding
from revision.warehouse import Warehouse

SRC = Path(__file__).resolve().parents[1] / "src" / "revision"
runner = CliRunner()


# -- stand-ins ---------------------------------------------------------------------------------


class MeanColour(ImageEncoder):
    """A tiny image encoder (mean RGB, unit length) that counts the photos it encodes."""

    def __init__(self, name: str = "mean-colour", dim: int = 3):
        self.name, self.dim, self.calls = name, dim, 0

    def encode(self, images):
        self.calls += len(images)
        out = []
        for im in images:
            v = np.asarray(im.convert("RGB"), np.float32).reshape(-1, 3).mean(0)[: self.dim]
            out.append(v / (np.linalg.norm(v) + 1e-6))
        return np.stack(out).astype(np.float32)


class StubHeads:
    """Attribute heads whose colour is "Red" when the input's first entry is large."""

    def __init__(self, dim: int = 6):
        self.classes_ = {"colour": ["Blue", "Red"], "pattern": ["Solid", "Stripe"]}
        self.mean_ = np.zeros(dim, np.float32)
        self.seen: list[np.ndarray] = []

    def predict_proba(self, x):
        x = np.atleast_2d(np.asarray(x, np.float32))
        self.seen.append(x)
        red = 1 / (1 + np.exp(-10 * (x[:, 0] - 0.5)))
        return {"colour": np.stack([1 - red, red], 1), "pattern": np.stack([red, 1 - red], 1)}

    def predict(self, x):
        probs = self.predict_proba(x)
        best = {a: (p.argmax(1), p.max(1)) for a, p in probs.items()}
        return [
            {a: (self.classes_[a][int(j[i])], float(m[i])) for a, (j, m) in best.items()}
            for i in range(len(probs["colour"]))
        ]


def _photo(path: Path, colour) -> str:
    Image.new("RGB", (40, 60), colour).save(path)
    return str(path)


def _understanding(heads=None, **options) -> QueryUnderstanding:
    return QueryUnderstanding(
        heads or StubHeads(), encoder=MeanColour(), hist_encoder=MeanColour("hist"), **options
    )


# -- the vision object -------------------------------------------------------------------------


def test_heads_read_the_raw_embedding_and_the_vote_searches_the_search_vector():
    heads = StubHeads()
    u = _understanding(heads)
    raw = np.array([0.9, 0.1, 0.1], np.float32)
    projected = np.array([0.1, 0.2, 0.9], np.float32)  # an adapter's search space
    searched = []

    def search(vector, k):
        searched.append(np.array(vector))
        return np.array([[0.5, 0.4]]), np.array([[0, 1]])

    labels = CatalogLabels(
        codes={"colour": np.array([0, 1]), "category": np.array([0, 0])},
        vocab={"colour": ["Blue", "Red"], "category": ["Top"]},
        search=search,
    )
    photo = u.photo(Image.new("RGB", (8, 8), "red"), embedding=raw, vector=projected)
    attributes = u.attributes(photo, labels)
    np.testing.assert_array_equal(heads.seen[0][0, :3], raw)  # raw, then the histogram
    np.testing.assert_array_equal(searched[0], projected)
    assert attributes["colour"][0] == "Red" and attributes["category"] == ("Top", 1.0)
    assert u.describe(attributes) == "Red Top"


def test_each_part_is_computed_once_however_many_threads_ask():
    u = _understanding()
    photo = u.photo(Image.new("RGB", (8, 8), "blue"))
    barrier = threading.Barrier(8)
    got = []

    def ask():
        barrier.wait()
        got.append(photo.reading().best("colour"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and got[0][0] == "Blue"
    assert u.encoder.calls == 1 and u.hist_encoder.calls == 1 and len(u.heads.seen) == 1


def test_batch_read_caches_by_content_hash_and_keeps_bad_photos_apart(tmp_path):
    red, blue = _photo(tmp_path / "red.png", "red"), _photo(tmp_path / "blue.png", "blue")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not a photo")
    u = _understanding(cache_dir=tmp_path / "cache")
    photos = [
        u.photo(red, key=content_hash(red)),
        u.photo(str(bad), key=content_hash(str(bad))),
        u.photo(blue, key=content_hash(blue)),
        u.photo(red, key=content_hash(red)),  # the same photo twice: encoded once
    ]
    u.read(photos)
    assert isinstance(photos[1].error, InputError) and "bad.jpg" in str(photos[1].error)
    assert [p.reading().best("colour")[0] for p in (photos[0], photos[2], photos[3])] == [
        "Red",
        "Blue",
        "Red",
    ]
    assert u.encoder.calls == 2 and len(u.heads.seen) == 1  # one heads call for the batch
    again = _understanding(cache_dir=tmp_path / "cache")  # a new process: all from the cache
    fresh = [again.photo(p, key=content_hash(p)) for p in (red, blue)]
    again.read(fresh)
    assert again.encoder.calls == 0 and again.hist_encoder.calls == 0
    np.testing.assert_array_equal(fresh[0].features(), photos[0].features())


def test_ocr_on_demand_reads_each_photo_once_and_keeps_it_in_the_store(tmp_path):
    class Reader:
        def __init__(self):
            self.sizes = []

        def text(self, image):
            self.sizes.append(image.size)
            return "BLEN\n DY  "

    class Store(dict):
        puts = 0

        def put(self, texts):
            Store.puts += 1
            self.update(texts)

    reader, store = Reader(), Store()
    u = _understanding(ocr_reader=reader, ocr_store=store, ocr_side=20)
    path = tmp_path / "big.png"
    Image.new("RGB", (200, 100), "white").save(path)
    photos = [u.photo(str(path), key="k1"), u.photo(str(path), key="k1")]
    assert u.read_text(photos) == ["BLEN DY", "BLEN DY"]
    assert reader.sizes == [(20, 10)] and store == {"k1": "BLEN DY"} and Store.puts == 1
    later = _understanding(ocr_reader=reader, ocr_store=store)
    assert later.photo(str(path), key="k1").ocr_text() == "BLEN DY" and len(reader.sizes) == 1
    assert u.photo(None).ocr_text() == ""  # no photo, nothing to read


def test_heads_file_is_followed_and_required_only_when_asked(tmp_path):
    from revision.vision.attributes import AttributeHeads

    u = QueryUnderstanding(tmp_path / "attributes.pt")
    assert u.heads is None and u.photo(Image.new("RGB", (8, 8))).reading() is None
    with pytest.raises(MissingArtifactError, match="revision vision train-attributes"):
        u.require_heads()
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    labels = {"colour": ["a", "b", "c"] * 20}
    import pandas as pd

    AttributeHeads(attributes=("colour",), hidden=8, epochs=2).fit(x, pd.DataFrame(labels)).save(
        tmp_path / "attributes.pt"
    )
    assert u.heads is not None and u.heads.classes_["colour"] == ["a", "b", "c"]


# -- both consumers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(built_warehouse, tmp_path_factory) -> Warehouse:
    """A copy of the small catalog with attribute heads trained on it."""
    from revision.vision.training import train_attributes

    wh = Warehouse(tmp_path_factory.mktemp("understanding") / "wh")
    shutil.copytree(built_warehouse.root, wh.root)
    engine = SearchEngine.open(wh)
    products, raw = engine.products.loc[engine.index.ids_], engine.raw_vectors
    train_attributes(wh, products, raw, engine.encode, augment=20, eval_queries=5, epochs=10)
    return wh


def test_mining_and_tools_read_identical_attributes_for_the_same_photo(trained, tmp_path):
    from revision.mining._base import MiningInput
    from revision.mining.perception import ATTRS, Perception

    engine = SearchEngine.open(trained)
    catalog = catalog_arrays(engine)
    perception = Perception(trained)
    assert isinstance(perception.understanding, QueryUnderstanding)
    assert isinstance(catalog.understanding, QueryUnderstanding)
    compared = 0
    for i, row in enumerate((3, catalog.n // 2, catalog.n - 5)):
        source = engine.products.loc[catalog.ids[row], "image_path"]
        path = tmp_path / f"q{i}.jpg"
        make_query_photo(load_image(source), "medium", seed=i).save(path, quality=90)
        (mined,) = perception.query_facts([MiningInput(f"r{i}", str(path))])
        image = load_image(str(path))
        raw = engine.encode(image)
        query = Query(
            source=str(path),
            image=image,
            vector=engine.project_query(raw),
            facts={"embedding": raw},
        )
        info = QueryInfo(engine, catalog, query)
        reading = info.photo().reading()
        for attr in ATTRS:
            label, p = reading.best(attr)
            assert mined[f"query.{attr}"] == (None if label == "unknown" else label), attr
            assert mined[f"query.{attr}_p"] == round(p, 4), attr
        colour, p = info.attributes()["colour"]  # the tools take colour from the heads alone
        if mined["query.colour"] is not None:
            assert (colour, round(p, 4)) == (mined["query.colour"], mined["query.colour_p"])
            compared += 1
    assert compared


# -- objects own their models and pools ----------------------------------------------------------


def _module_level_calls(tree: ast.Module) -> list[str]:
    names = []
    for node in tree.body:
        value = getattr(node, "value", None)
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(value, ast.Call):
            func = value.func
            names.append(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def test_no_thread_pool_or_model_is_made_at_import():
    heavy = {"ThreadPoolExecutor", "E5", "OcrReader", "RapidOCR", "SentenceTransformer"}
    found = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text("utf-8"))
        found += [f"{path.relative_to(SRC)}: {n}" for n in _module_level_calls(tree) if n in heavy]
        found += [
            f"{path.relative_to(SRC)}: global {name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Global)
            for name in node.names
        ]
    assert found == []


def test_the_executor_owns_its_thread_pools(built_warehouse):
    import revision.tools.executor as module

    ex = PlanExecutor(SearchPipeline(SearchEngine.open(built_warehouse)))
    assert ex._pools is None  # nothing until the first request
    pool = ex.tool_pool
    assert ex.tool_pool is pool and pool.submit(lambda: 7).result() == 7
    with ex:
        pass
    with pytest.raises(RuntimeError):
        pool.submit(lambda: 7)  # shut down
    assert not any(isinstance(v, type(pool)) for v in vars(module).values())


# -- artefacts come from an explicit step --------------------------------------------------------


class HashEncoder(TextEncoder):
    """A cheap deterministic text encoder that counts its calls (and can be made to die)."""

    name = "hash-test"
    dim = 8

    def __init__(self, die_on_call: int | None = None):
        self.calls = 0
        self.die_on_call = die_on_call

    def encode(self, texts):
        self.calls += 1
        if self.calls == self.die_on_call:
            raise KeyboardInterrupt("killed")
        out = np.array(
            [np.frombuffer(hashlib.sha256(t.encode()).digest()[:32], np.uint8)[:8] for t in texts],
            np.float32,
        )
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def wh(built_warehouse, tmp_path) -> Warehouse:
    wh = Warehouse(tmp_path / "wh")
    shutil.copytree(built_warehouse.root, wh.root)
    return wh


def _fake_models(monkeypatch, encoder: HashEncoder) -> None:
    import revision.tools.builtin.text_search as ts

    monkeypatch.setattr(ts, "text_models", lambda *a, **k: ts.TextModels(encoder, encoder))


def test_text_search_without_its_index_fails_at_plan_validation_naming_the_command(wh):
    engine = SearchEngine.open(wh)
    ex = PlanExecutor(SearchPipeline(engine))
    plan = f"({ex.tools.index_of('text_search')})"
    with pytest.raises(MissingArtifactError, match="run `revision index build`"):
        ex.prepare(plan)
    image = engine.products.loc[engine.index.ids_[0], "image_path"]
    args = ["search", image, "--plan", plan, "--warehouse", str(wh.root), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "revision index build" in result.stderr
    assert result.stdout == ""


def test_text_index_build_resumes_after_a_kill_and_goes_stale_with_the_catalog(
    wh, built_warehouse, tmp_path, monkeypatch
):
    from revision.tools.builtin.text_search import build_text_index, load_text_index, passage

    catalog = catalog_arrays(SearchEngine.open(wh))
    unique = len({passage(catalog, r) for r in range(catalog.n)})
    assert unique > 3 * 40
    _fake_models(monkeypatch, HashEncoder(die_on_call=3))
    with pytest.raises(KeyboardInterrupt):
        build_text_index(catalog, chunk=40, show_progress=False)
    with pytest.raises(MissingArtifactError):
        load_text_index(catalog)  # nothing half-built is taken for an index
    _fake_models(monkeypatch, encoder := HashEncoder())
    stats = build_text_index(catalog, chunk=40, show_progress=False).stats
    assert stats["reused"] == 80 and stats["embedded"] == unique - 80  # two chunks survived
    resumed = load_text_index(catalog).vectors

    other = Warehouse(tmp_path / "other")  # the same build, never interrupted
    shutil.copytree(built_warehouse.root, other.root)
    fresh = build_text_index(catalog_arrays(SearchEngine.open(other)), show_progress=False)
    np.testing.assert_array_equal(resumed, fresh.vectors)
    assert encoder.calls > 0

    catalog.titles[0] = catalog.titles[0] + " (renamed)"
    with pytest.raises(MissingArtifactError, match=r"out of date.*revision index build"):
        load_text_index(catalog)


def test_index_build_builds_the_text_index_too(wh, monkeypatch):
    _fake_models(monkeypatch, encoder := HashEncoder())
    result = runner.invoke(app, ["index", "build", "--warehouse", str(wh.root), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["text_index"]["passages"] == summary["products"] and encoder.calls
    again = runner.invoke(app, ["index", "build", "--warehouse", str(wh.root), "--json"])
    assert json.loads(again.stdout)["text_index"]["embedded"] == 0  # nothing left to do
    engine = SearchEngine.open(wh)
    ex = PlanExecutor(SearchPipeline(engine))
    ex.prepare(f"({ex.tools.index_of('text_search')})")  # validates: the index is there


def test_batch_search_answers_the_rest_and_exits_non_zero(wh, tmp_path, monkeypatch):
    engine = SearchEngine.open(wh)
    good = engine.products.loc[engine.index.ids_[5], "image_path"]
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    boom = tmp_path / "boom.jpg"
    shutil.copy(good, boom)
    original = PlanExecutor.search

    def search(self, image, *args, **kwargs):
        if str(image).endswith("boom.jpg"):
            raise RuntimeError("the tool pool fell over")
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(PlanExecutor, "search", search)
    base = ["--plan", "(6)", "--warehouse", str(wh.root), "--json", "--tool-timeout-ms", "20000"]
    result = runner.invoke(app, ["search", good, str(bad), str(boom), good, *base])
    assert result.exit_code == 1, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["query"] for d in lines] == [good, good] and all(d["results"] for d in lines)
    assert "bad.jpg" in result.stderr and "boom.jpg: RuntimeError: the tool pool" in result.stderr
    every = runner.invoke(app, ["search", str(bad), str(boom), *base])
    assert every.exit_code == 2 and every.stdout == ""
