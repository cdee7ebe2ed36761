"""The resumable batch runner: no-click requests in, `mining/signals` and `mining/errors` out.

A run freezes its plan (the ordered request ids) when it starts and cuts it into fixed
batches. Each batch is written as `batch-NNNNN.parquet` in the run's partition
(`dt=…/run=…/`) of both tables, atomically, and then marked done under
`artifacts/mining/runs/RUN/done/`. Killed at any moment and started again with the same
arguments, a run finds its plan, skips the batches marked done and redoes the others, whose
files are simply replaced: every request ends up exactly once in signals ∪ errors. The default
run id is derived from the input, the backend, its options and the plan, so "the same command
again" resumes (or, when complete, does nothing); `--restart` drops the run and starts over.

Batches run locally, one after another, or on Ray Data (`engine="ray"`), which gives each
worker a whole batch: the driver assembles inputs, workers analyse and write, and the driver
marks batches done as their results come back.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from revision.errors import InputError
from revision.mining._base import Analysis, Analyst, MiningInput, describe_error, get_analyst
from revision.mining.inputs import InputAssembler, plan_requests
from revision.mining.rules import load_rules
from revision.progress import progress
from revision.tables import MINING_ERRORS, NO_CLICK, SIGNALS
from revision.warehouse import Warehouse

RUNS = ("mining", "runs")
ENGINES = ("local", "ray")
SECRET_OPTIONS = ("api_key",)


@dataclass
class RunSummary:
    run: str
    dt: str
    input: str
    backend: str
    engine: str
    requests: int
    batches: int
    skipped_batches: int  # already done before this invocation
    analysed: int = 0  # requests with signals, this invocation
    errors: int = 0  # requests sent to mining/errors, this invocation
    signals: int = 0  # signal rows written, this invocation
    elapsed_s: float = 0.0
    requests_per_s: float | None = None
    complete: bool = False
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_file(index: int) -> str:
    return f"batch-{index:05d}.parquet"


class RunState:
    """A run's frozen plan and its done markers under `artifacts/mining/runs/RUN/`."""

    def __init__(self, warehouse: Warehouse, run: str):
        self.warehouse = warehouse
        self.run = run
        self.folder = warehouse.root.joinpath("artifacts", *RUNS, run)

    @property
    def manifest_path(self):
        return self.folder / "manifest.json"

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def create(self, manifest: dict[str, Any], plan: list[str]) -> None:
        (self.folder / "done").mkdir(parents=True, exist_ok=True)
        _atomic(
            self.folder / "plan.parquet",
            lambda p: pq.write_table(pa.table({"request_id": pa.array(plan, pa.string())}), p),
        )
        _atomic(self.manifest_path, lambda p: p.write_text(json.dumps(manifest, indent=2)))

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def plan(self) -> list[str]:
        return pq.read_table(self.folder / "plan.parquet").column("request_id").to_pylist()

    def done(self) -> set[int]:
        folder = self.folder / "done"
        if not folder.exists():
            return set()
        return {int(p.stem.split("-")[1]) for p in folder.glob("batch-*.json")}

    def mark_done(self, index: int, counts: dict[str, Any]) -> None:
        path = self.folder / "done" / f"batch-{index:05d}.json"
        _atomic(path, lambda p: p.write_text(json.dumps(counts)))

    def partition(self) -> dict[str, str]:
        return {"dt": self.manifest()["dt"], "run": self.run}

    def drop(self, warehouse: Warehouse) -> None:
        import shutil

        if self.exists():
            part = self.partition()
            warehouse.drop(SIGNALS, part)
            warehouse.drop(MINING_ERRORS, part)
        shutil.rmtree(self.folder, ignore_errors=True)


def _atomic(path, write: Callable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def public_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options fit for a manifest: secrets left out, paths as strings."""
    return {
        k: str(v) if hasattr(v, "__fspath__") else v
        for k, v in sorted(options.items())
        if k not in SECRET_OPTIONS
    }


def fingerprint(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs comparable: the backend, its options and the rules' content."""
    out = {"backend": backend, **public_options(options)}
    out["rules"] = load_rules(options.get("rules") or None).digest
    return out


def write_batch(
    warehouse: Warehouse,
    partition: dict[str, str],
    index: int,
    analyses: Iterable[Analysis],
    backend: str,
) -> dict[str, int]:
    """Write one batch's signals and errors files (replacing earlier attempts); counts."""
    signals: dict[str, list] = {name: [] for name in SIGNALS.schema.names}
    errors: dict[str, list] = {name: [] for name in MINING_ERRORS.schema.names}
    analysed = 0
    for a in analyses:
        if a.ok and not a.signals:
            a = Analysis.failed(a.request_id, "stage2", "no signal suggested")
        if not a.ok:
            for name, value in zip(
                MINING_ERRORS.schema.names,
                (a.request_id, a.stage or "analysis", a.error, backend),
                strict=True,
            ):
                errors[name].append(value)
            continue
        analysed += 1
        for position, s in enumerate(a.signals, start=1):
            row = (a.request_id, position, s.action, s.info, a.thinking, s.confidence, backend)
            for name, value in zip(SIGNALS.schema.names, row, strict=True):
                signals[name].append(value)
    file = batch_file(index)
    for table, rows in ((MINING_ERRORS, errors), (SIGNALS, signals)):
        if rows["request_id"]:
            warehouse.write(table, pa.table(rows, schema=table.schema), partition, file=file)
        else:  # an earlier attempt at this batch may have left a file: it must not count
            stale = warehouse.table_dir(table).joinpath(
                *(f"{k}={v}" for k, v in partition.items()), file
            )
            stale.unlink(missing_ok=True)
    return {
        "analysed": analysed,
        "errors": len(errors["request_id"]),
        "signals": len(signals["request_id"]),
    }


def analyse_batch(
    analyst: Analyst, inputs: list[MiningInput], failed: list[Analysis]
) -> list[Analysis]:
    """Analyse a batch; the runner's safety net turns a crashing analyst into errors."""
    try:
        analyses = analyst.analyse(inputs) if inputs else []
    except Exception as exc:  # an analyst bug must not lose the batch silently
        reason = describe_error(exc)
        analyses = [Analysis.failed(x.request_id, "analysis", reason) for x in inputs]
    return failed + analyses


def prepare_run(
    warehouse: Warehouse,
    *,
    input: str,
    backend: str,
    limit: int | None,
    batch_size: int,
    run: str | None,
    restart: bool,
    options: dict[str, Any],
    days: tuple[str | None, str | None] = (None, None),
) -> RunState:
    """Find the run to resume, or freeze a new plan."""
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if run is not None and not all(c.isalnum() or c in "_.-" for c in run):
        raise InputError(f"run id {run!r}: use letters, digits, '_', '-' or '.'")
    plan = plan_requests(warehouse, input, limit, days)
    spec = {
        "input": input,
        **({"days": list(days)} if any(days) else {}),
        "limit": limit,
        "batch_size": batch_size,
        "fingerprint": fingerprint(backend, options),
    }
    digest = hashlib.sha256(
        json.dumps({**spec, "plan": plan}, sort_keys=True, default=str).encode()
    ).hexdigest()
    state = RunState(warehouse, run or f"{backend}-{digest[:12]}")
    if restart:
        state.drop(warehouse)
    if state.exists():
        manifest = state.manifest()
        if manifest.get("spec") != json.loads(json.dumps(spec, default=str)):
            raise InputError(
                f"run {state.run} was started with other arguments "
                f"({json.dumps(manifest.get('spec'))}); pass another --run or --restart"
            )
        return state
    state.create(
        {
            "run": state.run,
            "dt": datetime.now(UTC).date().isoformat(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "backend": backend,
            "spec": json.loads(json.dumps(spec, default=str)),
            "requests": len(plan),
            "plan_sha256": digest,
        },
        plan,
    )
    return state


def run_mining(
    warehouse: Warehouse,
    *,
    input: str = NO_CLICK,
    backend: str = "embedded",
    limit: int | None = None,
    batch_size: int = 64,
    run: str | None = None,
    restart: bool = False,
    engine: str = "local",
    workers: int = 2,
    options: dict[str, Any] | None = None,
    analyst: Analyst | None = None,
    on_batch: Callable[[int], None] | None = None,
    days: tuple[str | None, str | None] = (None, None),
) -> RunSummary:
    """Mine the kept requests of `input` with `backend`; resumable (see the module docstring).

    `options` go to the analyst's constructor (e.g. `rules`, `ocr`, `base_url`); `analyst`
    overrides the backend lookup (tests, notebooks); `on_batch(index)` is called after each
    batch is committed.
    """
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    options = dict(options or {})
    started = time.perf_counter()
    state = prepare_run(
        warehouse,
        input=input,
        backend=backend,
        limit=limit,
        batch_size=batch_size,
        run=run,
        restart=restart,
        options=options,
        days=days,
    )
    plan = state.plan()
    batches = [plan[i : i + batch_size] for i in range(0, len(plan), batch_size)]
    done = state.done()
    pending = [i for i in range(len(batches)) if i not in done]
    summary = RunSummary(
        run=state.run,
        dt=state.partition()["dt"],
        input=input,
        backend=backend,
        engine=engine,
        requests=len(plan),
        batches=len(batches),
        skipped_batches=len(done),
    )
    if pending:
        assembler = InputAssembler(warehouse, input, plan)
        analyst = analyst or get_analyst(backend, warehouse, **options)
        worker_options = {
            **options,
            **analyst.prepare(lambda: assembler.build(plan)[0], state.folder / "prepared"),
        }
        jobs = ((i, *assembler.build(batches[i])) for i in pending)
        if engine == "ray":
            from revision.mining.ray_engine import run_batches_ray

            results = run_batches_ray(
                warehouse, state, jobs, len(pending), backend, worker_options, workers=workers
            )
        else:
            results = _run_local(warehouse, state, jobs, len(pending), analyst, backend)
        try:
            for index, counts in results:
                state.mark_done(index, counts)
                for key in ("analysed", "errors", "signals"):
                    setattr(summary, key, getattr(summary, key) + counts[key])
                if on_batch is not None:
                    on_batch(index)
        finally:
            summary.stats = analyst.stats()
            analyst.close()
    summary.elapsed_s = round(time.perf_counter() - started, 3)
    mined = summary.analysed + summary.errors
    if mined and summary.elapsed_s > 0:
        summary.requests_per_s = round(mined / summary.elapsed_s, 2)
    summary.complete = len(state.done()) == len(batches)
    return summary


def _run_local(warehouse, state: RunState, jobs, total: int, analyst: Analyst, backend: str):
    partition = state.partition()
    for index, inputs, failed in progress(jobs, total=total, description="mining"):
        analyses = analyse_batch(analyst, inputs, failed)
        yield index, write_batch(warehouse, partition, index, analyses, backend)


def read_analyses(
    warehouse: Warehouse, run: str | None = None, request_ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """Analyses from `mining/signals` (one run when given): request, thinking, signals."""
    import pyarrow.compute as pc

    table = warehouse.read(SIGNALS)
    if run is not None:
        table = table.filter(pc.equal(table.column("run"), run))
    if request_ids:
        table = table.filter(pc.is_in(table.column("request_id"), pa.array(request_ids)))
    rows = sorted(table.to_pylist(), key=lambda r: (r["request_id"], r["run"], r["position"]))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        entry = out.setdefault(
            (r["request_id"], r["run"]),
            {
                "request_id": r["request_id"],
                "run": r["run"],
                "dt": r["dt"],
                "thinking": r["thinking"],
                "signals": [],
            },
        )
        entry["signals"].append({"action": r["action"], "info": r["info"]})
    return list(out.values())
