"""Run a plan's DAG alongside the main search, each tool under a deadline, never failing it.

Paper §IV-A(c): "After generating the plan list, the system concurrently fetches required
external data alongside the main search pipeline to minimize end-to-end latency." Timeline of
one request:

    main search (own thread):  understand ─┬─ recall ─ filter ─ rank ─ display ─ (interaction)
                                           │     ▲        ▲       ▲        ▲            ▲
    tools (asyncio + pool):                └─ per tool: Info + query extraction + prefetch
                                                 └─ at each stage hook: the DAG's waves there

Each stage hook of the main search waits for that stage's tools (their inputs and prefetches
started right after query understanding, in parallel with recall). A tool runs on a private
fork of the request context, under `asyncio.wait_for`; it is committed only if it finished in
time, raised nothing and edited only what its stage owns (`ALLOWED_EDITS`). Otherwise the fork
is dropped, the request goes on with what it had, and the trace says why. Tools of one wave run
concurrently; their commits merge in plan order.

Trade-off: a Python thread cannot be killed, so an overrunning tool keeps its thread until it
returns (tools call `ctx.check()` to stop early); the main search never runs on the tool pool,
so a pool full of stragglers can delay tools but never the baseline.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from revision.errors import InputError
from revision.search._base import (
    Hit,
    Query,
    SearchContext,
    SearchRequest,
    SearchResponse,
    Stage,
    ToolTrace,
)
from revision.search.pipeline import SearchPipeline
from revision.tools._base import (
    ALLOWED_EDITS,
    Component,
    ToolContext,
    ToolStage,
    ToolTimeout,
)
from revision.tools._registry import Registry, ToolList, load_tools, registry
from revision.tools.catalog import catalog_arrays
from revision.tools.dag import Plan, ToolDag, load_plan
from revision.tools.info import QueryInfo, parse_info
from revision.tools.info import warm_up as warm_query_info
from revision.vision.images import load_image

DEFAULT_TIMEOUT_MS = 250.0
TOOL_THREADS = 16
# The main searches get their own threads: stragglers on the tool pool never delay them.
SEARCH_THREADS = 32


# -- forks and diffs -------------------------------------------------------------------------


def fork_context(ctx: SearchContext) -> SearchContext:
    """A copy a tool can edit freely: new lists, new hits (shared hits stay shared), new facts."""
    memo: dict[int, Hit] = {}

    def copy(h: Hit) -> Hit:
        c = memo.get(id(h))
        if c is None:
            c = memo[id(h)] = Hit(
                h.product_id, h.score, h.rank, h.title, h.price, h.source, list(h.badges), h.tool
            )
        return c

    query = Query(
        source=ctx.query.source,
        vector=ctx.query.vector,
        image=ctx.query.image,
        top_k=ctx.query.top_k,
        request_id=ctx.query.request_id,
        user_id=ctx.query.user_id,
        facts=dict(ctx.query.facts),
    )
    return SearchContext(
        query=query,
        candidates=[copy(h) for h in ctx.candidates],
        results=[copy(h) for h in ctx.results],
        cues=[c.model_copy(deep=True) for c in ctx.cues],
        applied=list(ctx.applied),
        trace=list(ctx.trace),
    )


@dataclass
class ContextDiff:
    """What a tool changed in its fork, by kind (see `ALLOWED_EDITS`)."""

    kinds: set[str] = field(default_factory=set)
    facts: dict[str, Any] = field(default_factory=dict)
    removed_facts: set[str] = field(default_factory=set)
    badges: dict[str, list[str]] = field(default_factory=dict)  # product_id -> added badges
    new_cues: list = field(default_factory=list)


def _signature(hits: list[Hit]) -> list[tuple[str, float, str]]:
    return [(h.product_id, h.score, h.source) for h in hits]


def diff_context(base: SearchContext, fork: SearchContext) -> ContextDiff:
    d = ContextDiff()
    bf, ff = base.query.facts, fork.query.facts
    d.facts = {k: v for k, v in ff.items() if k not in bf or bf[k] is not v}
    d.removed_facts = set(bf) - set(ff)
    if d.facts or d.removed_facts:
        d.kinds.add("facts")
    if _signature(base.candidates) != _signature(fork.candidates):
        d.kinds.add("candidates")
    if _signature(base.results) != _signature(fork.results):
        d.kinds.add("results")
    before: dict[str, list[str]] = {}
    for h in (*base.results, *base.candidates):
        before.setdefault(h.product_id, h.badges)
    seen: set[str] = set()
    for h in (*fork.results, *fork.candidates):
        if h.product_id in seen:
            continue
        seen.add(h.product_id)
        old = before.get(h.product_id, [])
        if any(b not in h.badges for b in old):
            d.kinds.add("badges")
        added = [b for b in h.badges if b not in old]
        if added:
            d.badges[h.product_id] = added
            d.kinds.add("badges")
    n = len(base.cues)
    if len(fork.cues) < n or fork.cues[:n] != base.cues:
        d.kinds.add("existing cues")
    elif len(fork.cues) > n:
        d.new_cues = fork.cues[n:]
        d.kinds.add("cues")
    if fork.applied != base.applied or fork.trace != base.trace:
        d.kinds.add("trace")
    return d


def commit(base: SearchContext, fork: SearchContext, d: ContextDiff) -> None:
    """Apply a checked diff to the live context."""
    for k in d.removed_facts:
        base.query.facts.pop(k, None)
    base.query.facts.update(d.facts)
    if "candidates" in d.kinds:
        base.candidates = fork.candidates
    if "results" in d.kinds:
        base.results = fork.results
        for rank, hit in enumerate(base.results, start=1):
            hit.rank = rank
    if d.badges:
        for h in (*base.results, *base.candidates):
            for b in d.badges.get(h.product_id, ()):
                if b not in h.badges:
                    h.badges.append(b)
    base.cues.extend(d.new_cues)


# -- inputs ------------------------------------------------------------------------------------


def resolve_inputs(comp: Component, step, ctx: ToolContext) -> dict[str, Any]:
    """A step's inputs, later sources winning: the tool-list entry's defaults, the signal's
    Info, the plan's explicit inputs; then whatever the component extracts from the query for
    what is still open. Raises `InputError` naming the tool when a required input is missing."""
    cls = type(comp)
    where = f"tool ({step.index}) "
    inputs = dict(step.defaults)
    if step.info or step.action:
        inputs.update(comp.from_info(parse_info(step.info, ctx.catalog, context=step.action)))
    inputs.update(step.inputs)
    inputs = cls.validate_inputs(inputs, where=where)
    extracted = comp.from_query(ctx, inputs)
    if extracted:
        inputs.update(cls.validate_inputs(extracted, where=where))
    missing = sorted(cls.required_inputs() - set(inputs))
    if missing:
        raise InputError(
            f"{where}{cls.name}: missing input(s) {', '.join(missing)} "
            "(not in the plan and not found in the query)"
        )
    return inputs


# -- the executor ------------------------------------------------------------------------------


class PlanExecutor:
    """Runs plans over one search pipeline; reuse it across requests (components are cached).

    `timeout_ms` is each tool's deadline from the moment its stage is reached (a component's
    own `timeout_ms` overrides it); `budget_ms`, when set, stops starting tools once the request
    has run that long.
    """

    def __init__(
        self,
        pipeline: SearchPipeline,
        tools: ToolList | None = None,
        *,
        timeout_ms: float = DEFAULT_TIMEOUT_MS,
        budget_ms: float | None = None,
        reg: Registry | None = None,
    ):
        if timeout_ms <= 0:
            raise InputError(f"timeout_ms must be positive, got {timeout_ms}")
        self.pipeline = pipeline
        self.engine = pipeline.engine
        self.registry = reg or registry()
        self.tools = (
            tools if tools is not None else load_tools(self.engine.warehouse, self.registry)
        )
        self.timeout_ms = timeout_ms
        self.budget_ms = budget_ms
        self.catalog = catalog_arrays(self.engine)
        self._instances: dict[str, Component] = {}
        self._warm: set[str] = set()
        self._lock = threading.Lock()

    # -- plans -----------------------------------------------------------------------------------
    def dag(self, plan: ToolDag | Plan | str, info: dict[int, str] | None = None) -> ToolDag:
        """A validated DAG from a plan string ("(1) (3)"), a YAML file path or a `Plan`;
        `info` gives a signal's Info per tool index (plan strings and files only)."""
        if isinstance(plan, ToolDag):
            return plan
        if not isinstance(plan, Plan):
            plan = load_plan(plan, self.tools, info=info, reg=self.registry)
        return ToolDag(plan, self.registry)

    # -- thread pools (the executor's own: made on first use, shut down by `close`) -------------
    _pools: dict[str, ThreadPoolExecutor] | None = None
    _pools_lock = threading.Lock()

    def _pool(self, name: str, threads: int) -> ThreadPoolExecutor:
        with self._pools_lock:
            if self._pools is None:
                self._pools = {}
            if name not in self._pools:
                self._pools[name] = ThreadPoolExecutor(threads, thread_name_prefix=name)
            return self._pools[name]

    @property
    def tool_pool(self) -> ThreadPoolExecutor:
        return self._pool("revision-tool", TOOL_THREADS)

    @property
    def search_pool(self) -> ThreadPoolExecutor:
        return self._pool("revision-search", SEARCH_THREADS)

    def close(self) -> None:
        """Shut the thread pools down (a straggling tool finishes on its own thread)."""
        with self._pools_lock:
            pools, self._pools = self._pools or {}, {}
        for pool in pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> PlanExecutor:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def component(self, name: str) -> Component:
        with self._lock:
            if name not in self._instances:
                self._instances[name] = self.registry.get(name)()
            return self._instances[name]

    def pipeline_for(self, plan: ToolDag | Plan | str) -> PlannedPipeline:
        """A pipeline-shaped object that runs `plan` on every request."""
        return PlannedPipeline(self, plan)

    def prepare(self, plan: ToolDag | Plan | str) -> ToolDag:
        """Validate a plan and do its components' one-time setup (artifacts, models)."""
        dag = self.dag(plan)
        if not self._warm:
            warm_query_info(self.engine)
            self._warm.add("")
        for cls in dag.components.values():
            if cls.name not in self._warm:
                self.component(cls.name).warm_up(self.catalog)
                self._warm.add(cls.name)
        return dag

    # -- entry points ----------------------------------------------------------------------------
    def search(
        self,
        image,
        plan: ToolDag | Plan | str,
        *,
        top_k: int = 10,
        source: str | None = None,
        request_id: str | None = None,
        user_id: str | None = None,
    ) -> SearchResponse:
        """Search with a photo (path, bytes or PIL image) and run `plan` alongside."""
        started = time.perf_counter()
        if isinstance(image, str | bytes) or hasattr(image, "__fspath__"):
            source = source or (str(image) if not isinstance(image, bytes) else None)
            image = load_image(image)
        query = Query(
            source=source or "<image>",
            image=image,
            top_k=top_k,
            request_id=request_id,
            user_id=user_id,
        )
        return self.run(query, plan, started)

    def search_vector(
        self, vector, plan: ToolDag | Plan | str, *, top_k: int = 10, source: str = "<vector>"
    ) -> SearchResponse:
        import numpy as np

        query = Query(source=source, vector=np.asarray(vector, np.float32), top_k=top_k)
        return self.run(query, plan)

    def run(
        self, query: Query, plan: ToolDag | Plan | str, started: float | None = None
    ) -> SearchResponse:
        """Synchronous `arun` (not from inside a running event loop: await `arun` there)."""
        return asyncio.run(self.arun(query, plan, started))

    async def arun(
        self, query: Query, plan: ToolDag | Plan | str, started: float | None = None
    ) -> SearchResponse:
        started = time.perf_counter() if started is None else started
        dag = self.prepare(plan)
        loop = asyncio.get_running_loop()
        run = _Run(self, dag, loop, started, query)
        run.start()  # tools' preparation starts now, before the photo is even encoded
        pipeline = self.pipeline.with_hooks(run.hooks())
        done: asyncio.Future = loop.create_future()

        def main_search() -> None:
            try:
                try:
                    outcome = (pipeline.run(query, started), None)
                except BaseException as exc:  # hand every outcome back to the loop
                    outcome = (None, exc)
                loop.call_soon_threadsafe(_settle, done, *outcome)
            except RuntimeError:  # the loop is closed: its caller stopped waiting long ago
                pass
            finally:
                run.query_info.understood.set()  # nobody waits for a vector that never comes

        self.search_pool.submit(main_search)
        try:
            return await done
        finally:  # after the search (a no-op), or the caller stopped waiting: release the hooks
            run.abandon()


class PlannedPipeline:
    """A `Searcher` that runs one fixed plan on every request (the experiment harness's
    always-all arm, `revision tools compare`): `respond`, plus the pipeline's `search`,
    `search_vector` and `run` shapes."""

    deterministic = False  # tools may read more than the photo

    def __init__(self, executor: PlanExecutor, plan: ToolDag | Plan | str):
        self.executor = executor
        self.dag = executor.prepare(plan)
        self.engine = executor.engine

    def respond(self, request: SearchRequest) -> SearchResponse:
        import numpy as np

        if request.embedding is not None:
            query = Query(
                source=request.source or "<vector>",
                vector=np.asarray(request.embedding, np.float32),
                top_k=request.top_k,
                request_id=request.request_id,
                user_id=request.user_id,
            )
            return self.executor.run(query, self.dag)
        return self.executor.search(
            request.image,
            self.dag,
            top_k=request.top_k,
            source=request.source,
            request_id=request.request_id,
            user_id=request.user_id,
        )

    def search(
        self, image, *, top_k: int = 10, source: str | None = None, request_id: str | None = None
    ) -> SearchResponse:
        return self.executor.search(
            image, self.dag, top_k=top_k, source=source, request_id=request_id
        )

    def search_vector(
        self, vector, *, top_k: int = 10, source: str = "<vector>", request_id: str | None = None
    ) -> SearchResponse:
        import numpy as np

        query = Query(
            source=source, vector=np.asarray(vector, np.float32), top_k=top_k, request_id=request_id
        )
        return self.executor.run(query, self.dag)

    def run(self, query: Query, started: float | None = None) -> SearchResponse:
        return self.executor.run(query, self.dag, started)


def _settle(future: asyncio.Future, result, exc) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


@dataclass
class _Prepared:
    inputs: dict[str, Any]
    prefetched: Any
    notes: dict[str, Any]


class _Run:
    """One request's tool execution state."""

    def __init__(self, ex: PlanExecutor, dag: ToolDag, loop, started: float, query: Query):
        self.ex = ex
        self.dag = dag
        self.loop = loop
        self.started = started
        self.query = query
        self.prepared: dict[int, asyncio.Task] = {}
        self.query_info = QueryInfo(ex.engine, ex.catalog, query)
        self.by_stage = {
            s: [st for st in dag.plan.steps if dag.stage_of(st.index) == s] for s in ToolStage
        }
        # hook calls in flight on the loop, cancelled when the caller stops waiting (otherwise a
        # coroutine scheduled just before its loop closed would block a search thread forever)
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        self._abandoned = False

    def abandon(self) -> None:
        """The caller stopped waiting: hooks still waiting on the loop give up, new ones skip."""
        with self._lock:
            self._abandoned = True
            pending, self._pending = self._pending, set()
        for future in pending:
            future.cancel()

    # -- hooks (called on the main-search thread) ------------------------------------------------
    def hooks(self) -> dict[Stage, list]:
        def at(*stages: ToolStage):
            def hook(ctx: SearchContext) -> None:
                wanted = [s for s in stages if self.by_stage[s]]
                if wanted:  # one round trip to the loop for all of them
                    self._guarded(ctx, wanted, self._stages(wanted, ctx))

            return hook

        return {
            Stage.QUERY: [self.on_query],
            Stage.RECALL: [at(ToolStage.RECALL)],
            Stage.FILTER: [at(ToolStage.FILTER)],
            Stage.RANK: [at(ToolStage.RANK)],
            Stage.DISPLAY: [at(ToolStage.DISPLAY, ToolStage.INTERACTION)],
        }

    def _guarded(self, ctx: SearchContext, stages: list[ToolStage], coro) -> None:
        """Run `coro` on the loop; whatever goes wrong, the main search carries on."""
        with self._lock:
            try:
                if self._abandoned:
                    raise RuntimeError("the request was abandoned by its caller")
                future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            except RuntimeError as exc:  # the request's loop is gone: its caller stopped waiting
                coro.close()
                self._record_missing(ctx, stages, exc)
                return
            self._pending.add(future)
        try:
            future.result()
        except CancelledError:  # abandoned while waiting
            self._record_missing(ctx, stages, RuntimeError("the request was abandoned"))
        except Exception as exc:  # the executor's own failure: record it, keep the baseline
            self._record_missing(ctx, stages, exc)
        finally:
            with self._lock:
                self._pending.discard(future)

    def _record_missing(self, ctx: SearchContext, stages: list[ToolStage], exc: Exception):
        """A trace entry for each tool of `stages` that has none yet."""
        done = {e.index for e in ctx.trace if isinstance(e, ToolTrace)}
        for s in stages:
            for step in self.by_stage[s]:
                if step.index not in done:
                    self._record(ctx, step, s, f"{type(exc).__name__}: {exc}")

    def on_query(self, ctx: SearchContext) -> None:
        """The photo is encoded: release the preparations waiting for the embedding, and run
        query-stage tools (if any) before the search goes on."""
        self.query_info.understood.set()
        if self.by_stage[ToolStage.QUERY]:
            self._guarded(ctx, [ToolStage.QUERY], self._stages([ToolStage.QUERY], ctx))

    # -- on the event loop ------------------------------------------------------------------------
    def start(self) -> None:
        view = SearchContext(query=self.query)  # preparation sees the query, not candidates
        for step in self.dag.plan.steps:
            self.prepared[step.index] = self.loop.create_task(self._prepare(step, view))

    async def _stages(self, stages: list[ToolStage], ctx: SearchContext) -> None:
        for stage in stages:
            await self._stage(stage, ctx)

    async def _prepare(self, step, view: SearchContext) -> _Prepared:
        comp = self.ex.component(step.component)
        cls = type(comp)
        ex = self.ex
        notes: dict[str, Any] = {}
        timeout_s = (cls.timeout_ms or ex.timeout_ms) / 1000

        def work() -> _Prepared:
            tctx = ToolContext(
                search=view,
                engine=ex.engine,
                pipeline=ex.pipeline,
                catalog=ex.catalog,
                query_info=self.query_info,
                index=step.index,
                deadline=time.perf_counter() + timeout_s,
                notes=notes,
            )
            inputs = resolve_inputs(comp, step, tctx)
            prefetched = comp.prefetch(tctx, **inputs)
            return _Prepared(inputs, prefetched, notes)

        return await self.loop.run_in_executor(self.ex.tool_pool, work)

    async def _stage(self, stage: ToolStage, ctx: SearchContext) -> None:
        for wave in self.dag.generations(stage):
            budget = self.ex.budget_ms
            if budget is not None and (time.perf_counter() - self.started) * 1000 > budget:
                for step in wave:
                    self._record(ctx, step, stage, "request budget spent", status="timeout")
                continue
            outcomes = await asyncio.gather(*(self._run_tool(step, stage, ctx) for step in wave))
            rewritten: dict[str, int] = {}
            for step, (entry, fork, diff) in zip(wave, outcomes, strict=True):
                if entry.status == "ok":
                    clash = [
                        k for k in ("candidates", "results") if k in diff.kinds and k in rewritten
                    ]
                    if clash:
                        entry = entry.model_copy(
                            update={
                                "status": "failed",
                                "error": f"conflicting edit: ({rewritten[clash[0]]}) already "
                                f"rewrote the {clash[0]} in this wave",
                            }
                        )
                    else:
                        for k in ("candidates", "results"):
                            if k in diff.kinds:
                                rewritten[k] = step.index
                        commit(ctx, fork, diff)
                        ctx.applied.append(step.index)
                ctx.trace.append(entry)

    async def _run_tool(self, step, stage: ToolStage, base: SearchContext):
        comp = self.ex.component(step.component)
        cls = type(comp)
        timeout_ms = cls.timeout_ms or self.ex.timeout_ms
        t0 = time.perf_counter()
        deadline = t0 + timeout_ms / 1000
        entry: dict[str, Any] = {
            "index": step.index,
            "name": cls.name,
            "stage": str(stage),
            "status": "ok",
            "ms": 0.0,
            "error": None,
            "start_ms": round((t0 - self.started) * 1000, 3),
        }
        fork, diff = None, ContextDiff()
        try:
            prepared: _Prepared = await asyncio.wait_for(
                asyncio.shield(self.prepared[step.index]), max(deadline - time.perf_counter(), 0)
            )
            entry["inputs"] = _jsonable(prepared.inputs)
            fork = fork_context(base)
            tctx = ToolContext(
                search=fork,
                engine=self.ex.engine,
                pipeline=self.ex.pipeline,
                catalog=self.ex.catalog,
                query_info=self.query_info,
                index=step.index,
                prefetched=prepared.prefetched,
                deadline=deadline,
                notes=prepared.notes,
            )
            await asyncio.wait_for(
                self.loop.run_in_executor(
                    self.ex.tool_pool, partial(comp.run, tctx, **prepared.inputs)
                ),
                max(deadline - time.perf_counter(), 0),
            )
            diff = diff_context(base, fork)
            illegal = sorted(diff.kinds - ALLOWED_EDITS[stage])
            if illegal:
                raise _StageViolation(
                    f"a {stage}-stage tool may not edit the {', '.join(illegal)}; it may edit "
                    f"{', '.join(sorted(ALLOWED_EDITS[stage]))}"
                )
            if prepared.notes:
                entry["notes"] = _jsonable(prepared.notes)
        except (TimeoutError, ToolTimeout):
            entry.update(status="timeout", error=f"overran its {timeout_ms:g} ms deadline")
        except Exception as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        entry["ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return ToolTrace(**entry), fork, diff

    def _record(self, ctx, step, stage, error: str, status: str = "failed") -> None:
        ctx.trace.append(
            ToolTrace(
                index=step.index,
                name=step.component,
                stage=str(stage),
                status=status,
                error=error,
                start_ms=round((time.perf_counter() - self.started) * 1000, 3),
            )
        )


class _StageViolation(Exception):
    pass


def _jsonable(value: Any) -> Any:
    """Inputs and notes as plain JSON values (numpy scalars and arrays become lists/floats)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value
