"""The online service in-process: trigger, baseline arm, daily cap, decision cache and planner
versions, fallbacks (timeout, error, malformed), events, logs the mining stage reads, the
trigger threshold rule, and the simulator driving the service through the `Searcher` protocol.

Timeouts are proved with events, never with wall-clock thresholds: a planner held on a
`threading.Event` is still held when the response comes back.
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import serve_support as ss
from revision.catalog.schema import load_products
from revision.errors import InputError
from revision.logs.context import HistoryStore, build_context
from revision.planner.online import PlanOutcome
from revision.search._base import Decision, Query, Searcher, SearchRequest
from revision.search.engine import SearchEngine
from revision.search.pipeline import SearchPipeline
from revision.serve.logwriter import LogWriter
from revision.serve.service import (
    Event,
    EventError,
    RevisionService,
    UnknownRequestError,
    load_planner,
)
from revision.serve.trigger import (
    DEFAULT_THRESHOLD,
    TRIGGER_SHARE,
    choose_threshold,
    threshold_from_logs,
)
from revision.settings import Settings
from revision.tables import CLICKS, EVENTS, IMPRESSIONS, ORDERS, REQUESTS
from revision.tools._registry import load_tools
from revision.tools.grammar import Completion
from revision.warehouse import Warehouse

DAY_MS = 86_400_000
T0 = 1_750_000_000_000  # a fixed clock (2025-06-15): caps and logs follow the request's time


@pytest.fixture(scope="module")
def base(built_warehouse, tmp_path_factory) -> Warehouse:
    return ss.servable_base(built_warehouse, tmp_path_factory)


@pytest.fixture(scope="module")
def engine(base) -> SearchEngine:
    return SearchEngine.open(base).warm_up()


@pytest.fixture(scope="module")
def photos(base) -> list[bytes]:
    """User-like photos (resized, re-encoded) of products whose design has colour variants."""
    products = load_products(base)
    groups = products.groupby("variant_group")["product_id"].transform("count")
    paths = products.loc[groups >= 3, "image_path"].tolist()[::7][:6]
    return [ss.photo_bytes(p) for p in paths]


def settings_for(warehouse: Warehouse, **overrides) -> Settings:
    """Generous budgets (a slow machine never fakes a timeout); nothing written unless asked."""
    values = dict(
        home=warehouse.root,
        serve_logs=False,
        keep_uploads=False,
        trigger_threshold=2.0,  # above any cosine: every request has low relevance
        planner_timeout_ms=60_000,
        tools_timeout_ms=60_000,
    )
    return Settings(**{**values, **overrides})


def service_for(engine: SearchEngine, planner="published", **overrides) -> RevisionService:
    s = settings_for(engine.warehouse, **overrides)
    tools = load_tools(engine.warehouse)
    publication = None
    if planner == "published":
        planner, publication, _ = load_planner(engine.warehouse, s, tools, None)
    return RevisionService(
        engine, settings=s, planner=planner, tools=tools, publication=publication
    )


class Scripted:
    """A planner that answers with a fixed outcome, or raises."""

    version, toollist_digest = "scripted", None

    def __init__(self, outcome=None, raises: Exception | None = None):
        self.outcome, self.raises, self.calls = outcome, raises, 0

    def plan(self, request):
        self.calls += 1
        if self.raises is not None:
            raise self.raises
        return self.outcome


def ask(service, photo: bytes, user="u1", **kwargs):
    return service.respond(SearchRequest(image=photo, user_id=user, ts_ms=T0, **kwargs))


def ids(response) -> list[str]:
    return [h.product_id for h in response.results]


# -- trigger --------------------------------------------------------------------------------------


def test_the_service_and_its_arms_are_searchers(engine):
    with service_for(engine) as service:
        assert isinstance(service, Searcher) and not service.deterministic
        assert isinstance(service.variant("baseline", act=False), Searcher)


def test_untriggered_request_is_the_baseline(engine, photos):
    with service_for(engine, trigger_threshold=-1.0) as service:
        r = ask(service, photos[0])
    plain = SearchPipeline(engine).run(Query("<image>", vector=_raw(engine, photos[0])))
    d = r.decision
    assert not d.triggered and not d.capped and d.cache is None and d.plan is None
    assert d.fallback is None and not d.shown and r.cues == [] and r.applied == []
    assert ids(r) == ids(plain) and d.relevance == pytest.approx(plain.relevance)
    assert set(d.stages) == {"search", "total"}


def test_triggered_request_runs_the_plan(engine, photos):
    with service_for(engine) as service:
        r = ask(service, photos[0])
    d = r.decision
    assert d.triggered and d.cache == "miss" and d.fallback is None and d.shown
    assert d.tools == [8] and d.plan.endswith("(8)") and r.applied == [8]
    assert [c.type for c in r.cues] == ["question"]
    assert d.planner_version == service.planner_version and d.toollist_digest
    assert {"search", "planner", "tools", "total"} <= set(d.stages)
    as_json = r.as_dict(extended=True)["decision"]  # the CLI, the API and the logs agree
    assert Decision.model_validate(as_json) == d


def test_baseline_arm_decides_and_logs_but_shows_nothing(engine, photos):
    with service_for(engine) as service:
        treated = ask(service, photos[1], user="t")
        control = service.variant("baseline", act=False).respond(
            SearchRequest(image=photos[1], user_id="c", ts_ms=T0)
        )
    d = control.decision
    assert d.arm == "baseline" and not d.act
    assert d.triggered and d.plan == treated.decision.plan  # the same rule, the same plan
    assert not d.shown and control.cues == [] and control.applied == []
    plain = SearchPipeline(engine).run(Query("<image>", vector=_raw(engine, photos[1])))
    assert ids(control) == ids(plain)


# -- daily cap ------------------------------------------------------------------------------------


def test_daily_cap_per_user_and_local_day(engine, photos):
    with service_for(engine, daily_cap=2) as service:
        got = [ask(service, photos[0], user="capped").decision for _ in range(3)]
        assert [d.triggered for d in got] == [True, True, False]
        assert got[2].capped and got[2].plan is None and got[2].cache is None
        other = ask(service, photos[0], user="someone-else").decision
        tomorrow = service.respond(
            SearchRequest(image=photos[0], user_id="capped", ts_ms=T0 + DAY_MS)
        ).decision
        assert other.triggered and tomorrow.triggered
        # 23:30 UTC is already tomorrow one hour east: a new local day, a new count
        late = (T0 // DAY_MS) * DAY_MS + DAY_MS - 30 * 60_000
        east = SearchRequest(image=photos[0], user_id="tz", ts_ms=late, utc_offset_min=60)
        west = replace(east, utc_offset_min=0)
        assert [service.respond(west).decision.triggered for _ in range(3)] == [True, True, False]
        assert service.respond(east).decision.triggered


# -- decision cache and planner versions ----------------------------------------------------------


class Counting:
    def __init__(self, planner):
        self.planner, self.calls = planner, 0
        self.version, self.toollist_digest = planner.version, planner.toollist_digest

    def plan(self, request):
        self.calls += 1
        return self.planner.plan(request)


def test_decision_cache_hits_a_repeated_photo_and_a_new_version_empties_it(base, photos, tmp_path):
    wh = ss.copy(base, tmp_path / "wh")
    engine = SearchEngine.open(wh)
    s = settings_for(wh)
    tools = load_tools(wh)
    planner, publication, _ = load_planner(wh, s, tools, None)
    counting = Counting(planner)
    service = RevisionService(
        engine, settings=s, planner=counting, tools=tools, publication=publication
    )
    with service:
        first, again = ask(service, photos[2]), ask(service, photos[2], user="u2")
        assert (first.decision.cache, again.decision.cache) == ("miss", "hit")
        assert counting.calls == 1 and again.decision.plan == first.decision.plan
        # a near duplicate (recompressed, resized) reuses the decision too (similarity > 0.85)
        near = Image.open(io.BytesIO(photos[2])).resize((300, 380))
        buf = io.BytesIO()
        near.save(buf, "JPEG", quality=60)
        assert ask(service, buf.getvalue(), user="u3").decision.cache == "hit"
        assert counting.calls == 1
        # a new planner version: the cache empties, the new plan is served
        old = service.planner_version
        ss.publish_plan(wh, tmp_path / "v2", ss.PLAN_V2)
        assert service.reload() and service.planner_version != old
        assert len(service.cache) == 0 and service.cache.key[1] == service.planner_version
        fresh = ask(service, photos[2], user="u4")
        assert fresh.decision.cache == "miss" and fresh.decision.tools == [5, 8]
        assert fresh.decision.planner_version == service.planner_version
        assert not service.reload()  # the same publication again: nothing to do


def test_the_watcher_hot_reloads_a_new_publication(base, tmp_path):
    wh = ss.copy(base, tmp_path / "wh")
    with RevisionService.open(wh, settings_for(wh, reload_interval_s=0.05)) as service:
        old = service.planner_version
        ss.publish_plan(wh, tmp_path / "v2", ss.PLAN_V2)
        deadline = time.monotonic() + 60
        while service.planner_version == old and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.planner_version != old and service.reload_error is None
        (wh.root / "artifacts" / "published" / "current.json").write_text("{not json")
        assert not service.reload() and service.planner_version != old  # the old one stays


# -- fallbacks: the baseline, never an error ------------------------------------------------------


def test_a_slow_planner_times_out_to_the_baseline_without_waiting_for_it(engine, photos):
    published = service_for(engine)._active.planner
    gate = ss.Gate(published)
    with service_for(engine, planner=gate, planner_timeout_ms=30) as service:
        r = ask(service, photos[0])
        # the response is back while the planner is still held: it did not wait for it
        assert gate.entered.is_set() and not gate.finished.is_set()
        d = r.decision
        assert d.triggered and d.fallback == "timeout" and "planner" in d.fallback_detail
        assert not d.shown and r.cues == [] and d.cache == "miss"
        assert "planner" in d.stages and "tools" not in d.stages
        plain = SearchPipeline(engine).run(Query("<image>", vector=_raw(engine, photos[0])))
        assert ids(r) == ids(plain)
        gate.release.set()
        assert gate.finished.wait(60)
        # a decision that timed out is not cached: the next request asks the planner again
        again = ask(service, photos[0], user="u2")
        assert again.decision.cache == "miss" and gate.calls == 2


def test_a_held_planner_never_piles_up_requests(engine, photos):
    """While a planner call hangs, later requests time out to the baseline one by one and
    their queued calls are withdrawn: only the hanging call holds a thread."""
    gate = ss.Gate(service_for(engine)._active.planner)
    with service_for(engine, planner=gate, planner_timeout_ms=1, planner_threads=1) as service:
        got = [ask(service, photos[0], user=f"h{i}").decision for i in range(4)]
        assert [d.fallback for d in got] == ["timeout"] * 4 and gate.calls == 1
        assert (service._planner_running, service._planner_abandoned) == (1, 1)
        gate.release.set()
        assert gate.finished.wait(60)
    assert (service._planner_running, service._planner_abandoned) == (0, 0)


def test_a_saturated_planner_queue_sheds_to_the_baseline(engine, photos):
    """At most 4 calls per planner thread wait; beyond that a request is served the baseline
    at once (`overload`) instead of joining the queue."""
    gate = ss.Gate(service_for(engine)._active.planner)
    service = service_for(engine, planner=gate, planner_threads=1)

    async def burst():
        req = lambda u: SearchRequest(image=photos[0], user_id=u, ts_ms=T0)  # noqa: E731
        held = asyncio.create_task(service.aserve(req("held")))
        await asyncio.to_thread(gate.entered.wait, 60)
        others = [asyncio.create_task(service.aserve(req(f"q{i}"))) for i in range(6)]
        deadline = time.monotonic() + 60
        while sum(t.done() for t in others) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        shed = [t.result().decision for t in others if t.done()]
        gate.release.set()
        rest = [s.decision for s in await asyncio.gather(held, *others)]
        return shed, rest

    with service:
        shed, everything = asyncio.run(burst())
    assert len(shed) == 3 and all(d.fallback == "overload" for d in shed)
    assert all(d.stages["planner"] == 0.0 for d in shed)
    assert sum(d.fallback is None and d.shown for d in everything) == 4  # held + 3 queued


@pytest.mark.parametrize(
    ("planner", "reason"),
    [
        (Scripted(PlanOutcome(None, 1.0, "malformed: no think block")), "malformed"),
        (Scripted(PlanOutcome(None, 1.0, "failed: ConnectionError: refused")), "error"),
        (Scripted(PlanOutcome(None, 1.0, "timeout: ReadTimeout")), "timeout"),
        (Scripted(raises=RuntimeError("boom")), "error"),
        (Scripted(PlanOutcome(Completion("x", (99,)), 1.0)), "malformed"),  # not in the list
    ],
)
def test_planner_failures_fall_back_to_the_baseline(engine, photos, planner, reason):
    with service_for(engine, planner=planner) as service:
        r = ask(service, photos[0])
    assert planner.calls == 1 and r.decision.fallback == reason and r.decision.triggered
    assert not r.decision.shown and r.cues == []


def test_an_empty_plan_is_a_decision_not_a_fallback(engine, photos):
    planner = Scripted(PlanOutcome(Completion("the results are fine", ()), 1.0))
    with service_for(engine, planner=planner) as service:
        r = ask(service, photos[0])
        assert r.decision.fallback is None and r.decision.tools == [] and not r.decision.shown
        assert ask(service, photos[0], user="u2").decision.cache == "hit"  # cached too


def test_tools_that_hang_or_fail_fall_back(engine, photos):
    with service_for(engine, tools_timeout_ms=30) as service:
        held = asyncio.Event

        async def hang(*_args, **_kwargs):
            await held().wait()  # never set: the guard cancels it

        service._active.executor.arun = hang
        r = ask(service, photos[0])
        assert r.decision.fallback == "timeout" and "tools" in r.decision.fallback_detail
        assert r.trace[-1].name == "tools" and r.trace[-1].status == "timeout"

        async def fail(*_args, **_kwargs):
            raise RuntimeError("executor bug")

        service._active.executor.arun = fail
        r = ask(service, photos[0], user="u2")
        assert r.decision.fallback == "error" and "executor bug" in r.decision.fallback_detail


def test_no_planner_is_unavailable_not_an_error(engine, photos):
    with service_for(engine, planner=None, planner_error="no published planner") as service:
        d = ask(service, photos[0]).decision
    assert d.triggered and d.fallback == "unavailable" and d.cache is None


# -- events ---------------------------------------------------------------------------------------


def test_answering_the_question_reruns_the_search_refined(engine, photos):
    with service_for(engine) as service:
        r = service.respond(SearchRequest(image=photos[0], user_id="u1", request_id="rq"))
        question = next(c for c in r.cues if c.type == "question")
        choice = question.options[1]
        refined = service.record_event(
            Event(request_id="rq", kind="question_answer", value=choice, user_id="u1")
        )
        assert refined.request_id == "rq" and ids(refined) != ids(r)
        values = engine.products.loc[ids(refined)[:3], question.attribute].tolist()
        assert values == [choice] * 3, (question.attribute, values)
        # a click on a refined result is accepted: it was shown
        service.record_event(Event("rq", "click", product_id=ids(refined)[0]))
        with pytest.raises(EventError, match="value") as bad:
            service.record_event(Event("rq", "question_answer", value="Plaid ultraviolet"))
        assert bad.value.field == "value"


@pytest.mark.parametrize(
    ("event", "error", "field"),
    [
        (Event("nope", "click", product_id="x"), UnknownRequestError, None),
        (Event("rq", "click"), EventError, "product_id"),
        (Event("rq", "click", product_id="0000000000"), EventError, "product_id"),
        (Event("rq", "dance"), EventError, "kind"),
        (Event("rq", "sort_price", value="asc", user_id="intruder"), EventError, "user_id"),
    ],
)
def test_events_that_do_not_fit_are_refused_naming_the_field(engine, photos, event, error, field):
    with service_for(engine, trigger_threshold=-1.0) as service:
        service.respond(SearchRequest(image=photos[0], user_id="u1", request_id="rq"))
        with pytest.raises(error) as exc:
            service.record_event(event)
        assert getattr(exc.value, "field", None) == field
        with pytest.raises(EventError, match="no question"):  # untriggered: no question asked
            service.record_event(Event("rq", "question_answer", value="Black"))


# -- logs -----------------------------------------------------------------------------------------


def test_logs_are_written_in_batches_and_the_mining_context_reads_them(base, photos, tmp_path):
    wh = ss.copy(base, tmp_path / "wh")
    s = settings_for(wh, serve_logs=True, keep_uploads=True, log_batch_rows=2, log_flush_s=600)
    with RevisionService.open(wh, s) as service:
        t = T0
        first = service.respond(SearchRequest(image=photos[0], user_id="ua", ts_ms=t))
        second = service.respond(SearchRequest(image=photos[1], user_id="ua", ts_ms=t + 60_000))
        third = service.respond(SearchRequest(image=photos[2], user_id="ub", ts_ms=t + 90_000))
        service.record_event(
            Event(first.request_id, "click", product_id=ids(first)[0], ts_ms=t + 5_000)
        )
        service.record_event(
            Event(first.request_id, "order", product_id=ids(first)[0], ts_ms=t + 9_000)
        )
        option = next(c for c in third.cues if c.type == "question").options[0]
        service.record_event(
            Event(third.request_id, "question_answer", value=option, ts_ms=t + 95_000)
        )
        service.record_event(Event(second.request_id, "sort_price", value="asc", ts_ms=t + 70_000))
    # closed: everything flushed, in atomic files only
    assert not list(wh.root.rglob("*.tmp"))
    requests = wh.read_pandas(REQUESTS).set_index("request_id")
    assert len(requests) == 3 and set(requests["variant"]) == {"revision"}
    row = requests.loc[first.request_id]
    assert row["triggered"] and row["shown"] and row["cache"] == "miss"
    assert row["plan"].endswith("(8)") and list(row["applied"]) == [8]
    assert row["planner_version"] == service.planner_version and '"question"' in row["cues"]
    assert row["image"].startswith("artifacts/uploads/") and wh.resolve(row["image"]).is_file()
    assert row["relevance"] == pytest.approx(first.decision.relevance)
    impressions = wh.read_pandas(IMPRESSIONS)
    assert len(impressions) == 30 and set(impressions["source"]) == {"visual"}
    assert len(wh.read_pandas(CLICKS)) == 1 and len(wh.read_pandas(ORDERS)) == 1
    events = wh.read_pandas(EVENTS).set_index("request_id")
    assert events.loc[third.request_id, "kind"] == "question_answer"
    # the mining stage's context builder reads the service's traffic like the simulator's
    context = build_context(wh)
    assert set(context) == {first.request_id, second.request_id, third.request_id}
    later = context[second.request_id]
    assert later.history["requests"] == 1 and later.history["clicks"] == 1
    assert later.history["orders"] == 1 and later.prev_gap_s == pytest.approx(60.0)
    assert context[third.request_id].answered
    assert ("sort_price", "asc", pytest.approx(10.0)) in [tuple(e) for e in later.events]
    # the next service keeps the users' histories from these logs
    histories = HistoryStore.from_logs(wh)
    assert histories.snapshot("ua", t + 120_000).history["requests"] == 2


def test_a_crash_loses_at_most_the_unflushed_batch_and_never_corrupts(base, tmp_path):
    wh = ss.copy(base, tmp_path / "wh")
    writer = LogWriter(wh, batch_rows=1000, flush_s=600)
    rows = [_request_row(f"r{i}") for i in range(5)]
    writer.add(REQUESTS, "2025-06-15", rows[:3])
    assert writer.flush() == 3
    real_write = wh.write
    calls = []

    def failing(*args, **kwargs):
        calls.append(args[0])
        raise OSError("disk full")

    wh.write = failing
    writer.add(REQUESTS, "2025-06-15", rows[3:4])
    assert writer.flush() == 0 and writer.failures == 1 and writer.pending() == 1  # kept
    wh.write = real_write
    writer.add(REQUESTS, "2025-06-15", rows[4:])
    assert writer.flush() == 2  # the failed row and the new one
    writer.add(REQUESTS, "2025-06-15", [_request_row("lost")])  # the "crash": never flushed
    del writer
    got = wh.read_pandas(REQUESTS)
    assert sorted(got["request_id"]) == [f"r{i}" for i in range(5)]
    assert not list(wh.root.rglob("*.tmp"))


def _request_row(rid: str) -> dict:
    return {
        "request_id": rid,
        "user_id": "u",
        "ts": T0,
        "image": "x.jpg",
        "relevance": 0.5,
        "variant": "revision",
        **Decision(triggered=True).log_row(),
    }


# -- the trigger threshold ------------------------------------------------------------------------


def test_threshold_rule_from_the_logs_relevance_distribution(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    assert threshold_from_logs(wh) is None  # no logs
    assert choose_threshold(wh, None, None).source == "default"
    assert choose_threshold(wh, None, None).value == DEFAULT_THRESHOLD
    relevance = np.linspace(0.0, 1.0, 1001)
    table = pa.table(
        {
            "request_id": [f"r{i}" for i in range(1001)],
            "user_id": ["u"] * 1001,
            "ts": pa.array([T0] * 1001, REQUESTS.schema.field("ts").type),
            "image": ["x"] * 1001,
            "relevance": relevance,
        }
    )
    wh.write(REQUESTS, table, {"dt": "2025-06-15"})
    found = threshold_from_logs(wh)
    assert found.source == "logs" and found.value == pytest.approx(TRIGGER_SHARE, abs=1e-9)
    assert np.mean(relevance < found.value) == pytest.approx(TRIGGER_SHARE, abs=0.002)
    assert choose_threshold(wh, None, 0.3).source == "publication"
    assert choose_threshold(wh, 0.4, 0.3).value == 0.4
    assert threshold_from_logs(wh, min_requests=5000) is None
    with pytest.raises(ValueError):
        threshold_from_logs(wh, share=1.5)


# -- the simulator drives the service (in-process) ------------------------------------------------


def test_the_simulator_drives_the_service_in_process(base, tmp_path):
    from revision.sim.traffic import simulate
    from revision.sim.world import load_world

    world = load_world()
    low = world.photos.low_quality.model_copy(update={"photos": 4})
    world = world.model_copy(
        update={"photos": world.photos.model_copy(update={"products": 20, "low_quality": low})}
    )
    logs = Warehouse(tmp_path / "logs")
    engine = SearchEngine.open(base)
    with service_for(engine, trigger_threshold=None, daily_cap=3) as service:
        summary = simulate(world, service, logs, users=5, days=1, requests=40, seed=3, catalog=base)
        arm = simulate(
            world,
            service.variant("baseline", act=False),
            Warehouse(tmp_path / "control"),
            users=5,
            days=1,
            requests=40,
            seed=3,
            catalog=base,
        )
    assert summary["requests"] == arm["requests"] == 40
    assert summary["path"] == "per_request"  # not deterministic: never memoized


def _raw(engine: SearchEngine, photo: bytes) -> np.ndarray:
    from revision.vision.images import load_image

    return engine.encode(load_image(photo))


def test_bad_photos_are_input_errors(engine):
    with service_for(engine) as service:
        with pytest.raises(InputError, match="PDF"):
            ask(service, b"%PDF-1.7 not a photo")
        with pytest.raises(InputError, match="top_k"):
            ask(service, ss.photo_bytes(engine.products["image_path"].iloc[0]), top_k=0)


def test_a_failing_cap_store_serves_the_baseline(engine, photos):
    from revision.serve.state import CapStore, LocalRateLimiter, ServeState

    class Down(CapStore):
        def try_acquire(self, user_id, day, cap):
            raise ConnectionError("redis is down")

        def count(self, user_id, day):
            raise ConnectionError("redis is down")

    state = ServeState(Down(), LocalRateLimiter(10, 10), LocalRateLimiter(10, 10))
    s = settings_for(engine.warehouse)
    with RevisionService(engine, settings=s, planner=None, state=state) as service:
        d = ask(service, photos[0]).decision
    assert not d.triggered and d.fallback == "error" and "cap store" in d.fallback_detail


def test_cli_serve_help_has_an_example():
    from typer.testing import CliRunner

    from revision.cli.main import app

    out = CliRunner().invoke(app, ["serve", "--help"])
    assert out.exit_code == 0 and "Example: revision serve" in out.output
    assert "--workers" in out.output
