"""The loop that learns from its own traffic (`revision experiment loop`).

Week 1 is baseline traffic (logged through the service, so every request carries the trigger
rule's verdict). At the end of each week the weekly pipeline mines that week's logs (including,
from week 2 on, which tools were shown and which were used), retrains the planner and publishes
it if it does not lose to the published one; the next week is an A/B test of the baseline
against the service with that planner. The same simulated users come back every week (one
traffic seed), so their histories grow. The report gives, week by week, the trigger-subset
no-click lift, the decision cache's hit rate and the new planner's held-out tool match.

`period_days` changes how often the pipeline runs (the paper's mining-frequency ablation, Table
III): every 4, 8 or 16 days instead of 7, with the same traffic per day.
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from revision.errors import InputError
from revision.experiment.analyze import analyze
from revision.experiment.run import ExperimentConfig, next_day, run_experiment
from revision.pipeline.runner import run_pipeline
from revision.tables import REQUESTS
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
    period_days: int = 7,
) -> dict[str, Any]:
    """Run `weeks` periods of `period_days` days each; `requests` is per 7 days."""
    if period_days < 1:
        raise InputError(f"period_days={period_days}: use 1 or more")
    started = time.perf_counter()
    first = start or next_day(warehouse)
    report: dict[str, Any] = {"weeks": [], "period_days": period_days}
    for w in range(weeks):
        day = first + timedelta(days=period_days * w)
        arms = ("baseline",) if w == 0 else ("baseline", "revision")
        run = run_experiment(
            warehouse,
            ExperimentConfig(
                world=world,
                arms=arms,
                days=period_days,
                users=users,
                requests=max(1, round(requests * period_days / 7)),
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
            week["cache_hit_rate"] = cache_hit_rate(warehouse, run["days"])
        if w == weeks - 1:  # a planner trained now would be tested by no week
            report["weeks"].append(week)
            break
        t0 = time.perf_counter()
        pipeline = run_pipeline(
            warehouse,
            day + timedelta(days=period_days),
            window_days=period_days,
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


def cache_hit_rate(warehouse: Warehouse, days: list[str]) -> float | None:
    """Share of the revision arm's decision-cache lookups on `days` that hit (None: none)."""
    names = set(warehouse.dataset(REQUESTS).schema.names)
    if "cache" not in names:
        return None
    columns = [c for c in ("dt", "variant", "cache") if c in names]
    requests = warehouse.read_pandas(REQUESTS, columns=columns)  # not the whole request log
    first, last = min(days), max(days)  # `days` may be just the first and the last
    dt = requests["dt"].astype(str)
    looked = requests[(dt >= first) & (dt <= last) & requests["cache"].notna()]
    looked = looked[looked["variant"] == "revision"] if "variant" in looked.columns else looked
    return round(float((looked["cache"] == "hit").mean()), 4) if len(looked) else None
