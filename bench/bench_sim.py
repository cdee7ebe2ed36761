"""Simulator benchmark: photo-pool build time, simulated requests per second, no-click ratios.

Measures, on the warehouse's full catalog and index:
- the default world's photo pool built from scratch (in a scratch warehouse, so no cached
  embedding helps), and loaded again once built;
- simulated requests per second with the pool built, for the baseline pipeline (responses
  memoized per photo) and for a pipeline with a do-nothing hook (every request searched);
- the no-click ratio (no click within 30 s) overall and per hidden intent under the default world.
Run by `make bench` after `make demo` has built the default warehouse.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from revision.search._base import Stage
from revision.search.engine import SearchEngine
from revision.search.pipeline import SearchPipeline
from revision.sim.intents import product_rows
from revision.sim.photos import build_pool
from revision.sim.traffic import simulate
from revision.sim.world import load_world
from revision.warehouse import Warehouse


def run(
    warehouse: Warehouse,
    requests: int,
    users: int,
    days: int,
    seed: int,
    hooked_requests: int,
    world_path: str | None = None,
) -> dict:
    world = load_world(world_path)
    started = time.perf_counter()
    engine = SearchEngine.open(warehouse)
    out: dict = {
        "world": world.name,
        "products": len(engine.index),
        "engine_open_s": round(time.perf_counter() - started, 2),
    }
    rows = product_rows(engine.products.loc[engine.index.ids_])

    scratch = Path(tempfile.mkdtemp(prefix="bench_sim_"))
    try:
        started, cpu = time.perf_counter(), time.process_time()
        fresh = build_pool(world, Warehouse(scratch), rows, engine.encoder)
        out["pool_fresh_s"] = round(time.perf_counter() - started, 2)
        out["pool_fresh_cpu_s"] = round(time.process_time() - cpu, 2)  # all threads
        out["pool_photos"] = len(fresh)
        out["pool_products"] = len(fresh.products)
        out["pool_ms_per_photo"] = round(1000 * out["pool_fresh_s"] / max(1, len(fresh)), 1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    build_pool(world, warehouse, rows, engine.encoder)  # the real one (resumes if needed)
    started = time.perf_counter()
    pool = build_pool(world, warehouse, rows, engine.encoder)
    out["pool_load_s"] = round(time.perf_counter() - started, 2)

    pipeline = SearchPipeline(engine)
    started = time.perf_counter()
    summary = simulate(
        world,
        pipeline,
        warehouse,
        users=users,
        days=days,
        requests=requests,
        seed=seed,
        pool=pool,
        variant="bench",
    )
    out["baseline_wall_s"] = round(time.perf_counter() - started, 2)
    out["baseline"] = summary
    hooked = pipeline.with_hooks({Stage.DISPLAY: [lambda ctx: None]})
    started = time.perf_counter()
    slow = simulate(
        world,
        hooked,
        warehouse,
        users=users,
        days=1,
        requests=hooked_requests,
        seed=seed,
        pool=pool,
        variant="bench_hooked",
    )
    out["hooked_wall_s"] = round(time.perf_counter() - started, 2)
    out["hooked"] = {k: slow[k] for k in ("requests", "requests_per_s", "path", "no_click_ratio")}
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown(r: dict) -> str:
    b = r["baseline"]
    lines = [
        f"Catalog: {r['products']} H&M products (full index); world `{r['world']}`. Query "
        "photos are derived from catalog photos (there are no consumer photos).",
        "",
        f"- Photo pool from scratch: {r['pool_photos']} photos of {r['pool_products']} products "
        f"in {r['pool_fresh_s']} s wall, {r['pool_fresh_cpu_s']} s CPU "
        f"({r['pool_ms_per_photo']} ms a photo: generate + encode); "
        f"loading it once built: {r['pool_load_s']} s.",
        f"- Baseline pipeline, pool built: {b['requests']} requests over {b['days']} day(s) in "
        f"{b['simulate_s']} s = **{b['requests_per_s']} requests/s** ({b['path']} responses; "
        f"{r['baseline_wall_s']} s wall including catalog facts and writing the logs).",
        f"- Pipeline with a hook (every request searched): {r['hooked']['requests']} requests "
        f"at {r['hooked']['requests_per_s']} requests/s.",
        f"- Traffic: {b['users']} active users, bot share {_pct(b['bot_share'])}, low-quality "
        f"photos {_pct(b['low_quality_share'])}, CTR {_pct(b['ctr'])}, orders {b['orders']}.",
        f"- **No-click ratio** (no click within 30 s): {_pct(b['no_click_ratio'])} of all "
        f"requests, {_pct(b['human_no_click_ratio'])} of human ones.",
        "",
        "| hidden intent | share of human requests | no-click ratio | served by the response |",
        "|---|---|---|---|",
    ]
    for name, row in b["per_intent"].items():
        lines.append(
            f"| {name} | {_pct(row['share'])} | {_pct(row['no_click_ratio'])} | "
            f"{_pct(row['satisfied_rate'])} |"
        )
    lines += ["", "| photo kind | requests | no-click ratio |", "|---|---|---|"]
    for name, row in b["per_photo_kind"].items():
        lines.append(f"| {name} | {row['requests']} | {_pct(row['no_click_ratio'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warehouse", default=None)
    parser.add_argument("--world", default=None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hooked-requests", type=int, default=3_000)
    parser.add_argument("--out", default="bench/out/sim.json")
    args = parser.parse_args()
    result = run(
        Warehouse(args.warehouse),
        args.requests,
        args.users,
        args.days,
        args.seed,
        args.hooked_requests,
        args.world,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("## Simulator\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
