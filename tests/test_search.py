import json

import numpy as np
import pytest
from typer.testing import CliRunner

from revision.cli.main import app
from revision.search._base import Stage
from revision.search.engine import SearchEngine
from revision.search.index import VectorIndex
from revision.search.pipeline import SearchPipeline, relevance
from revision.vision.images import load_image
from revision.vision.query_photos import query_photo_bytes


@pytest.fixture(scope="module")
def engine(built_warehouse):
    return SearchEngine.open(built_warehouse)


def test_catalog_photo_finds_itself_and_reloaded_index_agrees(engine, built_warehouse, tmp_path):
    pipeline = SearchPipeline(engine)
    products = engine.products
    for pid in products["product_id"].iloc[::97]:
        response = pipeline.search(products.loc[pid, "image_path"], top_k=5)
        assert response.results[0].product_id == pid
        assert response.results[0].score == pytest.approx(1.0, abs=1e-4)
        assert [h.rank for h in response.results] == [1, 2, 3, 4, 5]
    exact = engine.exact
    path = engine.index.save(tmp_path / "copy")
    reloaded = VectorIndex.load(path)
    queries = engine.index.vectors_[:50]
    np.testing.assert_array_equal(
        reloaded.search(queries, 10)[1], engine.index.search(queries, 10)[1]
    )
    overlap = (engine.index.search(queries, 10)[1] == exact.search(queries, 10)[1]).mean()
    assert overlap > 0.95


def test_user_photo_retrieves_the_product(engine):
    pipeline = SearchPipeline(engine)
    products = engine.products
    found = 0
    sample = products["product_id"].iloc[::40]
    for i, pid in enumerate(sample):
        photo = query_photo_bytes(load_image(products.loc[pid, "image_path"]), "mild", seed=i)
        found += pid in [h.product_id for h in pipeline.search(photo, top_k=10).results]
    assert found / len(sample) >= 0.9


def test_relevance_is_mean_of_top_four(engine):
    response = SearchPipeline(engine).search_vector(engine.index.vectors_[3], top_k=8)
    assert response.relevance == pytest.approx(np.mean([h.score for h in response.results[:4]]))
    assert relevance([]) == 0.0


def test_hooks_run_in_stage_order_and_can_edit_candidates(engine):
    seen = []

    def recorder(stage):
        def hook(ctx):
            seen.append(stage)

        return hook

    banned = engine.index.ids_[0]

    def drop_first(ctx):
        ctx.candidates = [h for h in ctx.candidates if h.product_id != banned]

    hooks = {s: [recorder(s)] for s in Stage}
    hooks[Stage.FILTER].append(drop_first)
    response = SearchPipeline(engine, hooks).search_vector(engine.vector_of(banned), top_k=5)
    assert seen == list(Stage)
    assert banned not in [h.product_id for h in response.results]
    assert len(response.results) == 5


def test_cli_search_json_lines(engine, built_warehouse, tmp_path):
    pid = engine.index.ids_[7]
    photo = tmp_path / "q.jpg"
    photo.write_bytes(
        query_photo_bytes(load_image(engine.products.loc[pid, "image_path"]), "mild", seed=1)
    )
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    result = CliRunner().invoke(
        app,
        [
            "search",
            str(photo),
            str(bad),
            str(photo),
            "--top-k",
            "3",
            "--json",
            "--warehouse",
            str(built_warehouse.root),
        ],
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 1  # one of three failed; the others still ran
    assert "bad.jpg" in result.stderr
    assert len(lines) == 2
    first = lines[0]
    assert set(first) == {"query", "results", "relevance", "latency_ms"}
    assert first["query"] == str(photo) and len(first["results"]) == 3
    assert set(first["results"][0]) == {"product_id", "score", "rank", "title", "price"}
    assert first["results"][0]["product_id"] == pid and first["latency_ms"] > 0


def test_adapter_rebuilds_index_in_a_projected_space(built_warehouse, tmp_path):
    import shutil

    from revision.search.adapt import adapt_index, is_holdout
    from revision.warehouse import Warehouse

    wh = Warehouse(tmp_path / "wh")
    shutil.copytree(built_warehouse.root, wh.root)
    report = adapt_index(wh, products=60, eval_products=20, epochs=2)
    assert report["train_photos"] == 120 and report["index"]["adapter"]
    assert {"base", "adapted"} <= set(report["medium"])
    engine = SearchEngine.open(wh)
    assert engine.adapter is not None
    assert not np.allclose(engine.raw_vectors, engine.index.vectors_)
    pid = engine.index.ids_[5]
    response = SearchPipeline(engine).search(engine.products.loc[pid, "image_path"], top_k=5)
    assert pid in [h.product_id for h in response.results]
    np.testing.assert_allclose(
        np.linalg.norm(engine.project_query(engine.raw_vector_of(pid))), 1.0, atol=1e-5
    )
    groups = engine.products["variant_group"]
    assert 0.1 < groups.map(is_holdout).mean() < 0.3  # about a fifth held out
