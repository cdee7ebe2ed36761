"""The online service's core: baseline search, trigger, cap, decision cache, planner, tools.

Paper §III-C and §IV-A(b)-(c). One request, as `RevisionService.aserve` runs it:

    photo ─ check ─ encode ─ baseline search ─ relevance < threshold? ─ no ──────────────> baseline
                                                  │ yes, and the user under the daily cap
                                   decision cache (near-duplicate photo) ─ hit ─┐
                                                  │ miss                        │
                                   planner (in-process or remote), ≤ planner_timeout_ms
                                                  │ "(2) (6)"                   │
                                   tools: the plan's DAG beside the main search, ≤ tools_timeout_ms
                                                  │                             ▼
                                              response (tools shown only when `act`)

Everything after the baseline is optional: a timeout, an error or a malformed plan serves the
baseline with `fallback` saying why (never a 5xx), so the worst a request can take is the
search plus both budgets (the tools' guard adds `GUARD_MS`). `act=False` is the baseline arm
of an A/B test: the trigger, the cap and the planner run (so `triggered` and the plan are
logged by the same rule as the treatment's) but tools never run and nothing extra is shown.

The same object is a `Searcher` (`respond`), so the simulator and the experiment harness
drive it in-process exactly as the HTTP app (`revision.serve.app`) does; `ServiceClient`
(`revision.serve.client`) is the same protocol over HTTP.

Trade-off: the baseline search runs before the planner (the trigger needs its relevance and
the planner reads its results), then the plan's run repeats the cheap recall/rank with the
tools' hooks, reusing the photo's embedding; the tools' prefetch starts alongside that search.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from revision import toollist
from revision.errors import InputError, MissingArtifactError, RevisionError
from revision.logs.context import HistoryStore
from revision.planner._base import K
from revision.planner.online import OnlinePlanner, PlanOutcome, PlanRequest
from revision.planner.publish import Publication, load_publication, manifest_path
from revision.search._base import (
    CUES,
    Decision,
    Query,
    QuestionCue,
    SearchRequest,
    SearchResponse,
    StepTrace,
    ToolTrace,
)
from revision.search.engine import SearchEngine
from revision.search.pipeline import SearchPipeline
from revision.serve.logwriter import LogWriter, day_of
from revision.serve.recent import LocalRecent, Recent, RecentStore, RedisRecent, compact
from revision.serve.state import DecisionCache, ServeState, make_state, user_day
from revision.serve.trigger import Threshold, choose_threshold
from revision.serve.uploads import UploadError, UploadStore, check_photo
from revision.settings import Settings, get_settings
from revision.tables import CLICKS, EVENT_KINDS, EVENTS, IMPRESSIONS, ORDERS, REQUESTS
from revision.tools._registry import ToolList, load_tools
from revision.tools.builtin.preference import answer as answer_question
from revision.tools.dag import ToolDag
from revision.tools.executor import PlanExecutor
from revision.tools.grammar import Completion, format_indices, parse_completion
from revision.vision.images import load_image
from revision.warehouse import Warehouse

log = logging.getLogger(__name__)

GUARD_MS = 20.0  # the tools' hard deadline beyond their budget (a straggler is dropped)
FRONT_THREADS = 4  # decode + encode + baseline search (ONNX and FAISS release the GIL)
EVENTS_ACCEPTED = ("click", "order", *EVENT_KINDS)
ANONYMOUS = "anonymous"


class Observer(Protocol):
    """What the service reports as it works (the HTTP app's Prometheus metrics)."""

    def searched(self, decision: Decision) -> None: ...

    def event(self, kind: str) -> None: ...


class _Quiet:
    def searched(self, decision: Decision) -> None:
        pass

    def event(self, kind: str) -> None:
        pass


class UnknownRequestError(InputError):
    """An event names a request this service does not know (or no longer keeps)."""


class EventError(InputError):
    """An event that does not fit its request; `field` names the field at fault."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass
class Served:
    """One served request: what the user sees, the baseline beside it, and the decision."""

    response: SearchResponse
    baseline: SearchResponse
    decision: Decision
    dag: dict | None = None  # the plan's DAG (nodes, edges, waves) when there is a plan


@dataclass
class Event:
    """A user's action after a response: a click, an order, or a follow-up (`EVENT_KINDS`;
    `question_answer` re-runs the search refined by the chosen option)."""

    request_id: str
    kind: str
    product_id: str | None = None
    value: str | None = None
    user_id: str | None = None
    dwell_s: float | None = None
    ts_ms: int | None = None


@dataclass
class _Planner:
    """The published planner and everything that depends on its tool list."""

    planner: Any | None  # `OnlinePlanner`-like: plan(PlanRequest) -> PlanOutcome
    executor: PlanExecutor
    version: str | None
    digest: str
    publication: Publication | None = None
    error: str | None = None  # why there is no planner

    @property
    def key(self) -> tuple[str, str]:
        return (self.digest, self.version or "none")


class RevisionService:
    """The online service (see the module docstring). Build it with `RevisionService.open`;
    the constructor takes ready components (tests inject a planner or a state)."""

    deterministic = False  # caps, the decision cache and histories change answers

    def __init__(
        self,
        engine: SearchEngine,
        *,
        settings: Settings | None = None,
        planner: Any | None = None,
        tools: ToolList | None = None,
        state: ServeState | None = None,
        histories: HistoryStore | None = None,
        threshold: Threshold | None = None,
        logs: LogWriter | None = None,
        recent: RecentStore | None = None,
        publication: Publication | None = None,
        planner_error: str | None = None,
        observer: Observer | None = None,
        arm: str | None = None,
        act: bool | None = None,
    ):
        self.settings = s = settings or get_settings()
        self.engine = engine
        self.warehouse = engine.warehouse
        self.pipeline = SearchPipeline(engine)
        self.state = state or make_state(
            s.redis_url,
            user_rate=s.rate_per_user,
            user_burst=_burst(s.rate_per_user),
            ip_rate=s.rate_per_ip,
            ip_burst=_burst(s.rate_per_ip),
        )
        self.histories = histories
        self.logs = logs
        self.recent = recent or LocalRecent(s.recent_ttl_s)
        self.uploads = UploadStore(self.warehouse) if s.keep_uploads else None
        self.observer: Observer = observer or _Quiet()
        self.arm = arm if arm is not None else s.arm
        self.act = act if act is not None else s.act
        tools = tools if tools is not None else load_tools(self.warehouse)
        self._active = self._make_active(planner, tools, publication, planner_error)
        self.cache = DecisionCache(
            *self._active.key, threshold=s.cache_threshold, ttl_s=s.cache_ttl_s
        )
        self.threshold = threshold or choose_threshold(
            self.warehouse,
            s.trigger_threshold,
            publication.trigger_threshold if publication else None,
        )
        self._front = ThreadPoolExecutor(FRONT_THREADS, thread_name_prefix="revision-front")
        self._planner_pool = ThreadPoolExecutor(s.planner_threads, "revision-planner")
        self._planner_lock = threading.Lock()
        self._planner_running = 0  # calls on the planner pool, abandoned ones included
        self._planner_abandoned = 0  # of those, calls whose request stopped waiting
        self._in_flight = 0
        self._dags: OrderedDict[tuple, ToolDag] = OrderedDict()
        self._reload_lock = threading.Lock()
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._manifest_stamp = _stamp(manifest_path(self.warehouse))
        self.reload_error: str | None = None
        self.tool_errors: dict[int, str] = {}  # live tools whose warm-up failed (they fall back)
        self.loaded_at = time.time()

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        warehouse: Warehouse | str | Path | None = None,
        settings: Settings | None = None,
        *,
        observer: Observer | None = None,
        index: str = "hnsw",
    ) -> RevisionService:
        """Load the index, the encoder, the users' histories and the planner the settings ask
        for (the published one by default), start the log writer and the publication watcher."""
        s = settings or get_settings()
        wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse or s.home)
        engine = SearchEngine.open(wh, kind=index).warm_up()
        histories = HistoryStore.from_logs(wh)
        tools = load_tools(wh)
        planner, publication, error = load_planner(wh, s, tools, histories)
        logs = None
        if s.serve_logs:
            logs = LogWriter(wh, batch_rows=s.log_batch_rows, flush_s=s.log_flush_s).start()
        recent = None
        if s.redis_url:
            recent = RedisRecent(_redis(s.redis_url), s.recent_ttl_s)
        service = cls(
            engine,
            settings=s,
            planner=planner,
            tools=tools,
            histories=histories,
            logs=logs,
            recent=recent,
            publication=publication,
            planner_error=error,
            observer=observer,
        )
        service.tool_errors = _warm_tools(service._active.executor)
        if s.planner == "published":
            service.watch()
        return service

    def _make_active(self, planner, tools, publication, error) -> _Planner:
        s = self.settings
        executor = PlanExecutor(
            self.pipeline, tools, timeout_ms=s.tools_timeout_ms, budget_ms=s.tools_timeout_ms
        )
        if planner is None and error is None:
            error = "no planner (settings: planner=none)"
        return _Planner(
            planner,
            executor,
            getattr(planner, "version", None),
            getattr(planner, "toollist_digest", None) or tools.digest,
            publication,
            error if planner is None else None,
        )

    def variant(self, arm: str, *, act: bool) -> ServiceArm:
        """A `Searcher` view of this service as another A/B arm (same models, caches and
        logs; `act=False` decides and logs but never shows tools)."""
        return ServiceArm(self, arm, act)

    # -- the Searcher protocol -------------------------------------------------------------------
    def respond(self, request: SearchRequest) -> SearchResponse:
        """Serve one request synchronously (not from inside a running event loop)."""
        return asyncio.run(self.aserve(request)).response

    async def asearch(self, request: SearchRequest, **kwargs) -> SearchResponse:
        return (await self.aserve(request, **kwargs)).response

    async def aserve(
        self, request: SearchRequest, *, arm: str | None = None, act: bool | None = None
    ) -> Served:
        """Serve one request (see the module docstring). Raises `InputError` (an `UploadError`
        for a bad photo) for what the caller sent; anything after the baseline falls back."""
        arm = self.arm if arm is None else arm
        act = self.act if act is None else act
        started = time.perf_counter()
        with self._planner_lock:
            self._in_flight += 1
        try:
            return await self._serve(request, arm, act, started)
        finally:
            with self._planner_lock:
                self._in_flight -= 1

    async def _serve(self, request: SearchRequest, arm: str, act: bool, started: float) -> Served:
        loop = asyncio.get_running_loop()
        active = self._active  # one planner for the whole request, whatever reloads meanwhile
        rid = request.request_id or uuid.uuid4().hex
        user = request.user_id or ANONYMOUS
        now_ms = request.ts_ms if request.ts_ms is not None else int(time.time() * 1000)
        front = await loop.run_in_executor(
            self._front, self._front_work, request, rid, user, now_ms, arm, act, active
        )
        baseline, decision = front.baseline, front.decision
        decision.stages["search"] = _ms(started, front.done)
        served = Served(baseline, baseline, decision)
        completion = front.completion
        if decision.triggered and completion is None and decision.fallback is None:
            completion = await self._plan(active, front, request, user, now_ms, decision)
        if completion is not None:
            decision.plan, decision.tools = str(completion), list(completion.tools)
            if completion.tools:
                try:
                    served.dag = self._dag(active, completion.tools).to_dict()
                except RevisionError as exc:  # a plan the executor cannot run
                    decision.fallback, decision.fallback_detail = "malformed", str(exc)
        if act and decision.fallback is None and completion is not None and completion.tools:
            served.response = await self._tools(active, front, request, rid, user, completion)
        served.response.request_id = rid
        served.response.decision = decision
        decision.stages["total"] = _ms(started)
        served.response.latency_ms = decision.stages["total"]
        try:
            self._after(served, front, request, rid, user, now_ms, arm, act)
        except Exception:  # bookkeeping never fails a response already computed
            log.exception("recording request %s failed", rid)
        return served

    # -- stage 1: photo, baseline search, trigger, cap, cache (on a front thread) ----------------
    def _front_work(self, request, rid, user, now_ms, arm, act, active) -> _Front:
        s = self.settings
        top_k = request.top_k
        if not 1 <= top_k <= 100:
            raise InputError(f"top_k must be between 1 and 100, got {top_k}")
        image, raw, source, image_hash = self._photo(request)
        query = Query(
            source=source,
            vector=raw.copy(),
            top_k=max(top_k, K),  # the planner reads K results
            request_id=rid,
            user_id=user,
        )
        full = self.pipeline.run(query)
        planner_view = full.results
        baseline = replace(full, results=full.results[:top_k])
        threshold = self.threshold.value
        decision = Decision(
            arm=arm,
            act=act,
            threshold=threshold,
            relevance=full.relevance,
            planner_version=active.version,
            toollist_digest=active.digest,
        )
        front = _Front(
            baseline=baseline,
            decision=decision,
            raw=raw,
            image=image,
            source=source,
            image_hash=image_hash,
            planner_view=planner_view,
        )
        if full.relevance < threshold:
            offset = request.utc_offset_min or 0
            day = user_day(datetime.fromtimestamp(now_ms / 1000, UTC), offset)
            try:
                granted, _ = self.state.caps.try_acquire(f"{arm}:{user}", day, s.daily_cap)
            except Exception as exc:  # the cap store is down: serve the baseline, say why
                log.error("daily cap store failed: %s", exc)
                decision.fallback = "error"
                decision.fallback_detail = f"daily cap store: {type(exc).__name__}: {exc}"
                granted = False
            decision.triggered, decision.capped = granted, not granted and not decision.fallback
        if decision.triggered:
            if active.planner is None:
                decision.fallback, decision.fallback_detail = "unavailable", active.error
            elif self.settings.decision_cache:
                hit = self.cache.get(raw)
                decision.cache = "miss" if hit is None else "hit"
                if hit is not None:
                    front.completion = parse_completion(hit.plan)
        front.done = time.perf_counter()
        return front

    def _photo(self, request: SearchRequest) -> tuple[Any, np.ndarray, str, str | None]:
        """(image or None, raw embedding, the name logged for the photo, its SHA-256)."""
        s = self.settings
        image = request.image
        if request.embedding is not None:  # the simulator's fast path: no decode, no encode
            raw = np.asarray(request.embedding, np.float32).reshape(-1)
            return None, raw, request.source or "<vector>", None
        if isinstance(image, bytes | bytearray | memoryview):
            photo = check_photo(bytes(image), max_bytes=s.max_upload_bytes, max_pixels=s.max_pixels)
            source = self.uploads.keep(photo) if self.uploads else f"upload:{photo.sha256}"
            return photo.image, self.engine.encode(photo.image), source, photo.sha256
        if image is None:
            raise UploadError("photo: a request needs a photo")
        if isinstance(image, str) or hasattr(image, "__fspath__"):  # in-process callers only
            source = request.source or self.warehouse.relative(image)
            image = load_image(image)
        else:
            source = request.source or "<image>"
            image = load_image(image)
        return image, self.engine.encode(image), source, None

    # -- stage 2: the planner, under its timeout --------------------------------------------------
    async def _plan(self, active, front, request, user, now_ms, decision) -> Completion | None:
        s = self.settings
        t0 = time.perf_counter()
        limit = s.degrade_in_flight or max(1, s.max_in_flight * 3 // 4)
        with self._planner_lock:
            saturated = self._planner_running >= 4 * s.planner_threads
            abandoned = self._planner_abandoned
        if self._in_flight > limit or saturated:
            # over capacity: serve the baseline now rather than queue for the planner
            slow = saturated and abandoned > 0
            decision.fallback = "timeout" if slow else "overload"
            decision.fallback_detail = (
                f"the planner is busy with {abandoned} calls that overran their timeout"
                if slow
                else f"{self._in_flight} requests in flight (degrading above {limit})"
            )
            decision.stages["planner"] = 0.0
            return None
        plan_request = self._plan_request(front, request, user, now_ms)
        call = _Call()
        with self._planner_lock:
            self._planner_running += 1  # queued or running, until its thread returns
        cf = self._planner_pool.submit(self._call_planner, active.planner, plan_request, call)
        try:
            outcome: PlanOutcome = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(cf)), s.planner_timeout_ms / 1000
            )
        except TimeoutError:
            with self._planner_lock:
                if cf.cancel():  # still queued: it will never run
                    self._planner_running -= 1
                elif not call.done:  # running: counted as abandoned until it returns
                    call.abandoned = True
                    self._planner_abandoned += 1
            decision.fallback = "timeout"
            decision.fallback_detail = f"the planner overran its {s.planner_timeout_ms:g} ms"
            decision.stages["planner"] = _ms(t0)
            return None
        except Exception as exc:  # a backend that raises instead of reporting: still no 5xx
            log.exception("planner %s raised", active.version)
            decision.fallback, decision.fallback_detail = "error", f"{type(exc).__name__}: {exc}"
            decision.stages["planner"] = _ms(t0)
            return None
        decision.stages["planner"] = _ms(t0)
        if outcome.error is not None or outcome.completion is None:
            kind = (outcome.error or "failed").split(":", 1)[0].strip()
            decision.fallback = {"timeout": "timeout", "malformed": "malformed"}.get(kind, "error")
            decision.fallback_detail = outcome.error
            return None
        if self.settings.decision_cache:
            self.cache.put(front.raw, outcome.completion, key=active.key)
        return outcome.completion

    def _call_planner(self, planner, request: PlanRequest, call: _Call) -> PlanOutcome:
        try:
            delay = self.settings.fault_planner_delay_ms
            if delay:
                time.sleep(delay / 1000)  # fault injection: a slow planner
            return planner.plan(request)
        finally:
            with self._planner_lock:
                self._planner_running -= 1
                call.done = True
                if call.abandoned:
                    self._planner_abandoned -= 1

    def _plan_request(self, front, request, user, now_ms) -> PlanRequest:
        hits = front.planner_view[:K]
        labels = self.engine.products
        return PlanRequest(
            embedding=front.raw,
            results=[(h.product_id, h.score, h.rank) for h in hits],
            user_id=None if user == ANONYMOUS else user,
            now_ms=now_ms,
            request_id=front.baseline.request_id,
            image=str(self.warehouse.resolve(front.source))
            if front.image_hash and self.uploads
            else None,
            titles=[h.title for h in hits],
            prices=[h.price for h in hits],
            result_images=[str(labels.at[h.product_id, "image_path"]) for h in hits],
        )

    # -- stage 3: the plan's tools beside the main search -----------------------------------------
    def _dag(self, active: _Planner, tools: tuple[int, ...]) -> ToolDag:
        key = (active.key, tuple(tools))
        dag = self._dags.get(key)
        if dag is None:
            dag = active.executor.prepare(format_indices(tools))
            self._dags[key] = dag
            while len(self._dags) > 256:
                self._dags.popitem(last=False)
        return dag

    async def _tools(self, active, front, request, rid, user, completion) -> SearchResponse:
        s, decision = self.settings, front.decision
        t0 = time.perf_counter()
        query = Query(
            source=front.source,
            vector=front.raw.copy(),
            image=front.image,
            top_k=request.top_k,
            request_id=rid,
            user_id=user,
        )
        try:
            dag = self._dag(active, completion.tools)
            response = await asyncio.wait_for(
                active.executor.arun(query, dag, t0), (s.tools_timeout_ms + GUARD_MS) / 1000
            )
        except TimeoutError:
            decision.fallback = "timeout"
            decision.fallback_detail = f"the tools overran {s.tools_timeout_ms:g} ms"
            return _with_step(front.baseline, "tools", "timeout", _ms(t0), decision)
        except Exception as exc:  # the executor itself failed: the baseline stands
            log.exception("plan %s failed", completion)
            decision.fallback, decision.fallback_detail = "error", f"{type(exc).__name__}: {exc}"
            return _with_step(front.baseline, "tools", "failed", _ms(t0), decision)
        finally:
            decision.stages["tools"] = _ms(t0)
        statuses = [e.status for e in response.trace if isinstance(e, ToolTrace)]
        decision.applied = list(response.applied)
        decision.shown = bool(response.applied)
        if not response.applied and statuses:
            decision.fallback = "timeout" if "timeout" in statuses else "error"
            decision.fallback_detail = "; ".join(
                f"({e.index}) {e.name}: {e.error}"
                for e in response.trace
                if isinstance(e, ToolTrace) and e.error
            )
        return response

    # -- after the response: history, memory, logs, metrics --------------------------------------
    def _after(self, served, front, request, rid, user, now_ms, arm, act) -> None:
        response, decision = served.response, served.decision
        if self.histories is not None:
            self.histories.record_request(user, rid, now_ms)
        question = next((c for c in response.cues if isinstance(c, QuestionCue)), None)
        self.recent.put(
            Recent(
                request_id=rid,
                user_id=user,
                ts_ms=now_ms,
                arm=arm,
                act=act,
                top_k=request.top_k,
                shown=[h.product_id for h in response.results],
                question=question.model_dump(mode="json") if question else None,
                source=front.source,
                embedding=compact(front.raw) if question else None,
            )
        )
        if self.logs is not None:
            dt = day_of(now_ms)
            row = {
                "request_id": rid,
                "user_id": user,
                "ts": now_ms,
                "image": front.source,
                "image_hash": front.image_hash,
                "relevance": float(decision.relevance),  # the baseline's: the trigger's input
                "variant": arm,
                **decision.log_row(),
                "cues": CUES.dump_json(response.cues).decode() if response.cues else None,
            }
            self.logs.add(REQUESTS, dt, [row])
            self.logs.add(
                IMPRESSIONS,
                dt,
                [
                    {
                        "request_id": rid,
                        "product_id": h.product_id,
                        "rank": h.rank or i + 1,
                        "score": float(h.score),
                        "source": h.source,
                        "tool": h.tool,
                    }
                    for i, h in enumerate(response.results)
                ],
            )
        self.observer.searched(decision)

    # -- events ------------------------------------------------------------------------------------
    def record_event(self, event: Event) -> SearchResponse | None:
        """Record a click, an order or a follow-up event for a served request; an answer to its
        question returns the search re-run refined by the chosen option. Raises
        `UnknownRequestError` or `EventError` (naming the field) for an event that does not fit."""
        return asyncio.run(self.arecord_event(event))

    async def arecord_event(self, event: Event) -> SearchResponse | None:
        if event.kind not in EVENTS_ACCEPTED:
            raise EventError(
                f"kind {event.kind!r} is not an event kind; valid: {', '.join(EVENTS_ACCEPTED)}",
                "kind",
            )
        item = self.recent.get(event.request_id)
        if item is None:
            raise UnknownRequestError(
                f"request_id {event.request_id!r}: no such request (or older than "
                f"{self.settings.recent_ttl_s:g} s)"
            )
        if event.user_id is not None and event.user_id != item.user_id:
            raise EventError("user_id: not the user who made this request", "user_id")
        ts = event.ts_ms if event.ts_ms is not None else int(time.time() * 1000)
        dt, user = day_of(item.ts_ms), item.user_id
        refined = None
        if event.kind in ("click", "order"):
            if not event.product_id:
                raise EventError(f"product_id: a {event.kind} names the product", "product_id")
            if event.product_id not in item.shown:
                raise EventError(
                    f"product_id {event.product_id!r} was not shown for this request",
                    "product_id",
                )
        elif event.kind == "question_answer":
            refined = await self._answer(item, event.value)
        if event.kind == "click":
            row = {"request_id": item.request_id, "product_id": event.product_id, "ts": ts}
            self._log(CLICKS, dt, {**row, "dwell_s": event.dwell_s})
            if self.histories is not None:
                self.histories.record_click(user, item.request_id, event.product_id)
        elif event.kind == "order":
            price = self.engine.labels.get(event.product_id, ("", None))[1]
            row = {"request_id": item.request_id, "product_id": event.product_id, "ts": ts}
            self._log(ORDERS, dt, {**row, "price": price})
            if self.histories is not None:
                self.histories.record_order(user, event.product_id)
        else:
            row = {"request_id": item.request_id, "user_id": user, "ts": ts, "kind": event.kind}
            self._log(EVENTS, dt, {**row, "value": event.value})
            if self.histories is not None:
                self.histories.record_event(user, event.kind, event.value)
        self.observer.event(event.kind)
        return refined

    async def _answer(self, item: Recent, choice: str | None) -> SearchResponse:
        if item.question is None or item.embedding is None:
            raise EventError("kind: this request asked no question", "kind")
        options = item.question.get("options", [])
        if choice not in options:
            raise EventError(f"value: {choice!r} is not an option; options: {options}", "value")
        query = Query(
            source=item.source,
            vector=item.embedding.copy(),
            top_k=item.top_k,
            request_id=item.request_id,
            user_id=item.user_id,
        )
        executor = self._active.executor
        loop = asyncio.get_running_loop()
        refined = await loop.run_in_executor(
            self._front, answer_question, executor, query, item.question, choice
        )
        refined.request_id = item.request_id
        self.recent.add_shown(item.request_id, [h.product_id for h in refined.results])
        return refined

    def _log(self, table, dt: str, row: dict) -> None:
        if self.logs is not None:
            self.logs.add(table, dt, [row])

    # -- the published planner: hot reload -------------------------------------------------------
    def watch(self) -> None:
        """Poll the publication manifest every `reload_interval_s`; load a new one off the
        request path and swap it in (the decision cache empties for a new version)."""
        if self._watcher is not None:
            return

        def loop() -> None:
            while not self._watch_stop.wait(self.settings.reload_interval_s):
                stamp = _stamp(manifest_path(self.warehouse))
                if stamp != self._manifest_stamp:
                    self._manifest_stamp = stamp
                    self.reload()

        self._watcher = threading.Thread(target=loop, name="revision-reload", daemon=True)
        self._watcher.start()

    def reload(self) -> bool:
        """Load the current publication now; True if a new planner was swapped in. A broken
        publication keeps the running planner (`reload_error` says why)."""
        with self._reload_lock:
            try:
                tools = load_tools(self.warehouse)
                planner, publication, error = load_planner(
                    self.warehouse, self.settings, tools, self.histories
                )
            except Exception as exc:  # a broken publication never stops the service
                self.reload_error = f"{type(exc).__name__}: {exc}"
                log.error("reload failed, keeping planner %s: %s", self._active.version, exc)
                return False
            if planner is None:
                self.reload_error = error
                return False
            current = self._active.publication
            if publication and current and publication.version == current.version:
                return False
            active = self._make_active(planner, tools, publication, None)
            self.tool_errors = _warm_tools(active.executor)
            self.threshold = choose_threshold(
                self.warehouse,
                self.settings.trigger_threshold,
                publication.trigger_threshold if publication else None,
            )
            self.cache.reset(*active.key)
            old, self._active = self._active, active
            self.reload_error = None
            self.loaded_at = time.time()
            log.info("planner %s -> %s", old.version, active.version)
            return True

    # -- inspection and shutdown -------------------------------------------------------------------
    @property
    def planner_version(self) -> str | None:
        return self._active.version

    @property
    def tools(self) -> ToolList:
        return self._active.executor.tools

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def describe(self) -> dict[str, Any]:
        """What `/readyz` reports: the planner, the threshold, the budgets, the arm."""
        s, a = self.settings, self._active
        return {
            "arm": self.arm,
            "act": self.act,
            "products": len(self.engine.index.ids_),
            "planner": {
                "kind": s.planner,
                "version": a.version,
                "toollist_digest": a.digest,
                "error": a.error,
                "reload_error": self.reload_error,
            },
            "tools": [e.as_dict() for e in a.executor.tools.active()],
            "tool_errors": {str(k): v for k, v in self.tool_errors.items()},
            "threshold": self.threshold.as_dict(),
            "daily_cap": s.daily_cap,
            "cache": {"threshold": s.cache_threshold, "entries": len(self.cache)},
            "budget_ms": {
                "planner": s.planner_timeout_ms,
                "tools": s.tools_timeout_ms,
                "guard": GUARD_MS,
            },
        }

    def close(self) -> None:
        """Stop watching, flush the logs, release the threads."""
        self._watch_stop.set()
        if self.logs is not None:
            self.logs.close()
        self._active.executor.close()
        self._front.shutdown(wait=False, cancel_futures=True)
        self._planner_pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> RevisionService:
        return self

    def __exit__(self, *_) -> None:
        self.close()


class ServiceArm:
    """`RevisionService.variant`: the same service as another arm of an A/B test."""

    deterministic = False

    def __init__(self, service: RevisionService, arm: str, act: bool):
        self.service, self.arm, self.act = service, arm, act

    def respond(self, request: SearchRequest) -> SearchResponse:
        return asyncio.run(self.service.aserve(request, arm=self.arm, act=self.act)).response

    async def aserve(self, request: SearchRequest) -> Served:
        return await self.service.aserve(request, arm=self.arm, act=self.act)

    def record_event(self, event: Event) -> SearchResponse | None:
        return self.service.record_event(event)


@dataclass
class _Call:
    """One planner call: whether it returned, and whether its request stopped waiting."""

    done: bool = False
    abandoned: bool = False


@dataclass
class _Front:
    baseline: SearchResponse
    decision: Decision
    raw: np.ndarray
    image: Any
    source: str
    image_hash: str | None
    planner_view: list
    completion: Completion | None = None
    done: float = 0.0


# -- helpers ---------------------------------------------------------------------------------------


def load_planner(
    warehouse: Warehouse, s: Settings, tools: ToolList, histories: HistoryStore | None
) -> tuple[Any | None, Publication | None, str | None]:
    """(planner, publication, why there is none) for the settings' planner kind."""
    if s.planner == "none":
        return None, None, "no planner (settings: planner=none)"
    if s.planner == "remote":
        from revision.chat import ChatClient, ChatConfig
        from revision.planner.remote import RemoteConfig, RemotePlanner

        if not s.planner_base_url:
            raise InputError("planner=remote needs REVISION_PLANNER_BASE_URL (…/v1)")
        client = ChatClient(
            ChatConfig(
                base_url=s.planner_base_url,
                model=s.planner_model,
                api_key=s.api_key(),
                timeout_s=max(s.planner_timeout_ms / 1000, 0.001),
                max_retries=0,
                cache=False,
            )
        )
        backend = RemotePlanner(
            client,
            [(e.index, e.title, e.description) for e in tools.active()],
            tools.digest,
            RemoteConfig(model=s.planner_model, images=s.planner_images),
        )
        return OnlinePlanner(backend, None, histories, tools.live_indices()), None, None
    try:
        publication = load_publication(warehouse)
    except MissingArtifactError as exc:
        return None, None, str(exc)
    toollist.check_digest(publication.toollist_digest, tools.digest, "the published planner")
    planner = OnlinePlanner.load(
        warehouse,
        warehouse.resolve(publication.checkpoint),
        publication.features,
        live=tools.live_indices(),
        toollist_digest=publication.toollist_digest,
        histories=histories,
    )
    return planner, publication, None


def _warm_tools(executor: PlanExecutor) -> dict[int, str]:
    """Do every live tool's one-time setup now; a tool whose artefact is missing is reported
    (and fails, traced, when a plan uses it) instead of stopping the service."""
    errors = {}
    for index in executor.tools.live_indices():
        try:
            executor.prepare(format_indices([index]))
        except RevisionError as exc:
            errors[index] = str(exc)
            log.warning("tool (%d) is unavailable: %s", index, exc)
    return errors


def _redis(url: str):
    import redis

    return redis.Redis.from_url(url)


def _burst(rate: float) -> int:
    """A bucket holds one second of the rate (at least one request)."""
    return max(1, int(np.ceil(rate)))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _ms(started: float, until: float | None = None) -> float:
    return round(((until or time.perf_counter()) - started) * 1000, 3)


def _with_step(
    response: SearchResponse, name: str, status: str, ms: float, decision: Decision
) -> SearchResponse:
    """The baseline, with a trace step saying what happened to the tools."""
    step = StepTrace(name=name, status=status, ms=ms, detail=decision.fallback_detail)
    return replace(response, trace=[*response.trace, step])
