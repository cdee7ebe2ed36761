"""Service-state benchmark: decision-cache lookup and insert latency at 10k entries per vector
size, and the cost of a daily-cap check and a rate-limit check, in-process and over Redis.

Redis figures need a server: `--redis-url`, else a throwaway `redis-server` is started when one
is on PATH (loopback, so they are a lower bound for a networked Redis). Prints markdown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import faiss
import numpy as np

from revision.serve.state import (
    DecisionCache,
    LocalCapStore,
    LocalRateLimiter,
    RedisCapStore,
    RedisRateLimiter,
)

DAY = "2025-03-01"
PLAN = "<think>dark photo; cheaper ones exist</think> (2) (6)"


def _ms(samples: list[float]) -> tuple[float, float, float]:
    a = np.asarray(samples) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())


def bench_cache(dim: int, entries: int, lookups: int, rng: np.random.Generator) -> dict:
    vectors = rng.standard_normal((entries, dim)).astype(np.float32)
    cache = DecisionCache("bench", "v1", max_entries=entries)
    put_s = []
    for v in vectors:
        t = time.perf_counter()
        cache.put(v, PLAN)
        put_s.append(time.perf_counter() - t)
    # half near-duplicates of cached queries (hits), half new ones (misses): same scan cost
    picks = vectors[rng.integers(0, entries, lookups // 2)]
    near = picks + 0.2 * rng.standard_normal(picks.shape).astype(np.float32) / np.sqrt(dim)
    queries = np.concatenate([near, rng.standard_normal((lookups // 2, dim)).astype(np.float32)])
    cache.get(queries[0])  # warm up
    get_s, get_cpu_s = [], []
    for q in queries:
        t, c = time.perf_counter(), time.thread_time()
        cache.get(q)
        get_s.append(time.perf_counter() - t)
        get_cpu_s.append(time.thread_time() - c)
    # a full cache evicts a tenth at once: the worst insert pays one shift of the index
    full_put_s = []
    for v in rng.standard_normal((entries // 5, dim)).astype(np.float32):
        t = time.perf_counter()
        cache.put(v, PLAN)
        full_put_s.append(time.perf_counter() - t)
    return {
        "dim": dim,
        "get": _ms(get_s),
        "get_cpu": _ms(get_cpu_s),
        "put": _ms(put_s),
        "put_full": _ms(full_put_s),
    }


def _per_op_us(fn: Callable[[int], object], n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t) / n * 1e6


@contextmanager
def redis_server(url: str | None) -> Iterator[str | None]:
    """The given URL, else a throwaway server on a free port, else None."""
    server = shutil.which("redis-server")
    if url or server is None:
        yield url
        return
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", folder]
        proc = subprocess.Popen(
            [server, *args, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            for _ in range(200):
                try:
                    redis.Redis.from_url(url).ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=2_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 256, 512, 1280])
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, faiss.omp_get_max_threads()],
        help="FAISS OpenMP threads to measure lookups with",
    )
    parser.add_argument("--ops", type=int, default=20_000, help="cap/rate checks per store")
    parser.add_argument("--redis-url", default=os.environ.get("REVISION_REDIS_URL"))
    args = parser.parse_args()
    rng = np.random.default_rng(7)

    print("## Service state: decision cache, daily caps, rate limits\n")
    print(f"load average before: {os.getloadavg()[0]:.2f}\n")
    print(
        f"`bench/bench_serve_state.py`: exact FAISS inner-product index, {args.entries:,} "
        f"entries, {args.lookups:,} lookups (half near-duplicates). Milliseconds; wall time "
        "except *CPU*, the calling thread's CPU time, which a busy machine does not inflate "
        "(it leaves out OpenMP worker threads).\n"
    )
    print(
        "| dim | OpenMP threads | get p50 | get p99 | get max | get CPU p50 / p99 | put p50 "
        "| put p99 | put when full: p99 / max |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    # One query at a time gains nothing from OpenMP; a thread team that spins on busy cores is
    # what makes a lookup slow. A service worker per core would run with OMP_NUM_THREADS=1.
    for dim in args.dims:
        for threads in dict.fromkeys(args.threads):
            faiss.omp_set_num_threads(threads)
            r = bench_cache(dim, args.entries, args.lookups, rng)
            g, c, p, f = r["get"], r["get_cpu"], r["put"], r["put_full"]
            print(
                f"| {dim} | {threads} | {g[0]:.3f} | {g[1]:.3f} | {g[2]:.3f} "
                f"| {c[0]:.3f} / {c[1]:.3f} | {p[0]:.3f} | {p[1]:.3f} | {f[1]:.3f} / {f[2]:.3f} |"
            )

    local_cap, local_rate = LocalCapStore(), LocalRateLimiter(10.0, 20)
    rows = [
        ("local cap", _per_op_us(lambda i: local_cap.try_acquire(f"u{i}", DAY, 3), args.ops)),
        ("local rate", _per_op_us(lambda i: local_rate.allow(f"user:{i % 1000}"), args.ops)),
    ]
    with redis_server(args.redis_url) as url:
        if url is not None:
            import redis

            client = redis.Redis.from_url(url)
            cap, rate = RedisCapStore(client), RedisRateLimiter(client, 10.0, 20)
            n = max(1, args.ops // 4)
            rows.append(("Redis cap", _per_op_us(lambda i: cap.try_acquire(f"u{i}", DAY, 3), n)))
            rows.append(("Redis rate", _per_op_us(lambda i: rate.allow(f"user:{i % 1000}"), n)))
    print("\n| check | µs per call (one client, sequential) |")
    print("|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")
    if args.redis_url is None and shutil.which("redis-server") is None:
        print("\nRedis rows skipped: no --redis-url and no redis-server on PATH.")


if __name__ == "__main__":
    main()
