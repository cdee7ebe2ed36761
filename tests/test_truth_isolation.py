"""Hidden intents stay hidden: the stages that must discover intents never read `sim/truth`.

Mining, clustering, tools, the planner and the service learn from logs alone. Two checks:

- a text scan of their source for the truth table's name and any import of `revision.sim` (the
  simulator: its truth reader, its intents and its photo manifest, which names the
  photographed product);
- a behaviour test, which also catches indirect routes (a helper elsewhere that reads the
  truth, a path built by concatenation): the whole loop runs end to end on a simulated
  warehouse reopened as a `TruthlessWarehouse`, which refuses, and records, every read of a
  `sim/` table or artefact.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

import revision
from revision.tables import TRUTH, USER_TRUTH
from revision.warehouse import Warehouse

PACKAGES = ("mining", "clustering", "tools", "planner", "serve")
SRC = Path(revision.__file__).resolve().parent
FORBIDDEN_TEXT = re.compile(r"sim/truth|sim\\truth|revision\.sim\b|[\"']sim[\"']\s*,\s*[\"']truth")


def _sources() -> list[Path]:
    return sorted(
        p
        for pkg in PACKAGES
        if (SRC / pkg).is_dir()
        for p in (SRC / pkg).rglob("*")
        if p.suffix in (".py", ".yaml", ".txt", ".j2")
    )


def _sim_imports(path: Path) -> list[str]:
    """Imports that reach revision.sim, absolute or relative."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    depth = len(path.relative_to(SRC).parts) - 1  # package depth below `revision`
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("revision.sim")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the file's package
                if node.level <= depth:
                    continue  # stays inside its own stage package
                module = module if node.level == depth + 1 else ""
                names = [module] if module else [a.name for a in node.names]
            else:
                if module == "revision":
                    names = [a.name for a in node.names]
                else:
                    names = (
                        [module.removeprefix("revision.")] if module.startswith("revision.") else []
                    )
            found += [f"revision.{n}" for n in names if n == "sim" or n.startswith("sim.")]
    return found


def test_stages_that_discover_intents_never_read_the_truth():
    sources = _sources()
    assert sources, f"none of {PACKAGES} found under {SRC}"
    offences = []
    for path in sources:
        text = path.read_text("utf-8", errors="replace")
        offences += [
            f"{path.relative_to(SRC)}: mentions {m.group(0)!r}"
            for m in FORBIDDEN_TEXT.finditer(text)
        ]
        if path.suffix == ".py":
            offences += [f"{path.relative_to(SRC)}: imports {name}" for name in _sim_imports(path)]
    assert not offences, "ground truth leaks into intent discovery:\n" + "\n".join(offences)


@pytest.mark.parametrize(
    ("code", "leaks"),
    [
        ("from revision.sim.truth import read_truth\n", True),
        ("import revision.sim.traffic\n", True),
        ("from revision import sim\n", True),
        ("from ..sim import truth\n", True),
        ("from ...revision.sim import truth\n", False),  # beyond the top: not our package
        ("from . import hierarchy\n", False),
        ("from revision.tables import REQUESTS\n", False),
        ("from revision.simple import x\n", False),
    ],
)
def test_the_import_scan_itself(tmp_path, monkeypatch, code, leaks):
    fake = SRC / "mining" / "_probe.py"  # a path inside a stage package, never written
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: code)
    assert bool(_sim_imports(fake)) is leaks


@pytest.mark.parametrize(
    ("text", "leaks"),
    [
        ('wh.read("sim/truth")', True),
        ("wh.table_dir('sim', 'truth')", True),
        ("import revision.sim", True),
        ('wh.read("logs/requests")', False),
        ("similar = 1", False),
    ],
)
def test_the_text_scan_itself(text, leaks):
    assert bool(FORBIDDEN_TEXT.search(text)) is leaks


# -- the behaviour test: the loop on a warehouse that refuses the simulator's tables ------------


class TruthlessWarehouse(Warehouse):
    """A warehouse that raises on any read of a `sim/...` table (files, dataset, read, exists,
    its folder) or artefact (the photo manifest names the photographed product), and records
    each attempt, so one swallowed by a broad `except` is still seen."""

    def __init__(self, root):
        super().__init__(root)
        self.refused: list[str] = []

    def _guard(self, what: str, name) -> None:
        if str(name).split("/", 1)[0] == "sim":
            self.refused.append(f"{what}({name})")
            raise AssertionError(f"{what}({name}): the simulator's tables are for evaluation only")

    def table_dir(self, name):
        self._guard("table_dir", name)
        return super().table_dir(name)

    def exists(self, name):
        self._guard("exists", name)
        return super().exists(name)

    def files(self, name):
        self._guard("files", name)
        return super().files(name)

    def dataset(self, name):
        self._guard("dataset", name)
        return super().dataset(name)

    def read(self, name, columns=None, filter=None):
        self._guard("read", name)
        return super().read(name, columns=columns, filter=filter)

    def artifact(self, *parts):
        self._guard("artifact", "/".join(parts))
        return super().artifact(*parts)

    def artifact_dir(self, *parts):
        self._guard("artifact_dir", "/".join(parts))
        return super().artifact_dir(*parts)


GUARDED = ("table_dir", "exists", "files", "dataset", "read", "artifact", "artifact_dir")


def refuse_everywhere(monkeypatch, guard: TruthlessWarehouse) -> None:
    """Any other `Warehouse` the code opens on its own (from a path) refuses too, into the
    same record: no route around the guarded instance."""
    for name in GUARDED:
        original = getattr(Warehouse, name)

        def guarded(self, *args, _name=name, _original=original, **kwargs):
            if not isinstance(self, TruthlessWarehouse):
                artefact = _name.startswith("artifact")
                guard._guard(
                    f"{_name} of another Warehouse", "/".join(args) if artefact else args[0]
                )
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Warehouse, name, guarded)


def test_the_guard_refuses_and_records_every_route_to_the_truth(tmp_path, monkeypatch):
    wh = Warehouse(tmp_path / "wh")
    wh.write(TRUTH, TRUTH.empty(), {"dt": "2026-01-01"})
    guarded = TruthlessWarehouse(wh.root)
    refuse_everywhere(monkeypatch, guarded)
    for attempt in (
        lambda: guarded.read(TRUTH),
        lambda: guarded.read_pandas("sim/truth"),
        lambda: guarded.exists(USER_TRUTH),
        lambda: guarded.files("sim/" + "truth"),
        lambda: guarded.duckdb(TRUTH),
        lambda: guarded.artifact_dir("sim", "photos", "manifest"),
        lambda: Warehouse(wh.root).read(TRUTH),  # a warehouse opened elsewhere, from the path
    ):
        with pytest.raises(AssertionError, match="evaluation only"):
            attempt()
    assert len(guarded.refused) == 7 and "another Warehouse" in guarded.refused[-1]
    assert guarded.exists("logs/requests") is False  # everything else reads as usual


@pytest.fixture(scope="module")
def simulated(built_warehouse, tmp_path_factory) -> Path:
    """The small catalog, its attribute heads and two simulated days (default world, a small
    photo pool), written with an ordinary warehouse."""
    from conftest import copy_with_heads, small_world
    from revision.search.pipeline import SearchPipeline
    from revision.sim.traffic import simulate

    root = tmp_path_factory.mktemp("truthless") / "warehouse"
    wh, engine = copy_with_heads(built_warehouse, root)
    simulate(small_world(), SearchPipeline(engine), wh, users=300, days=2, requests=2400, seed=4)
    assert wh.exists(TRUTH) and wh.exists(USER_TRUTH)  # the truth is there, to be refused
    return root


def test_the_loop_never_reads_the_simulators_tables(simulated, monkeypatch):
    """No-click extraction, mining (embedded analyst, calibration fitted on the run),
    clustering, the tool list, planner data, planner training and online planning, and the
    online service, all on the guarded warehouse."""
    from revision import toollist
    from revision.clustering.runner import run_clustering, update_tool_list
    from revision.clustering.store import Source
    from revision.logs.context import HistoryStore
    from revision.logs.no_click import extract_no_click
    from revision.mining import run_mining
    from revision.planner.data import DataConfig, build_planner_data, load_samples
    from revision.planner.online import OnlinePlanner, PlanRequest
    from revision.planner.train import PlannerTrainConfig, train_planner
    from revision.search.engine import SearchEngine
    from revision.search.pipeline import SearchPipeline
    from revision.tables import REQUESTS, SIGNALS

    wh = TruthlessWarehouse(simulated)
    refuse_everywhere(monkeypatch, wh)
    try:
        report = extract_no_click(wh, bot_filter="rules", nsfw=False)
        assert report.no_click > 300
        mined = run_mining(wh, backend="embedded", batch_size=256)
        assert mined.complete and mined.analysed > 300
        assert mined.stats.get("calibration_labels", 0) >= 40, mined.stats  # fitted, not off
        clustered = run_clustering(wh, Source.table(SIGNALS), report=False)
        assert clustered.state["source"] == f"table:{SIGNALS}" and clustered.model.n_items_ > 0
        tools = update_tool_list(wh)
        assert any(not t.retired for t in tools)
        data = build_planner_data(wh, DataConfig())
        assert data.samples["train"] > 20 and data.samples["test"] > 0, data
        doc = toollist.load(wh)
        train = load_samples(wh, "train", expected_digest=doc.digest)
        trained = train_planner(
            train,
            PlannerTrainConfig(out=simulated.parent / "planner", sft_epochs=1, skip_grpo=True,
                               threads=1, vocab_size=400),
            doc.digest,
        )  # fmt: skip
        planner = OnlinePlanner.load(
            wh,
            trained.final,
            live=doc.live_indices(),
            toollist_digest=doc.digest,
            histories=HistoryStore.from_logs(wh),
        )
        engine = SearchEngine.open(wh)
        pipeline = SearchPipeline(engine)
        requests = wh.read_pandas(REQUESTS, columns=["image", "user_id", "ts"]).iloc[:5]
        for image, user, ts in requests.itertuples(index=False):
            photo = wh.resolve(image)
            response = pipeline.search(str(photo), top_k=12)
            results = [(h.product_id, h.score, h.rank) for h in response.results]
            embedding = engine.encode(photo_image(photo))
            outcome = planner.plan(
                PlanRequest(np.asarray(embedding), results, user, int(ts.timestamp() * 1000))
            )
            assert outcome.completion is not None or outcome.error, outcome
        serve_requests(wh, trained.final, requests)
    finally:
        refused = list(wh.refused)
    assert refused == [], f"the loop read the simulator's tables: {refused}"


def photo_image(path):
    from revision.vision.images import load_image

    return load_image(path)


def serve_requests(wh: TruthlessWarehouse, checkpoint, requests) -> None:
    """The online service answering a few logged photos from the guarded warehouse.

    Hook for `revision.serve` (being built): it publishes the trained planner and opens the
    service the way `revision serve` does; when the service's entry point changes, change it
    here, so that the service stays inside this test."""
    from revision.planner.publish import publish
    from revision.search._base import SearchRequest
    from revision.serve.service import RevisionService
    from revision.settings import Settings

    publish(wh, checkpoint)
    settings = Settings(home=wh.root, trigger_threshold=1.0, serve_logs=False, keep_uploads=False)
    with RevisionService.open(wh, settings) as service:
        for image, user, _ in requests.itertuples(index=False):
            response = service.respond(SearchRequest(image=str(wh.resolve(image)), user_id=user))
            assert response.results
