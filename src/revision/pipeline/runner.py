"""The local runner: a week's stages in order, each a no-op when it already finished."""

from __future__ import annotations

import time
from datetime import date
from typing import Any

from revision.errors import InputError
from revision.pipeline.stages import STAGES, RunContext, run_stage
from revision.progress import progress
from revision.warehouse import Warehouse


def run_pipeline(
    warehouse: Warehouse,
    as_of: date | str,
    *,
    window_days: int = 7,
    stages: tuple[str, ...] = STAGES,
    force: tuple[str, ...] = (),
    mining_engine: str = "local",
    sft_epochs: int = 6,
    grpo_steps: int = 60,
) -> dict[str, Any]:
    """Run (or finish) the week ending before `as_of`; returns each stage's record."""
    if isinstance(as_of, str):
        try:
            as_of = date.fromisoformat(as_of)
        except ValueError:
            raise InputError(f"--as-of {as_of!r}: expected YYYY-MM-DD") from None
    if window_days < 1:
        raise InputError(f"--window-days {window_days}: at least 1")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise InputError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    ctx = RunContext(
        warehouse,
        as_of,
        window_days=window_days,
        mining_engine=mining_engine,
        sft_epochs=sft_epochs,
        grpo_steps=grpo_steps,
    )
    started = time.perf_counter()
    report: dict[str, Any] = {"as_of": ctx.tag, "days": list(ctx.days), "stages": {}}
    for stage in progress([s for s in STAGES if s in stages], description=f"week {ctx.tag}"):
        report["stages"][stage] = run_stage(ctx, stage, force=stage in force)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report
