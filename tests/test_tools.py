"""Component tools: one contract test over every registered tool, plans and DAG validation,
the executor (failures, timeouts, stage lanes, concurrency), Info parsing, and the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import typing

import numpy as np
import pytest
from typer.testing import CliRunner

from revision.cli.main import app
from revision.search._base import Query, SearchContext, Stage, SummaryCue
from revision.search.engine import SearchEngine
from revision.search.pipeline import SearchPipeline
from revision.tables import REQUESTS, SIGNALS
from revision.tools import (
    ALLOWED_EDITS,
    DEFAULT_TOOLS,
    Component,
    PlanError,
    PlanExecutor,
    ToolContext,
    ToolDag,
    ToolEntry,
    ToolList,
    ToolStage,
    default_tool_list,
    diff_context,
    fork_context,
    load_plan,
    load_tools,
    parse_indices,
    parse_info,
    registry,
)
from revision.tools.builtin import answer
from revision.tools.builtin.metadata import parse_description
from revision.tools.builtin.text_search import build_text_index
from revision.tools.catalog import catalog_arrays
from revision.tools.dag import Plan, PlanStep
from revision.tools.executor import resolve_inputs
from revision.tools.info import QueryInfo
from revision.vision.images import load_image
from revision.vision.query_photos import make_query_photo
from revision.warehouse import Warehouse

runner = CliRunner()


@pytest.fixture(scope="module")
def warehouse(built_warehouse, tmp_path_factory) -> Warehouse:
    """A writable copy (tools write their text index into the warehouse)."""
    root = tmp_path_factory.mktemp("tools") / "warehouse"
    shutil.copytree(built_warehouse.root, root)
    return Warehouse(root)


@pytest.fixture(scope="module")
def engine(warehouse) -> SearchEngine:
    return SearchEngine.open(warehouse)


@pytest.fixture(scope="module")
def executor(engine) -> PlanExecutor:
    ex = PlanExecutor(SearchPipeline(engine), timeout_ms=20_000)
    build_text_index(ex.catalog)  # what `revision index build` does, once for the module
    return ex


@pytest.fixture(scope="module")
def queries(engine):
    """Photos of priced products whose design comes in several colours and whose type has
    cheaper products, and of one more product."""
    cat = catalog_arrays(engine)
    sizes = np.bincount(cat.group)
    cats = cat.codes["category"]

    def has_cheaper(r):
        same = (cats == cats[r]) & (cat.price <= 0.7 * cat.price[r])
        return bool(same.any())

    multi = [
        r
        for r in range(cat.n)
        if sizes[cat.group[r]] >= 2 and cat.group_names[cat.group[r]] and has_cheaper(r)
    ]
    rows = [multi[0], multi[len(multi) // 2], len(cat.ids) // 3]
    out = []
    for i, r in enumerate(rows):
        photo = make_query_photo(
            load_image(engine.products.loc[cat.ids[r], "image_path"]), "mild", seed=i
        )
        out.append((cat.ids[r], photo, engine.encode(photo)))
    return out


def _query(photo, vector, top_k=10) -> Query:
    return Query(source="test", image=photo, vector=vector, top_k=top_k)


def _context_at(executor, stage: ToolStage, photo, vector) -> SearchContext:
    """The request's context as a tool at `stage` finds it (baseline work of earlier stages)."""
    captured = {}
    hook_stage = Stage.DISPLAY if stage is ToolStage.INTERACTION else Stage(stage.value)

    def grab(ctx):
        captured["ctx"] = fork_context(ctx)

    pipeline = SearchPipeline(executor.engine, {hook_stage: [grab]})
    pipeline.run(_query(photo, vector))
    return captured["ctx"]


# -- the contract, once per registered tool ----------------------------------------------------


@pytest.mark.parametrize("name", DEFAULT_TOOLS)
def test_every_tool_meets_the_contract(name, executor, queries):
    tools = default_tool_list()
    index = tools.index_of(name)
    cls = registry().get(name)
    assert cls.title.strip() and len(cls.description) > 60 and isinstance(cls.stage, ToolStage)
    assert tools.get(index).as_dict()["stage"] == str(cls.stage)
    # the input schema is derived from run's signature and docstring
    import inspect

    params = [p for p in list(inspect.signature(cls.run).parameters)[2:]]
    schema = cls.input_schema()
    assert list(schema.get("properties", {})) == params
    for p in params:
        assert schema["properties"][p].get("description"), f"{name}.{p} lacks a docstring entry"
    hints = typing.get_type_hints(cls.run)
    required = {
        p
        for p, prm in inspect.signature(cls.run).parameters.items()
        if prm.default is inspect.Parameter.empty and p not in ("self", "ctx")
    }
    assert cls.required_inputs() == required and set(params) <= set(hints)

    comp = executor.component(name)
    changed = False
    for _pid, photo, vector in queries:
        base = _context_at(executor, cls.stage, photo, vector)
        diffs = []
        for _ in range(2):  # twice from the same start: the same edits (deterministic)
            fork = fork_context(base)
            tctx = ToolContext(
                search=fork,
                engine=executor.engine,
                pipeline=executor.pipeline,
                catalog=executor.catalog,
                query_info=QueryInfo(executor.engine, executor.catalog, fork.query),
                index=index,
            )
            step = PlanStep(index, name, defaults=dict(tools.get(index).defaults))
            inputs = resolve_inputs(comp, step, tctx)
            tctx.prefetched = comp.prefetch(tctx, **inputs)
            comp.run(tctx, **inputs)
            d = diff_context(base, fork)
            assert d.kinds <= ALLOWED_EDITS[cls.stage], (name, d.kinds)
            diffs.append(
                (
                    sorted(d.kinds),
                    [h.product_id for h in fork.results],
                    [h.product_id for h in fork.candidates[:20]],
                    fork.cues,
                )
            )
        assert diffs[0] == diffs[1], f"{name} is not deterministic"
        changed |= bool(diffs[0][0])
        # through the executor: it runs, it is applied, the response carries the edits
        response = executor.search(photo, f"({index})")
        entry = response.trace[0]
        assert entry.status == "ok", entry
        assert response.applied == [index] and entry.index == index
        assert entry.name == name and entry.ms > 0 and entry.error is None
        assert 1 <= len(response.results) <= 10
    assert changed, f"{name} changed nothing on any test query"


def test_registration_checks_components():
    class NoRun(Component):
        name = "no_run"
        title = "No run"
        description = "Does nothing."

    class Untyped(Component):
        name = "untyped"
        title = "Untyped"
        description = "Has an input without a type."
        stage = ToolStage.DISPLAY

        def run(self, ctx, words=None):  # type: ignore[no-untyped-def]
            """Args:
            words: some words.
            """

    for bad in (NoRun, Untyped):
        with pytest.raises(TypeError):
            registry().register(bad)
    with pytest.raises(ValueError, match="already registered"):

        class Dup(Component):
            name = "search_refinement"
            title = "x"
            description = "y"

            def run(self, ctx: ToolContext) -> None:
                """Nothing."""

        registry().register(Dup)


# -- plans and DAGs ----------------------------------------------------------------------------


def test_plan_strings_parse_and_bad_ones_say_why():
    assert parse_indices("(1) (3) (5)") == [1, 3, 5]
    assert parse_indices("<think>dark photo, ask</think>\n(8)") == [8]
    assert parse_indices("2, 6") == [2, 6]
    for bad, words in (
        ("(1) (x)", "not a tool index"),
        ("(1) (1)", "twice"),
        ("hello", "unexpected text"),
        ("", "names no tools"),
    ):
        with pytest.raises(PlanError, match=words):
            parse_indices(bad)


def test_unknown_index_is_a_clear_error():
    with pytest.raises(PlanError) as err:
        load_plan("(1) (9)", default_tool_list())
    assert "unknown tool index (9)" in str(err.value)
    assert "(8) Preference-guided interaction" in str(err.value)


def test_dag_edges_waves_and_yaml_round_trip(tmp_path):
    dag = ToolDag(load_plan("(7) (2) (5) (6) (1) (8)", default_tool_list()))
    waves = dag.to_dict()["waves"]
    # filter, then rank, then display: labelling and metadata together, summary after labels
    assert waves == [[1], [2], [7, 6], [5], [8]]
    whys = {(e["from"], e["to"]): e["why"] for e in dag.to_dict()["edges"]}
    assert "declares after" in whys[(6, 5)]
    path = tmp_path / "plan.yaml"
    path.write_text(dag.to_yaml())
    again = ToolDag(load_plan(str(path), default_tool_list()))
    assert set(again.graph.edges) >= set(dag.reduced().edges)
    assert again.to_dict()["waves"] == waves


def test_cycle_is_a_clear_error(tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text("steps:\n  - {tool: 5, after: [8]}\n  - {tool: 8}\n")
    with pytest.raises(PlanError, match="cycle") as err:
        ToolDag(load_plan(str(path), default_tool_list()))
    assert "(5) Result summarisation" in str(err.value) and "interaction" in str(err.value)


def test_plan_file_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("steps:\n  - {tool: 2, colour: black}\n")
    with pytest.raises(PlanError, match=r"steps\.0\.colour"):
        load_plan(str(path), default_tool_list())
    path.write_text("plan: '(2)'\ninputs: {2: {direction: sideways}}\n")
    with pytest.raises(PlanError, match="direction"):
        ToolDag(load_plan(str(path), default_tool_list()))


class NeedsWords(Component):
    name = "test_needs_words"
    title = "Needs words"
    description = "A test tool whose input cannot be read from the query."
    stage = ToolStage.DISPLAY

    def run(self, ctx: ToolContext, words: str) -> None:
        """Show the words.

        Args:
            words: what to show.
        """
        ctx.search.cues.append(SummaryCue(attribute="colour", groups=[], text=words))


class Boom(Component):
    name = "test_boom"
    title = "Boom"
    description = "A test tool that fails."
    stage = ToolStage.RANK

    def run(self, ctx: ToolContext) -> None:
        """Fail after scrambling its fork."""
        ctx.search.candidates.reverse()
        raise RuntimeError("boom")


class Stuck(Component):
    """Waits for an event nobody sets during the request: it can only end by a timeout."""

    name = "test_stuck"
    title = "Stuck"
    description = "A test tool that waits for an event nobody sets."
    stage = ToolStage.DISPLAY
    entered = threading.Event()
    release = threading.Event()
    left = threading.Event()

    def run(self, ctx: ToolContext) -> None:
        """Wait until released (never, during a request), then add a cue."""
        cls = type(self)
        cls.entered.set()
        cls.release.wait(600)  # the fixture releases it at teardown, so no thread lingers
        cls.left.set()
        ctx.search.cues.append(SummaryCue(attribute="colour", groups=[], text="released"))


class Meeting(Component):
    """Meets another run of itself at a barrier: both pass only if they run at the same time."""

    name = "test_meeting"
    title = "Meeting"
    description = "A test tool that waits at a barrier for a second run of itself."
    stage = ToolStage.DISPLAY
    barrier = threading.Barrier(2, timeout=30)

    def run(self, ctx: ToolContext) -> None:
        """Wait at the barrier (a broken barrier raises), then add a cue."""
        type(self).barrier.wait()  # the barrier's own timeout
        ctx.search.cues.append(SummaryCue(attribute="colour", groups=[], text="met"))


class Trespasser(Component):
    name = "test_trespasser"
    title = "Trespasser"
    description = "A display-stage test tool that rewrites the candidates."
    stage = ToolStage.DISPLAY

    def run(self, ctx: ToolContext) -> None:
        """Drop every candidate."""
        ctx.search.candidates = []


TEST_TOOLS = (NeedsWords, Boom, Stuck, Trespasser, Meeting)


@pytest.fixture
def test_tools():
    reg = registry()
    for cls in TEST_TOOLS:
        reg.register(cls)
    Stuck.entered, Stuck.release, Stuck.left = (
        threading.Event(),
        threading.Event(),
        threading.Event(),
    )
    Meeting.barrier = threading.Barrier(2, timeout=30)
    entries = [ToolEntry(i, c.title, c.description, c.name) for i, c in enumerate(TEST_TOOLS, 11)]
    entries += [
        ToolEntry(i, e.title, e.description, e.component)
        for i, e in enumerate(default_tool_list(), 1)
    ]
    entries.append(ToolEntry(16, "Second meeting", "Meets the first.", Meeting.name))
    yield ToolList(entries, "test")
    Stuck.release.set()
    Meeting.barrier.abort()
    for cls in TEST_TOOLS:
        reg.unregister(cls.name)


def test_missing_input_is_a_clear_error(test_tools):
    with pytest.raises(PlanError, match=r"\(11\) Needs words: missing input\(s\) words"):
        ToolDag(load_plan("(11)", test_tools))
    plan = Plan([PlanStep(11, NeedsWords.name, "Needs words", inputs={"words": "hi"})])
    assert ToolDag(plan).plan.steps[0].inputs == {"words": "hi"}


def test_tool_list_entries_that_cannot_run_are_named(tmp_path):
    from revision.clustering.toollist import save_tool_list
    from revision.toollist import ToolSpec

    wh = Warehouse(tmp_path / "wh")
    save_tool_list(
        wh,
        [
            ToolSpec(1, "Cheaper supplement", "Add cheaper ones.", "price_segmentation"),
            ToolSpec(2, "Old idea", "Gone.", "variant_expansion", retired=True),
            ToolSpec(3, "Unbound group", "No component.", None),
            ToolSpec(4, "Colour refinement", "Same colour.", "search_refinement"),
        ],
    )
    tools = load_tools(wh)
    assert tools.get(1).defaults == {"direction": "cheaper"}
    assert tools.get(4).defaults == {"same": ["colour"]}
    assert [e["index"] for e in (e.as_dict() for e in tools.active())] == [1, 4]
    with pytest.raises(PlanError, match=r"\(2\) 'Old idea' is retired"):
        load_plan("(1) (2)", tools)
    with pytest.raises(PlanError, match=r"\(3\) 'Unbound group' has no component"):
        load_plan("(3)", tools)


# -- the executor -------------------------------------------------------------------------------


def test_failing_and_trespassing_tools_are_dropped_and_the_baseline_kept(
    executor, queries, test_tools
):
    ex = PlanExecutor(executor.pipeline, test_tools, timeout_ms=20_000)
    _, photo, vector = queries[0]
    base = executor.pipeline.run(_query(photo, vector))
    response = ex.run(_query(photo, vector), "(12) (14) (6)")
    status = {e.index: (e.status, e.error) for e in response.trace}
    assert status[12] == ("failed", "RuntimeError: boom")
    assert status[14][0] == "failed" and "may not edit the candidates" in status[14][1]
    assert status[6] == ("ok", None) and response.applied == [6]
    assert [h.product_id for h in response.results] == [h.product_id for h in base.results]


def test_overrunning_tool_times_out_and_the_response_does_not_wait(executor, queries, test_tools):
    ex = PlanExecutor(executor.pipeline, test_tools, timeout_ms=100)
    _, photo, vector = queries[0]
    response = ex.run(_query(photo, vector), "(13)")  # waits for an event nobody sets
    entry = response.trace[0]
    assert entry.status == "timeout" and "100 ms" in entry.error
    assert response.applied == [] and response.cues == [] and len(response.results) == 10
    # the response came back while the tool was still waiting: it did not wait for it
    assert Stuck.entered.wait(30) and not Stuck.left.is_set()


def test_a_caller_that_gives_up_releases_the_search_thread(executor, queries, test_tools):
    """The caller stops waiting while a hook waits on its loop (which then never runs again):
    the hook must give up, or the search thread is lost for good (and the process cannot
    exit: interpreter shutdown joins the pool's threads)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    ex = PlanExecutor(executor.pipeline, test_tools, timeout_ms=60_000)
    ex._pools = {"revision-search": ThreadPoolExecutor(1, thread_name_prefix="one-search")}
    _, photo, vector = queries[0]
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(TimeoutError):
            loop.run_until_complete(
                asyncio.wait_for(ex.arun(_query(photo, vector), "(13)"), timeout=0.5)
            )
        assert Stuck.entered.wait(30)  # the hook is waiting for the stuck tool
        # the loop is not run again; the only search thread must come free anyway
        assert ex.search_pool.submit(lambda: "free").result(timeout=60) == "free"
        assert not Stuck.left.is_set()  # released before the tool ended, not by it
    finally:
        Stuck.release.set()
        ex.close()
        loop.close()


def test_independent_tools_run_concurrently(executor, queries, test_tools):
    """Two runs of a tool that meet at a barrier: run one after the other, the first would
    wait alone until the barrier breaks (and fail); run together, both pass it."""
    ex = PlanExecutor(executor.pipeline, test_tools, timeout_ms=60_000)
    _, photo, vector = queries[0]
    response = ex.run(_query(photo, vector), "(15) (16)")  # one wave of two meetings
    assert [e.status for e in response.trace] == ["ok", "ok"], response.trace
    assert sorted(response.applied) == [15, 16] and len(response.cues) == 2
    assert not Meeting.barrier.broken


def test_a_tool_that_meets_nobody_fails_which_the_concurrency_test_relies_on(
    executor, queries, test_tools
):
    Meeting.barrier = threading.Barrier(2, timeout=0.2)
    ex = PlanExecutor(executor.pipeline, test_tools, timeout_ms=60_000)
    _, photo, vector = queries[0]
    response = ex.run(_query(photo, vector), "(15)")
    assert response.trace[0].status == "failed" and "BrokenBarrierError" in response.trace[0].error


def test_cheaper_plan_puts_priced_cheaper_products_on_the_page(executor, queries):
    """Expectations from the catalog, not from what the tool reports about itself: the added
    products are priced, of the photographed product's type, and at least `margin` (25%)
    cheaper than it."""
    pid, photo, vector = queries[0]
    base = executor.pipeline.run(_query(photo, vector))
    assert base.results[0].product_id == pid  # precondition: the photographed item is found
    cat = executor.catalog
    row = executor.engine.row_of[pid]
    price, category = float(cat.price[row]), cat.codes["category"][row]
    response = executor.run(_query(photo, vector), executor.dag("(2)", {2: "cheaper"}))
    added = [h for h in response.results if h.source == "price_segmentation"]
    assert response.applied == [2] and response.trace[0].inputs == {"direction": "cheaper"}
    assert 1 <= len(added) <= 4 and pid not in {h.product_id for h in added}
    for h in added:  # never an unpriced product, never above 75% of the item's price
        r = executor.engine.row_of[h.product_id]
        assert h.price is not None and h.price == pytest.approx(float(cat.price[r]))
        assert h.price <= 0.75 * price + 1e-9, (h.price, price)
        assert cat.codes["category"][r] == category


def test_preference_answer_reruns_the_search_refined(executor, queries):
    _, photo, vector = queries[1]
    response = executor.run(_query(photo, vector), "(8)")
    question = next(c for c in response.cues if c.type == "question")
    assert len(question.options) >= 2
    choice = question.options[1]
    again = answer(executor, _query(photo, vector), question, choice)
    attr = question.attribute
    cat = executor.catalog
    shown = [cat.label(attr, executor.engine.row_of[h.product_id]) for h in again.results]
    assert shown and set(shown) == {choice} and again.applied == [1]
    with pytest.raises(Exception, match="not an option"):
        answer(executor, _query(photo, vector), question, "no such option")


def test_plan_from_mined_signals(executor, queries):
    from revision.tools.dag import plan_from_signals

    signals = [
        "Supplement cheaper products -> price below 0.02",
        "Label target products -> same item",
        "Show care details -> cotton",
        "Show same type in another department -> department: Menswear",
    ]
    plan = plan_from_signals(signals, default_tool_list())
    assert plan.indices == [2, 6, 7, 1]
    assert [s.action for s in plan.steps][:2] == [
        "Supplement cheaper products",
        "Label target products",
    ]
    _, photo, vector = queries[0]
    response = executor.run(_query(photo, vector), plan)
    inputs = {e.index: e.inputs for e in response.trace}
    assert inputs[2] == {"direction": "cheaper", "max_price": 0.02}
    assert inputs[6]["badges"] == ["same item"] and inputs[7] == {"fields": ["care"]}
    assert inputs[1]["other"] == "index_group" and inputs[1]["same"] == ["category"]
    with pytest.raises(PlanError, match="no tool matches"):
        plan_from_signals(["Zzzz qqqq -> x"], default_tool_list())


# -- Info and metadata parsing ------------------------------------------------------------------


def test_info_is_parsed_against_the_catalog_vocabulary(executor):
    cat = executor.catalog
    colour = cat.vocab["colour"][0]
    info = parse_info(f"colour: {colour.lower()}", cat)
    assert info.attributes == {"colour": colour}
    info = parse_info("cheaper, price below 0.02", cat)
    assert (info.direction, info.max_price) == ("cheaper", 0.02)
    assert parse_info("price above 0.05").direction == "premium"
    assert parse_info("variant group 0108775").variant_group == "0108775"
    assert parse_info('brand: "Blendy"').text == "Blendy"
    assert parse_info("show material and care").fields == ["material", "care"]
    assert "Menswear" in cat.vocab["index_group"]  # precondition of the next check
    info = parse_info("same type for men", cat)
    assert info.attributes.get("index_group") == "Menswear"


def test_description_metadata():
    got = parse_description(
        "Jacket in washed cotton denim with a collar and buttons down the front. Unlined."
    )
    assert got["material"] == "cotton, denim"
    assert got["care"] and got["care_source"] == "material"
    assert "unlined" in got["specifications"] and "collar" in got["specifications"]
    assert parse_description("Machine wash at 30°C. Top in linen.")["care_source"] == (
        "description"
    )
    assert parse_description("A thing.") == {
        "material": None,
        "care": None,
        "care_source": None,
        "specifications": None,
    }


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_tools_list_json():
    result = runner.invoke(app, ["tools", "list", "--json"])
    assert result.exit_code == 0, result.output
    tools = json.loads(result.stdout)
    assert [t["index"] for t in tools] == list(range(1, 9))
    assert all({"index", "title", "description", "stage"} <= set(t) for t in tools)
    assert tools[1]["stage"] == "rank" and tools[7]["stage"] == "interaction"


def test_cli_search_with_and_without_plan(warehouse, engine, tmp_path):
    pid = engine.index.ids_[5]
    image = engine.products.loc[pid, "image_path"]
    args = ["search", image, "--warehouse", str(warehouse.root), "--json", "--top-k", "5"]
    plain = runner.invoke(app, args)
    assert plain.exit_code == 0, plain.output
    assert list(json.loads(plain.stdout)) == ["query", "results", "relevance", "latency_ms"]
    planned = runner.invoke(app, [*args, "--plan", "(3) (6)", "--tool-timeout-ms", "20000"])
    assert planned.exit_code == 0, planned.output
    doc = json.loads(planned.stdout)
    assert list(doc) == ["query", "results", "relevance", "latency_ms", "applied", "cues", "trace"]
    assert sorted(doc["applied"]) == [3, 6] and doc["trace"][0]["status"] == "ok"
    assert any(c["type"] == "label" and c["badge"] == "same item" for c in doc["cues"])
    out = tmp_path / "plan.png"
    drawn = runner.invoke(app, ["tools", "graph", "(1) (2) (5) (6)", "--out", str(out)])
    assert drawn.exit_code == 0 and out.read_bytes()[:4] == b"\x89PNG"


def test_cli_compare_mined_requests(warehouse, engine, tmp_path):
    import pyarrow as pa

    wh = Warehouse(tmp_path / "wh")
    shutil.copytree(warehouse.root, wh.root)
    ids = engine.index.ids_[:3]
    images = [engine.products.loc[p, "image_path"] for p in ids]
    ts = pa.array([0, 0, 0], REQUESTS.schema.field("ts").type)
    requests = {"request_id": ["r1", "r2", "r3"], "user_id": ["u"] * 3, "ts": ts, "image": images}
    wh.write(REQUESTS, pa.table(requests))
    signals = [
        ("r1", 1, "Show other colour variants", "variant group 1"),
        ("r1", 2, "Label target products", "same item"),
        ("r2", 1, "Unheard-of action xyzzy", "x"),
        ("r3", 1, "Search by text description", "black dress"),
    ]
    wh.write(
        SIGNALS,
        pa.Table.from_pylist(
            [
                dict(zip(("request_id", "position", "action", "info"), s, strict=True))
                for s in signals
            ],
            schema=SIGNALS.schema,
        ),
    )
    args = ["tools", "compare", "--mined", "2", "--exclude", "text_search", "--json"]
    result = runner.invoke(app, [*args, "--warehouse", str(wh.root), "--tool-timeout-ms", "20000"])
    assert result.exit_code == 0, result.output
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["request_id"] for d in docs] == ["r1"] and docs[0]["plan"] == "(3) (6)"
    assert sorted(docs[0]["with_plan"]["applied"]) == [3, 6]
    assert list(docs[0]["baseline"]) == ["query", "results", "relevance", "latency_ms"]


def test_cli_unknown_index_exits_2_without_traceback(warehouse, engine):
    image = engine.products.loc[engine.index.ids_[0], "image_path"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "revision.cli.main",
            "search",
            image,
            "--plan",
            "(12)",
            "--warehouse",
            str(warehouse.root),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown tool index (12)" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_attribute_heads_read_the_raw_embedding_not_the_search_space_vector(
    engine, queries, monkeypatch
):
    """With a projection adapter the query vector lives in the index's space; the heads were
    trained on raw encoder embeddings (kept in `facts["embedding"]`)."""
    from revision.vision.understanding import QueryUnderstanding

    seen = []

    class RecordingHeads:
        def __init__(self):
            self.classes_ = {"colour": ["Black"]}

        def predict_proba(self, features):
            seen.append(features)
            return {"colour": np.ones((1, 1))}

    _, photo, raw = queries[0]
    projected = raw[::-1].copy()  # stands in for the adapter's projection
    query = Query(source="test", image=photo, vector=projected, facts={"embedding": raw})
    understanding = QueryUnderstanding(RecordingHeads())
    QueryInfo(engine, catalog_arrays(engine), query, understanding).attributes()
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0][0, : len(raw)], raw)
