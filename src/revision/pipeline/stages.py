"""The weekly pipeline's stages (paper §IV-A(b): mining orchestrated weekly, versioned artefacts).

    no_click → mine → cluster → tools → planner_data → train → evaluate → gate → publish

Each stage is a plain function `stage(ctx) -> dict` over a `RunContext` (the warehouse, the
week's `as_of` date and window, the settings). Its outputs are versioned by the week: the mining
run is `week-<as_of>`, the clustering runs incrementally, the planner data build and the
training folder carry `as_of`. A stage's result is recorded under
`artifacts/pipeline/as_of=<date>/<stage>.json` only once it finished; a rerun of a finished
stage is a no-op, and a stage killed halfway reruns from its own resumable state (mining skips
the batches it committed; a training run resumes from its checkpoint), so no row is written
twice. The same functions run under the local runner (`revision pipeline run`) and as Airflow
tasks (`revision.pipeline.airflow_dag`).

The gate compares the new planner with the published one on the new week's held-out test
split (tool match, and plans serving the hidden intent where the simulator's truth exists);
only a planner that does not lose is published.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from revision.errors import InputError
from revision.warehouse import Warehouse

STAGES = (
    "no_click",
    "mine",
    "cluster",
    "tools",
    "planner_data",
    "train",
    "evaluate",
    "gate",
    "publish",
)


@dataclass
class RunContext:
    warehouse: Warehouse
    as_of: date
    window_days: int = 7
    mining_engine: str = "local"  # or "ray"
    sft_epochs: int = 6
    grpo_steps: int = 60
    results: dict[str, dict] = field(default_factory=dict)  # finished stages' outputs

    @property
    def tag(self) -> str:
        return self.as_of.isoformat()

    @property
    def days(self) -> tuple[str, str]:
        """The window's first and last day (inclusive): the `window_days` before `as_of`."""
        first = self.as_of - timedelta(days=self.window_days)
        return first.isoformat(), (self.as_of - timedelta(days=1)).isoformat()

    @property
    def folder(self) -> Path:
        return self.warehouse.artifact_dir("pipeline", f"as_of={self.tag}")


def no_click(ctx: RunContext) -> dict:
    from revision.logs.bots import MODEL_FILE
    from revision.logs.no_click import extract_no_click

    model = ctx.warehouse.root.joinpath("artifacts", *MODEL_FILE)
    report = extract_no_click(ctx.warehouse, bot_filter="model" if model.exists() else "rules")
    return {"days": report.days, "no_click": report.no_click, "kept": report.kept}


def mine(ctx: RunContext) -> dict:
    import pyarrow.compute as pc

    from revision.mining.runner import run_mining
    from revision.tables import SIGNALS

    summary = run_mining(
        ctx.warehouse,
        run=f"week-{ctx.tag}",
        days=ctx.days,
        engine=ctx.mining_engine,
    )
    if not summary.complete:
        raise InputError(f"mining run week-{ctx.tag} did not complete: rerun the stage")
    # the run's rows, not this invocation's: a resumed run wrote only the batches it had left
    signals = ctx.warehouse.read(SIGNALS, columns=["run"]).column("run")
    total = int(pc.sum(pc.equal(signals, summary.run)).as_py() or 0)
    return {"run": summary.run, "requests": summary.requests, "signals": total}


def cluster(ctx: RunContext) -> dict:
    from revision.clustering.runner import run_clustering
    from revision.clustering.store import Source, latest_state

    incremental = latest_state(ctx.warehouse) is not None
    result = run_clustering(ctx.warehouse, Source.table(), incremental=incremental, report=False)
    return {"run": result.state["run"], "incremental": result.incremental}


def tools(ctx: RunContext) -> dict:
    from revision import toollist
    from revision.clustering.runner import update_tool_list

    update_tool_list(ctx.warehouse)
    doc = toollist.load(ctx.warehouse)
    return {"digest": doc.digest, "version": doc.version, "live": doc.live_indices()}


def planner_data(ctx: RunContext) -> dict:
    from revision.planner.data import DataConfig, build_planner_data

    report = build_planner_data(
        ctx.warehouse, DataConfig(mining_run=ctx.results["mine"]["run"], test_days=2)
    )
    return {"build": report.build, "samples": report.samples}


def train(ctx: RunContext) -> dict:
    from revision import toollist
    from revision.planner.data import load_samples
    from revision.planner.train import PlannerTrainConfig, train_planner

    doc = toollist.load(ctx.warehouse)
    samples = load_samples(
        ctx.warehouse,
        "train",
        build=ctx.results["planner_data"]["build"],
        expected_digest=doc.digest,
    )
    out = ctx.warehouse.artifact_dir("planner", "runs", f"as_of={ctx.tag}")
    report = train_planner(
        samples,
        PlannerTrainConfig(
            out=out,
            sft_epochs=ctx.sft_epochs,
            grpo_steps=ctx.grpo_steps,
            skip_grpo=ctx.grpo_steps == 0,
        ),
        doc.digest,
        resume=any(out.iterdir()),
    )
    return {"final": report.final, "seconds": report.seconds}


def evaluate(ctx: RunContext) -> dict:
    from revision.eval.planner import evaluate_planner
    from revision.planner.publish import load_publication

    build = ctx.results["planner_data"]["build"]
    new = evaluate_planner(ctx.warehouse, ctx.results["train"]["final"], build=build)
    out = {"new": _score(new)}
    try:
        published = load_publication(ctx.warehouse)
    except Exception:
        published = None
    if published is not None and published.toollist_digest == ctx.results["tools"]["digest"]:
        old = evaluate_planner(
            ctx.warehouse, ctx.warehouse.resolve(published.checkpoint), build=build
        )
        out["published"] = _score(old)
    return out


def _score(figures: dict) -> dict:
    intents = (figures.get("intents") or {}).get("all") or {}
    return {
        "tool_match": figures["answers"].get("tool_match"),
        "order_match": figures["answers"].get("order_match"),
        "tools_per_plan": figures["answers"].get("tools_per_plan"),
        "served": intents.get("served"),
    }


def gate(ctx: RunContext) -> dict:
    """Publish only a planner that does not lose to the published one on the same test set."""
    scores = ctx.results["evaluate"]
    new, old = scores["new"], scores.get("published")
    if old is None:
        return {"pass": True, "why": "nothing published for this tool list yet"}
    key = (
        "served"
        if new.get("served") is not None and old.get("served") is not None
        else "tool_match"
    )
    passed = (new[key] or 0) >= (old[key] or 0)
    return {"pass": passed, "why": f"{key}: new {new[key]} vs published {old[key]}"}


def publish_stage(ctx: RunContext) -> dict:
    from revision.planner.publish import publish

    if not ctx.results["gate"]["pass"]:
        return {"published": False, "why": ctx.results["gate"]["why"]}
    pub = publish(
        ctx.warehouse,
        ctx.results["train"]["final"],
        notes={"as_of": ctx.tag, "evaluate": ctx.results["evaluate"]["new"]},
    )
    return {"published": True, "version": pub.version}


FUNCTIONS = {
    "no_click": no_click,
    "mine": mine,
    "cluster": cluster,
    "tools": tools,
    "planner_data": planner_data,
    "train": train,
    "evaluate": evaluate,
    "gate": gate,
    "publish": publish_stage,
}


def run_stage(ctx: RunContext, stage: str, *, force: bool = False) -> dict:
    """Run one stage unless it already finished for this week (then return its record)."""
    if stage not in FUNCTIONS:
        raise InputError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    marker = ctx.folder / f"{stage}.json"
    if marker.exists() and not force:
        ctx.results[stage] = json.loads(marker.read_text())["result"]
        return ctx.results[stage]
    for earlier in STAGES[: STAGES.index(stage)]:
        if earlier not in ctx.results:
            path = ctx.folder / f"{earlier}.json"
            if not path.exists():
                raise InputError(f"stage {stage} needs {earlier} first (as_of {ctx.tag})")
            ctx.results[earlier] = json.loads(path.read_text())["result"]
    started = time.perf_counter()
    result = FUNCTIONS[stage](ctx)
    record = {"stage": stage, "as_of": ctx.tag, "seconds": round(time.perf_counter() - started, 2)}
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({**record, "result": result}, indent=2, default=str))
    tmp.replace(marker)
    ctx.results[stage] = result
    return result
