"""The loop that learns from its own traffic (`revision experiment loop`).

Week 1 is baseline traffic (logged through the service, so every request carries the trigger
rule's verdict). At the end of each week the weekly pipeline mines that week's logs (including,
from week 2 on, which tools were shown and which were used), retrains the planner and publishes
it if it does not lose to the published one; the next week is an A/B test of the baseline
against the service with that planner. The same simulated users come back every week (one
traffic seed), so their histories grow. The report gives, week by week, the trigger-subset
no-click lift and the new planner's held-out tool match.
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from revision.experiment.analyze import analyze
from revision.experiment.run import ExperimentConfig, next_day, run_experiment
from revision.pipeline.runner import run_pipeline
from revision.warehouse import Warehouse


def run_loop(
    warehouse: Warehouse,
    *,
    world: str | Path | None = None,
    weeks: int = 3,
    users: int = 2000,
    requests: int = 8000,
    seed: int = 0,
    sft_epochs: int = 4,
    grpo_steps: int = 30,
    start: date | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    first = start or next_day(warehouse)
    report: dict[str, Any] = {"weeks": []}
    for w in range(weeks):
        day = first + timedelta(days=7 * w)
        arms = ("baseline",) if w == 0 else ("baseline", "revision")
        run = run_experiment(
            warehouse,
            ExperimentConfig(
                world=world,
                arms=arms,
                days=7,
                users=users,
                requests=requests,
                seed=seed,
                start_date=day.isoformat(),
                name=f"week{w + 1}",
            ),
        )
        week: dict[str, Any] = {"week": w + 1, "days": run["days"], "arms": list(arms)}
        if w > 0:
            analysis = analyze(warehouse, days=tuple(run["days"]), n_boot=500)
            lift = analysis["triggered"].get("revision", {}).get("lift", {})
            week["triggered_no_click"] = lift.get("no_click_ratio")
            week["triggered_ctr"] = lift.get("ctr")
            week["trigger_share"] = analysis["trigger_share"]
        t0 = time.perf_counter()
        pipeline = run_pipeline(
            warehouse,
            day + timedelta(days=7),
            window_days=7,
            sft_epochs=sft_epochs,
            grpo_steps=grpo_steps,
        )
        stages = pipeline["stages"]
        week["pipeline_s"] = round(time.perf_counter() - t0, 1)
        week["tool_match"] = stages["evaluate"]["new"]["tool_match"]
        week["served"] = stages["evaluate"]["new"]["served"]
        week["published"] = stages["publish"].get("published")
        report["weeks"].append(week)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report
