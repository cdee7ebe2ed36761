"""Bot filter under the default world, on held-out traffic.

Trains the classifier on one simulated week and applies it to another week from different
seeds (new users, new bots), then scores the no-click extraction's verdicts against the
simulator's truth (evaluation only), per user and per request.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from revision.logs.bots import evaluate_bot_scores, train_bot_filter
from revision.logs.no_click import extract_no_click
from revision.search.engine import SearchEngine
from revision.search.pipeline import SearchPipeline
from revision.sim.traffic import simulate
from revision.sim.world import load_world
from revision.tables import TRUTH
from revision.warehouse import Warehouse

COPY = ("catalog", "artifacts/index", "artifacts/cache", "artifacts/models")


def fork(source: Warehouse, folder: Path) -> Warehouse:
    """A warehouse with the source's catalog and index but no logs."""
    for part in COPY:
        if (source.root / part).exists():
            shutil.copytree(source.root / part, folder / part)
    return Warehouse(folder)


def run(source: Warehouse, requests: int, days: int) -> dict:
    world = load_world()
    out = {"requests_per_week": requests, "days": days}
    with tempfile.TemporaryDirectory() as tmp:
        train_wh = fork(source, Path(tmp) / "train")
        test_wh = fork(source, Path(tmp) / "test")
        for wh, seed in ((train_wh, 11), (test_wh, 12)):
            pipeline = SearchPipeline(SearchEngine.open(wh))
            simulate(world, pipeline, wh, users=3000, days=days, requests=requests, seed=seed)
        report = train_bot_filter(train_wh, TRUTH)
        out["cross_validated"] = json.loads(json.dumps(report.as_dict(), default=str))
        for name in ("bot_filter.joblib", "bot_filter.json"):
            src = train_wh.artifact("models", name)
            if src.exists():
                shutil.copy(src, test_wh.artifact("models", name))
        extract_no_click(test_wh, nsfw=False)
        out["held_out"] = evaluate_bot_scores(test_wh, TRUTH)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warehouse", default=None)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--out", default="bench/out/bots.json")
    args = parser.parse_args()
    result = run(Warehouse(args.warehouse), args.requests, args.days)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(
        f"Bot filter, default world: trained on one simulated week ({args.requests} requests), "
        "applied to another week with new users and bots."
    )
    print("```json\n" + json.dumps(result["held_out"], indent=2, default=str) + "\n```")


if __name__ == "__main__":
    main()
