"""Service state: daily caps and rate limits (in-process and a real redis-server), the decision
cache and its threshold sweep. Clocks are injected; nothing here depends on timing."""

from __future__ import annotations

import math
import multiprocessing as mp
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from revision.errors import ConfigError
from revision.serve.state import (
    CapStore,
    DecisionCache,
    LocalCapStore,
    LocalRateLimiter,
    RateLimiter,
    RedisCapStore,
    RedisRateLimiter,
    make_state,
    sweep,
    user_day,
)
from revision.tools.grammar import Completion

DAY = "2025-03-01"

# -- a real redis-server ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed; install it with: apt-get install redis-server")
    try:
        import redis
    except ImportError:
        pytest.fail("the redis client is not installed; install it with: pip install redis==8.1.0")
    folder = tmp_path_factory.mktemp("redis")
    port = _free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):  # up to ~10 s for the server to accept connections
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited with code {proc.returncode} on port {port}")
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"redis-server did not answer on port {port}")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(params=["local", "redis"])
def cap_store(request) -> CapStore:
    if request.param == "local":
        return LocalCapStore()
    return RedisCapStore(request.getfixturevalue("redis_client"))


@pytest.fixture(params=["local", "redis"])
def limiter(request) -> RateLimiter:
    """2 requests/s, bursts of 3."""
    if request.param == "local":
        return LocalRateLimiter(rate=2.0, burst=3)
    return RedisRateLimiter(request.getfixturevalue("redis_client"), rate=2.0, burst=3)


# -- daily cap --------------------------------------------------------------------------------


def test_user_day_is_the_local_calendar_day():
    late = datetime(2025, 3, 1, 23, 30, tzinfo=UTC)
    assert user_day(late) == "2025-03-01"
    assert user_day(late, utc_offset_minutes=60) == "2025-03-02"
    assert user_day(datetime(2025, 3, 1, 2, 0, tzinfo=UTC), -300) == "2025-02-28"
    with pytest.raises(ValueError, match="naive"):
        user_day(datetime(2025, 3, 1, 12, 0))
    with pytest.raises(ValueError, match="outside"):
        user_day(late, utc_offset_minutes=15 * 60)


def test_cap_contract(cap_store):
    day = "2025-03-01"
    assert [cap_store.try_acquire("u1", day, 3) for _ in range(5)] == [
        (True, 1), (True, 2), (True, 3), (False, 3), (False, 3)
    ]  # fmt: skip
    assert cap_store.count("u1", day) == 3
    assert cap_store.try_acquire("u2", day, 3) == (True, 1)  # users are independent
    assert cap_store.count("nobody", day) == 0
    assert cap_store.try_acquire("u3", day, 0) == (False, 0)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        cap_store.try_acquire("u1", "1 March", 3)


def test_cap_resets_on_the_next_day(cap_store):
    for _ in range(3):
        cap_store.try_acquire("u1", "2025-03-01", 2)
    assert cap_store.try_acquire("u1", "2025-03-01", 2) == (False, 2)
    assert cap_store.try_acquire("u1", "2025-03-02", 2) == (True, 1)
    assert cap_store.count("u1", "2025-03-01") == 2  # the old day is not touched


def test_local_cap_store_forgets_old_days():
    store = LocalCapStore(keep_days=2)
    for day in ("2025-03-01", "2025-03-02", "2025-03-03"):
        store.try_acquire("u1", day, 5)
    assert store.count("u1", "2025-03-01") == 0
    assert store.count("u1", "2025-03-02") == 1
    assert store.count("u1", "2025-03-03") == 1


def test_redis_cap_keys_expire_in_about_two_days(redis_client):
    store = RedisCapStore(redis_client)
    store.try_acquire("u1", "2025-03-01", 5)
    ttl = redis_client.ttl("revision:cap:2025-03-01:u1")
    assert 86400 < ttl <= 2 * 86400


def test_local_cap_never_exceeded_by_threads():
    # every user is hammered by all threads at about the same moment; a tiny switch interval
    # makes the threads interleave inside try_acquire, where an unlocked version over-grants
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    store, users, cap, granted = LocalCapStore(), 3000, 3, []
    start = threading.Barrier(4)

    def hammer():
        start.wait()
        granted.append(
            sum(store.try_acquire(f"u{u}", DAY, cap)[0] for u in range(users) for _ in range(4))
        )

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert sum(granted) == users * cap
    assert all(store.count(f"u{u}", DAY) == cap for u in range(users))


def _hammer_redis(url: str, users: int, cap: int, start, out) -> None:
    """One worker process with its own connection: each user, in the same order as the other
    worker, one more time than the cap allows."""
    import redis

    store = RedisCapStore(redis.Redis.from_url(url))
    start.wait()
    out.put(
        sum(store.try_acquire(f"u{u}", DAY, cap)[0] for u in range(users) for _ in range(cap + 1))
    )


def test_redis_cap_never_exceeded_by_two_processes(redis_url, redis_client):
    # Both workers race on every user's last slot; a GET-then-INCR version over-grants
    # hundreds of times here. One user alone would race only once.
    ctx = mp.get_context("spawn")  # separate interpreters, like two service workers
    start, out, users, cap = ctx.Barrier(2), ctx.Queue(), 2000, 3
    procs = [
        ctx.Process(target=_hammer_redis, args=(redis_url, users, cap, start, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    granted = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(granted) == users * cap
    store = RedisCapStore(redis_client)
    assert all(store.count(f"u{u}", DAY) == cap for u in range(users))


# -- rate limiter -----------------------------------------------------------------------------


def test_rate_limiter_bursts_then_refills(limiter):
    t0 = 1_700_000_000.0
    assert [limiter.allow("user:1", now=t0)[0] for _ in range(3)] == [True, True, True]
    assert limiter.allow("user:1", now=t0) == (False, pytest.approx(0.5))
    assert limiter.allow("user:2", now=t0)[0]  # keys are independent
    # half a second refills one token at 2/s, and only one
    assert limiter.allow("user:1", now=t0 + 0.5) == (True, 0.0)
    assert limiter.allow("user:1", now=t0 + 0.5) == (False, pytest.approx(0.5))
    # a quarter of a token back: three quarters still to wait
    assert limiter.allow("user:1", now=t0 + 0.625) == (False, pytest.approx(0.375))
    # a long pause refills to the burst, not beyond
    later = t0 + 100
    assert [limiter.allow("user:1", now=later)[0] for _ in range(4)] == [True, True, True, False]


def test_rate_limiter_uses_its_clock():
    now = [0.0]
    limiter = LocalRateLimiter(rate=1.0, burst=1, clock=lambda: now[0])
    assert limiter.allow("k")[0]
    assert limiter.allow("k") == (False, 1.0)
    now[0] = 1.0
    assert limiter.allow("k")[0]


def test_local_rate_limiter_drops_refilled_buckets():
    limiter = LocalRateLimiter(rate=1.0, burst=2)
    for i in range(100):
        limiter.allow(f"ip:{i}", now=0.0)
    assert len(limiter) == 100
    limiter.allow("ip:new", now=10.0)  # everyone else has refilled by now
    assert len(limiter) == 1


def test_redis_rate_limiter_buckets_expire(redis_client):
    limiter = RedisRateLimiter(redis_client, rate=2.0, burst=3)
    limiter.allow("user:1", now=1000.0)
    # one token to refill at 2/s is 0.5 s, plus a second of slack
    assert 0 < redis_client.pttl("revision:rate:user:1") <= 1500


def test_rate_limiter_rejects_bad_settings():
    with pytest.raises(ValueError, match="rate"):
        LocalRateLimiter(rate=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        LocalRateLimiter(rate=1, burst=0)


def test_make_state(redis_url, redis_client):
    local = make_state(None)
    assert isinstance(local.caps, LocalCapStore)
    assert isinstance(local.user_limiter, LocalRateLimiter)
    shared = make_state(redis_url, user_rate=1.0, user_burst=1)
    assert isinstance(shared.caps, RedisCapStore)
    assert shared.user_limiter.allow("42", now=5.0)[0]
    assert not shared.user_limiter.allow("42", now=5.0)[0]
    assert shared.ip_limiter.allow("42", now=5.0)[0]  # a separate bucket space
    with pytest.raises(ConfigError, match="cannot reach Redis"):
        make_state(f"redis://127.0.0.1:{_free_port()}/0")
    with pytest.raises(ConfigError, match="cannot reach Redis"):
        make_state("localhost:6379")


# -- decision cache ---------------------------------------------------------------------------


def _unit(degrees: float, dim: int = 2) -> np.ndarray:
    """A vector at `degrees` from the first axis: cosine to it is cos(degrees)."""
    v = np.zeros(dim, dtype=np.float32)
    v[0], v[1] = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return v


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


PLAN = "<think>dark photo; cheaper ones exist</think> (2) (6)"


def test_cache_hits_above_threshold_and_misses_below():
    cache = DecisionCache("tools-a", "v1", threshold=0.85)
    assert cache.get(_unit(0)) is None
    cache.put(3.0 * _unit(0), PLAN)  # length does not matter, direction does
    hit = cache.get(_unit(30))  # cos 30° = 0.866
    assert hit is not None
    assert hit.plan == PLAN and hit.tools == (2, 6) and hit.hits == 1
    assert cache.get(_unit(33)) is None  # cos 33° = 0.839
    assert cache.get(_unit(0)).hits == 2
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.size) == (2, 2, 1)
    assert stats.hit_rate == 0.5


def test_cache_returns_the_nearest_entry():
    cache = DecisionCache("tools-a", "v1", threshold=0.5)
    cache.put(_unit(0), "<think>a</think> (1)")
    cache.put(_unit(40), "<think>b</think> (2)")
    assert cache.get(_unit(25)).tools == (2,)
    assert cache.get(_unit(15)).tools == (1,)


def test_cache_threshold_is_configurable():
    strict = DecisionCache("tools-a", "v1", threshold=0.95)
    strict.put(_unit(0), PLAN)
    assert strict.get(_unit(30)) is None
    assert strict.get(_unit(15)) is not None  # cos 15° = 0.966


def test_cache_entries_expire():
    clock = FakeClock()
    cache = DecisionCache("tools-a", "v1", ttl_s=60, clock=clock)
    cache.put(_unit(0), "<think>old</think> (1)")
    clock.now += 60
    assert cache.get(_unit(0)).tools == (1,)  # exactly the TTL old: still fresh
    clock.now += 1
    assert cache.get(_unit(0)) is None
    # a fresh, slightly less similar entry is found past the expired exact one
    cache.put(_unit(10), "<think>new</think> (3)")
    assert cache.get(_unit(0)).tools == (3,)


def test_cache_is_emptied_for_a_new_planner():
    cache = DecisionCache("tools-a", "v1")
    cache.put(_unit(0), PLAN)
    assert cache.reset("tools-a", "v1") is False  # same planner: keep
    assert cache.get(_unit(0)) is not None
    assert cache.reset("tools-a", "v2") is True
    assert cache.key == ("tools-a", "v2")
    assert len(cache) == 0 and cache.get(_unit(0)) is None
    # a decision computed by the old planner while the reset happened is dropped
    assert cache.put(_unit(0), PLAN, key=("tools-a", "v1")) is None
    assert cache.get(_unit(0)) is None
    assert cache.put(_unit(0), PLAN, key=("tools-a", "v2")) is not None
    assert cache.reset("tools-b", "v2") is True  # a new tool list also invalidates
    assert cache.get(_unit(0)) is None


def test_cache_size_is_bounded_and_the_oldest_go_first():
    dim = 64
    cache = DecisionCache("tools-a", "v1", max_entries=10)
    for i in range(25):
        v = np.zeros(dim, dtype=np.float32)
        v[i % dim] = 1.0
        cache.put(v, f"<think>{i}</think> ({i + 1})")
        assert len(cache) <= 10
    newest, oldest = np.zeros(dim, np.float32), np.zeros(dim, np.float32)
    newest[24], oldest[0] = 1.0, 1.0
    assert cache.get(newest).tools == (25,)
    assert cache.get(oldest) is None


def test_cache_rejects_bad_input():
    cache = DecisionCache("tools-a", "v1")
    cache.put(np.ones(8), PLAN)
    with pytest.raises(ValueError, match="dim"):
        cache.get(np.ones(4))
    with pytest.raises(ValueError, match="zero"):
        cache.put(np.zeros(8), PLAN)
    with pytest.raises(ValueError, match="threshold"):
        DecisionCache("tools-a", "v1", threshold=1.5)
    from revision.tools.grammar import PlanError

    with pytest.raises(PlanError):
        cache.put(np.ones(8), "(2) (6) because cheaper")


def test_cache_is_thread_safe():
    cache = DecisionCache("tools-a", "v1", max_entries=50)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, 16)).astype(np.float32)
    errors = []

    def work(offset: int):
        try:
            for v in vectors[offset::4]:
                if cache.get(v) is None:
                    cache.put(v, PLAN)
        except Exception as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(cache) <= 50
    assert cache.stats.hits + cache.stats.misses == 400


# -- sweep ------------------------------------------------------------------------------------


def test_sweep_counts_false_hits_on_a_worked_example():
    # angle (degrees) of each query and the tools a fresh planner call would give
    stream = [(0, (2,)), (25, (2,)), (90, (5,)), (110, (6,)), (0, (2,))]
    vectors = np.stack([_unit(a) for a, _ in stream])
    # the thinking differs between calls; only the tools make a decision differ
    plans = [Completion(f"call {i}", tools) for i, (_, tools) in enumerate(stream)]
    plans[1] = "<think>another wording</think> (2)"  # plan text is accepted too
    loose, strict = sweep(vectors, plans, [0.85, 0.95])
    # 0.85: 25° hits 0° (cos .906, same tools); 110° hits 90° (cos .940, (5) != (6)): false;
    # the repeat of 0° hits. 3 hits of 5, 1 of them false.
    assert (loose.hits, loose.false_hits) == (3, 1)
    assert loose.hit_rate == pytest.approx(3 / 5)
    assert loose.false_hit_rate == pytest.approx(1 / 3)
    # 0.95: only the exact repeat hits
    assert (strict.hits, strict.false_hits) == (1, 0)
    assert strict.hit_rate == pytest.approx(1 / 5) and strict.false_hit_rate == 0.0
    with pytest.raises(ValueError, match="plans"):
        sweep(vectors, plans[:2], [0.85])
