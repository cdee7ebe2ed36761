"""Evaluation of a planner on the held-out test split (paper Table IV shape), with the
simulator's truth where it exists (evaluation only).

Answers and thinking are compared with the references the data builder wrote
(`revision.planner.metrics`); with `sim/truth`, also the share of plans holding a tool that
serves the user's hidden intent (`revision.eval.plans`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from revision import toollist
from revision.eval.plans import plan_coverage
from revision.planner.data import load_samples
from revision.planner.metrics import answer_metrics, thinking_metrics
from revision.planner.online import open_planner
from revision.tables import TRUTH
from revision.warehouse import Warehouse


def evaluate_planner(
    warehouse: Warehouse, checkpoint: str | Path | None = None, *, build: str | None = None
) -> dict[str, Any]:
    """Figures of one planner on the test split (see the module docstring)."""
    from revision.tools import load_tools

    doc = toollist.load(warehouse)
    samples = load_samples(warehouse, "test", build=build, expected_digest=doc.digest)
    planner = open_planner(warehouse, checkpoint, histories=False)
    started = time.perf_counter()
    completions = [planner.backend.plan(s.features, s.live) for s in samples]
    ms = (time.perf_counter() - started) * 1000 / max(1, len(samples))
    plans = [list(c.tools) for c in completions]
    out: dict[str, Any] = {
        "checkpoint": str(checkpoint or "published"),
        "version": planner.version,
        "answers": answer_metrics(
            plans, [s.answer for s in samples], [s.category for s in samples]
        ),
        "thinking": thinking_metrics(
            [c.thinking for c in completions], [s.thinking for s in samples]
        ),
        "ms_per_plan": round(ms, 2),
    }
    if warehouse.exists(TRUTH):
        out["intents"] = plan_coverage(
            warehouse, [s.request_id for s in samples], plans, load_tools(warehouse)
        )
    return out
