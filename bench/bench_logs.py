"""No-click extraction benchmark: 1 million request rows over a week, in a temp warehouse.

Generates synthetic logs (humans with a few irregular requests a day, 70% of them clicked;
bots with clockwork or burst traffic, 2% clicked; ~200 distinct photos), trains the bot filter
on the generator's labels, warms the photo-quality cache (NSFW on), then times
`extract_no_click` in a fresh subprocess and reads its peak RSS (`ru_maxrss`). Goal: <= 10 s
and <= 2 GiB. Prints a markdown section and writes bench/out/logs.json.

    python bench/bench_logs.py                    # 1M requests, 3 timed runs
    python bench/bench_logs.py --requests 200000 --repeats 1
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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from revision.tables import CLICKS, REQUESTS
from revision.warehouse import Warehouse

DAY0 = datetime(2026, 3, 2, tzinfo=UTC)
OUT = Path(__file__).parent / "out" / "logs.json"


def render_photos(folder: Path, n: int, rng) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        base = rng.integers(30, 230, size=(12, 12, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(base).resize((192, 256), Image.Resampling.BILINEAR))
        img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        if i % 10 == 0:  # one photo in ten is too dark
            img = (img * 0.1).astype(np.uint8)
        path = folder / f"photo{i:04d}.jpg"
        Image.fromarray(img).save(path, quality=85)
        paths.append(str(path))
    return paths


def generate(
    wh: Warehouse, photos: list[str], n: int, days: int, bot_share: float, seed: int
) -> dict:
    """Write logs/requests and logs/clicks (partitioned by day) and a `bench/labels` table."""
    from revision.vision.images import content_hash

    rng = np.random.default_rng(seed)
    hashes = np.array([content_hash(p) for p in photos])
    n_bot = int(n * bot_share)
    n_human = n - n_bot
    humans = max(1, n_human // 15)  # ~15 requests per human per week
    bots = max(1, n_bot // 2000)  # ~2000 per bot per week
    span_ms = days * 86_400_000
    t0 = int(DAY0.timestamp() * 1000)

    # humans: random users, random days, 07:00-23:00 UTC
    h_user = rng.integers(0, humans, n_human)
    h_ts = (
        t0
        + rng.integers(0, days, n_human) * 86_400_000
        + rng.integers(7 * 3_600_000, 23 * 3_600_000, n_human)
    )
    # bots: clockwork (interval +-2%) or bursts (exponential gaps of ~3 s), per bot a run
    b_user, b_ts = [], []
    per_bot = np.full(bots, n_bot // bots)
    per_bot[: n_bot - per_bot.sum()] += 1
    for b, k in enumerate(per_bot):
        start = t0 + int(rng.integers(0, span_ms // 2))
        if b % 2 == 0:
            step = rng.uniform(20_000, 120_000)
            gaps = step * rng.uniform(0.98, 1.02, k)
        else:
            gaps = rng.exponential(3_000, k) + 200
        times = start + np.cumsum(gaps).astype(np.int64)
        b_ts.append(t0 + (times - t0) % span_ms)  # wrap into the week
        b_user.append(np.full(k, b))
    user = np.concatenate(
        [np.char.add("h", h_user.astype(str)), np.char.add("b", np.concatenate(b_user).astype(str))]
    )
    ts = np.concatenate([h_ts, np.concatenate(b_ts)])
    is_bot = np.r_[np.zeros(n_human, bool), np.ones(n_bot, bool)]
    photo = rng.integers(0, len(photos), n)
    order = np.argsort(ts, kind="stable")
    user, ts, is_bot, photo = user[order], ts[order], is_bot[order], photo[order]
    request_id = np.char.add("r", np.arange(n).astype(str))

    clicked = rng.random(n) < np.where(is_bot, 0.02, 0.70)
    delay = (1_000 + rng.exponential(9_000, n)).astype(np.int64)  # some land after 30 s
    ts_type = REQUESTS.schema.field("ts").type
    requests = pa.table(
        {
            "request_id": request_id,
            "user_id": user,
            "ts": pa.array(ts, pa.int64()).cast(ts_type),
            "image": np.array(photos)[photo],
            "image_hash": hashes[photo],
            "relevance": rng.random(n),
            "variant": np.full(n, "baseline"),
        },
        schema=REQUESTS.schema,
    )
    clicks = pa.table(
        {
            "request_id": request_id[clicked],
            "product_id": np.char.add("p", rng.integers(0, 5000, int(clicked.sum())).astype(str)),
            "ts": pa.array(ts[clicked] + delay[clicked], pa.int64()).cast(ts_type),
            "dwell_s": rng.exponential(20, int(clicked.sum())),
        },
        schema=CLICKS.schema,
    )
    for name, table in ((REQUESTS, requests), (CLICKS, clicks)):
        day = pc.strftime(table["ts"], format="%Y-%m-%d")
        for d in pc.unique(day).to_pylist():
            wh.write(name, table.filter(pc.equal(day, d)), {"dt": d})
    labels = pa.table({"user_id": user, "is_bot": is_bot})
    wh.write("bench/labels", labels)
    return {
        "photo_keys": dict(zip(hashes.tolist(), photos, strict=True)),
        "requests": n,
        "clicks": clicks.num_rows,
        "humans": humans,
        "bots": bots,
        "bot_requests": n_bot,
        "photos": len(photos),
        "days": days,
    }


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so
    a child would inherit the generating parent's peak."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(warehouse: str, threads: int | None) -> None:
    """One timed extraction in this (fresh) process; prints JSON on stdout."""
    from revision.logs.no_click import extract_no_click

    base = peak_rss_mib()
    started = time.perf_counter()
    report = extract_no_click(Warehouse(warehouse), threads=threads)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU of the whole process, imports too
    print(
        json.dumps(
            {
                "wall_s": wall,
                "peak_rss_mib": peak_rss_mib(),
                "cpu_s_process": usage.ru_utime + usage.ru_stime,
                "rss_after_imports_mib": base,
                "report": report.as_dict(),
            },
            default=str,
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--bot-share", type=float, default=0.3, help="share of requests by bots")
    ap.add_argument("--photos", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--keep", help="generate into this folder and keep it")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.threads)
        return

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_logs_"))
    try:
        wh = Warehouse(root / "warehouse")
        started = time.perf_counter()
        rng = np.random.default_rng(args.seed)
        photos = render_photos(root / "photos", args.photos, rng)
        world = generate(wh, photos, args.requests, args.days, args.bot_share, args.seed)
        gen_s = time.perf_counter() - started

        from revision.logs.bots import train_bot_filter
        from revision.logs.quality_filter import assess_images

        started = time.perf_counter()
        training = train_bot_filter(wh, "bench/labels")
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        assess_images(wh, world.pop("photo_keys"), nsfw=True)
        cache_s = time.perf_counter() - started

        runs = []
        for _ in range(args.repeats):
            cmd = [sys.executable, __file__, "--child", str(wh.root)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"extraction failed:\n{done.stderr}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    runs.sort(key=lambda r: r["wall_s"])
    walls = [r["wall_s"] for r in runs]
    peaks = [r["peak_rss_mib"] for r in runs]
    median = runs[len(runs) // 2]
    report = median["report"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    result = {
        "world": world,
        "generate_s": round(gen_s, 2),
        "train_bot_filter_s": round(train_s, 2),
        "bot_filter_cv": {"per_user": training.per_user, "per_request": training.per_request},
        "warm_photo_cache_s": round(cache_s, 2),
        "extraction_wall_s": [round(w, 3) for w in walls],
        "extraction_wall_s_median": round(walls[len(walls) // 2], 3),
        "peak_rss_mib": round(max(peaks), 1),
        "rss_after_imports_mib": round(median["rss_after_imports_mib"], 1),
        "stage_s": report["timings"],
        "cpu_s_process": round(median["cpu_s_process"], 2),
        "cpu_count": os.cpu_count(),
        "load_average_1min": load,
        "no_click": report["no_click"],
        "no_click_ratio": round(report["no_click_ratio"], 4),
        "kept": report["kept"],
        "dropped": report["dropped"],
        "bot_users_flagged": report["bot_users"],
        "threads": args.threads,
        "goal": {"wall_s": 10, "peak_rss_mib": 2048},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    ok = result["extraction_wall_s_median"] <= 10 and result["peak_rss_mib"] <= 2048
    print(f"""## No-click extraction ({args.requests:,} requests, {args.days} days)

| figure | value |
|---|---|
| requests / clicks | {world["requests"]:,} / {world["clicks"]:,} |
| users (humans / bots) | {world["humans"]:,} / {world["bots"]:,} |
| extraction wall time (median of {len(walls)}) | {result["extraction_wall_s_median"]:.2f} s |
| extraction peak RSS (process, incl. imports) | {result["peak_rss_mib"]:.0f} MiB |
| RSS after imports | {result["rss_after_imports_mib"]:.0f} MiB |
| CPU time of that process (incl. imports) | {result["cpu_s_process"]:.1f} s |
| stages (s) | {report["timings"]} |
| machine | {os.cpu_count()} CPUs, 1-min load average {load} |
| no-click requests / kept | {report["no_click"]:,} / {report["kept"]:,} |
| dropped | {report["dropped"]} |
| bot filter CV precision / recall (per user) | {training.per_user["precision"]:.3f} / \
{training.per_user["recall"]:.3f} |
| bot filter CV precision / recall (per request) | {training.per_request["precision"]:.3f} / \
{training.per_request["recall"]:.3f} |
| train bot filter / warm photo cache (NSFW on) | {train_s:.1f} s / {cache_s:.1f} s |
| goal (<= 10 s, <= 2 GiB) | {"met" if ok else "NOT met"} |

Wrote {out}.""")


if __name__ == "__main__":
    main()
