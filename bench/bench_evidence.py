"""Reflective mining with evidence (issue 11): does the first signal name the hidden intent?

1. Default world (the demo warehouse, or --warehouse): mine the kept no-click requests with the
   embedded analyst (follow-ups, history, calibration); per intent and overall, the share whose
   first signal serves the hidden intent, whose top 3 do, and signals per request, split by
   "has a follow-up" / "has none"; and the Bayes bound of the no-follow-up requests under the
   world's own model (observable; and knowing each user's hidden traits).
2. The same, unchanged code, on a second world (`family_world.yaml`): a copy of the warehouse's
   catalog and indexes (hard links), new traffic.
3. Throughput of embedded mining with context and events (requests/s, 2 cores).
4. Context for 1M synthetic requests (with follow-up events): seconds and peak RSS, in a child
   process.

Evaluation reads the simulator's truth; mining never does. Prints markdown; writes
bench/out/evidence.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from revision.eval.intents import bayes_bound, signal_quality
from revision.logs.no_click import extract_no_click
from revision.mining.runner import RunState, run_mining
from revision.sim.world import default_world_path, load_world
from revision.tables import EVENTS, REQUESTS, TRUTH
from revision.warehouse import Warehouse

OUT = Path(__file__).resolve().parent / "out"
FAMILY = default_world_path().with_name("family_world.yaml")


def mine_and_score(wh: Warehouse, world, run: str) -> dict:
    started = time.perf_counter()
    summary = run_mining(wh, run=run, restart=True, batch_size=256)
    seconds = time.perf_counter() - started
    quality = signal_quality(wh, run=run)
    bound = bayes_bound(wh, world)
    RunState(wh, run).drop(wh)  # the benchmark's run leaves no signals behind
    return {
        "requests": summary.requests,
        "requests_per_s": round(summary.requests / seconds, 1),
        "calibration": summary.stats,
        "quality": quality,
        "bayes_bound": bound,
    }


def second_world(source: Warehouse, users: int, requests: int, days: int) -> dict:
    """Simulate the family world over a hard-linked copy of the catalog and its indexes."""
    from revision.logs.bots import train_bot_filter
    from revision.search.engine import SearchEngine
    from revision.search.pipeline import SearchPipeline
    from revision.sim.traffic import simulate

    folder = Path(tempfile.mkdtemp(prefix="family-", dir=OUT))
    wh = Warehouse(folder)
    for part in ("catalog", "artifacts/index", "artifacts/models", "artifacts/cache"):
        src = source.root / part
        if src.exists():
            (wh.root / part).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-al", str(src), str(wh.root / part)], check=True)
    world = load_world(FAMILY)
    engine = SearchEngine.open(wh)
    summary = simulate(world, SearchPipeline(engine), wh, users=users, days=days,
                       requests=requests, seed=3)  # fmt: skip
    train_bot_filter(wh, TRUTH)
    extract_no_click(wh, nsfw=False)
    out = mine_and_score(wh, world, "bench-family")
    out["world"] = {"name": world.name, "human_no_click_ratio": summary["human_no_click_ratio"]}
    shutil.rmtree(folder, ignore_errors=True)
    return out


def context_child(root: str) -> None:
    from revision.logs.context import build_context

    started = time.perf_counter()
    contexts = build_context(Warehouse(root))
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"requests": len(contexts), "seconds": round(seconds, 2), "peak_rss_mib": round(rss)}
        )
    )


def context_at_scale(n: int) -> dict:
    """1M requests, 60k users, a third with a follow-up event: build every request's context."""
    folder = Path(tempfile.mkdtemp(prefix="context-", dir=OUT))
    wh = Warehouse(folder)
    rng = np.random.default_rng(0)
    users = rng.integers(0, 60_000, n)
    ts = np.sort(rng.integers(0, 7 * 86_400_000, n)) + 1_750_000_000_000
    ids = [f"r{i:07d}" for i in range(n)]
    day = [time.strftime("%Y-%m-%d", time.gmtime(t / 1000)) for t in ts[:: max(1, n // 7)]]
    requests = pa.table(
        {
            "request_id": ids,
            "user_id": [f"u{u}" for u in users],
            "ts": pa.array(ts, pa.int64()).cast(REQUESTS.schema.field("ts").type),
            "image": ["x.jpg"] * n,
        }
    )
    wh.write(REQUESTS, requests, {"dt": day[0]})
    pick = rng.random(n) < 0.33
    kinds = np.array(["sort_price", "filter_colour", "open_details", "text_query", "leave"])
    events = pa.table(
        {
            "request_id": [i for i, p in zip(ids, pick, strict=True) if p],
            "user_id": [f"u{u}" for u, p in zip(users, pick, strict=True) if p],
            "ts": pa.array(ts[pick] + 10_000, pa.int64()).cast(EVENTS.schema.field("ts").type),
            "kind": kinds[rng.integers(0, len(kinds), int(pick.sum()))].tolist(),
            "value": ["asc"] * int(pick.sum()),
        }
    )
    wh.write(EVENTS, events, {"dt": day[0]})
    proc = subprocess.run(
        [sys.executable, __file__, "--context-child", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    shutil.rmtree(folder, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(out: dict) -> str:
    lines = ["## Reflective mining with evidence (issue 11)", ""]
    for name in ("default", "family"):
        block = out.get(name)
        if not block:
            continue
        q, b = block["quality"], block["bayes_bound"]
        lines += [
            f"### {name} world ({block['requests']} kept no-click requests, "
            f"{block['requests_per_s']} requests/s mined)",
            "",
            "| requests | n | first signal | top 3 | signals / request |",
            "|---|---|---|---|---|",
        ]
        for key in sorted(k for k in q if k != "run"):
            r = q[key]
            lines.append(
                f"| {key} | {r['requests']} | {r['first_signal']} | {r['top3']} | "
                f"{r['signals_per_request']} |"
            )
        share = (
            round(q["without_followup"]["first_signal"] / b["observable"], 3)
            if b.get("observable")
            else None
        )
        lines += [
            "",
            f"Bayes bound, no follow-up ({b['requests']} requests): observable {b['observable']}, "
            f"knowing the users' traits {b['with_user_traits']}; the analyst reaches {share} of "
            "the observable bound.",
            "",
        ]
    if out.get("context"):
        c = out["context"]
        lines.append(
            f"Context for {c['requests']:,} requests: {c['seconds']} s, peak RSS "
            f"{c['peak_rss_mib']} MiB (child process)."
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warehouse", default=os.environ.get("REVISION_HOME", ".revision"))
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--context-requests", type=int, default=1_000_000)
    ap.add_argument("--context-child")
    args = ap.parse_args()
    if args.context_child:
        context_child(args.context_child)
        return
    OUT.mkdir(exist_ok=True)
    wh = Warehouse(args.warehouse)
    out = {"default": mine_and_score(wh, load_world(), "bench-default")}
    out["family"] = second_world(wh, args.users, args.requests, args.days)
    out["context"] = context_at_scale(args.context_requests)
    (OUT / "evidence.json").write_text(json.dumps(out, indent=2, default=str))
    print(markdown(out))


if __name__ == "__main__":
    main()
