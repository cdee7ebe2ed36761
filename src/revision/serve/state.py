"""The service's shared state: per-user daily caps, rate limits and the decision cache.

Caps and rate limits must hold across worker processes, so each has a Redis implementation
whose check-and-update is one Lua script (atomic on the server) next to an in-process one for a
single worker and for tests. The decision cache (paper §IV-A(b), the Image Query Caching Module)
stays in-process: a miss costs one planner call, a network hop would cost every lookup.

    state = make_state("redis://localhost:6379/0")   # or None: in-process
    ok, shown = state.caps.try_acquire("u42", user_day(now, offset), cap=3)
    cache = DecisionCache(planner.toollist_digest, planner.version)
    hit = cache.get(image_vector)                    # CachedDecision | None
"""

from __future__ import annotations

import math
import re
import threading
import time
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import faiss
import numpy as np

from revision.errors import ConfigError, MissingExtraError
from revision.tools.grammar import Completion, parse_completion

Clock = Callable[[], float]
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_MAX_OFFSET_MIN = 14 * 60  # UTC-12 … UTC+14 are the offsets in use; a bit of slack both ways


def user_day(ts: datetime, utc_offset_minutes: int = 0) -> str:
    """The user's local calendar day ("YYYY-MM-DD"): a cap resets at the user's midnight.

    >>> user_day(datetime(2025, 3, 1, 23, 30, tzinfo=UTC), utc_offset_minutes=60)
    '2025-03-02'
    >>> user_day(datetime(2025, 3, 1, 2, 0, tzinfo=UTC), utc_offset_minutes=-300)
    '2025-02-28'
    """
    if ts.tzinfo is None:
        raise ValueError("ts is naive; pass an aware time, e.g. datetime.now(UTC)")
    if not -_MAX_OFFSET_MIN <= utc_offset_minutes <= _MAX_OFFSET_MIN:
        raise ValueError(f"utc_offset_minutes={utc_offset_minutes} is outside ±{_MAX_OFFSET_MIN}")
    return (ts.astimezone(UTC) + timedelta(minutes=utc_offset_minutes)).date().isoformat()


def _check_cap_args(day: str, cap: int) -> None:
    if not _DAY.fullmatch(day):
        raise ValueError(f"day must be 'YYYY-MM-DD' (see user_day), got {day!r}")
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")


# -- per-user daily cap -----------------------------------------------------------------------


class CapStore(ABC):
    """How many triggered responses a user has seen on a day; the check and the increment are
    one step so that concurrent requests can never let a user past the cap."""

    @abstractmethod
    def try_acquire(self, user_id: str, day: str, cap: int) -> tuple[bool, int]:
        """(True, new count) if the user's count for `day` was below `cap` (and is now one
        higher), else (False, count)."""

    @abstractmethod
    def count(self, user_id: str, day: str) -> int:
        """The user's count for `day` (0 if none)."""


class LocalCapStore(CapStore):
    """In-process counts for one worker. Only the `keep_days` most recent days are kept: with
    users in every time zone about three local days are live at once."""

    def __init__(self, keep_days: int = 3):
        if keep_days < 1:
            raise ValueError(f"keep_days must be >= 1, got {keep_days}")
        self.keep_days = keep_days
        self._days: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def try_acquire(self, user_id: str, day: str, cap: int) -> tuple[bool, int]:
        _check_cap_args(day, cap)
        with self._lock:
            counts = self._days.get(day)
            if counts is None:
                counts = self._days[day] = {}
                # ISO dates sort as strings; a request for a day older than all kept ones is
                # answered from a fresh count and dropped again at once
                for old in sorted(self._days)[: -self.keep_days]:
                    del self._days[old]
            n = counts.get(user_id, 0)
            if n >= cap:
                return False, n
            counts[user_id] = n + 1
            return True, n + 1

    def count(self, user_id: str, day: str) -> int:
        with self._lock:
            return self._days.get(day, {}).get(user_id, 0)


# KEYS[1] the counter; ARGV: cap, expiry in seconds. Returns {granted 0/1, count}.
_CAP_LUA = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then
  return {0, n}
end
n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return {1, n}
"""


class RedisCapStore(CapStore):
    """Counts shared by every worker, at `{prefix}{day}:{user}`. Keys expire after `ttl_s`
    (two days: a user's local day lasts 24 h, plus slack for changing time zone)."""

    def __init__(self, client: Any, *, prefix: str = "revision:cap:", ttl_s: int = 2 * 86400):
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._script = client.register_script(_CAP_LUA)  # EVALSHA, EVAL again on NOSCRIPT

    def _key(self, user_id: str, day: str) -> str:
        return f"{self.prefix}{day}:{user_id}"

    def try_acquire(self, user_id: str, day: str, cap: int) -> tuple[bool, int]:
        _check_cap_args(day, cap)
        granted, n = self._script(keys=[self._key(user_id, day)], args=[cap, self.ttl_s])
        return bool(granted), int(n)

    def count(self, user_id: str, day: str) -> int:
        return int(self.client.get(self._key(user_id, day)) or 0)


# -- rate limiter -----------------------------------------------------------------------------


class RateLimiter(ABC):
    """A token bucket per key ("user:42", "ip:10.0.0.1"): `burst` requests at once, then `rate`
    per second. `now` (seconds) may be passed to drive the clock, e.g. in tests."""

    def __init__(self, rate: float, burst: int, clock: Clock):
        if not rate > 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1 (one request must fit), got {burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self.clock = clock

    @abstractmethod
    def allow(self, key: str, now: float | None = None) -> tuple[bool, float]:
        """(True, 0.0) and one token taken, or (False, seconds until a token is back)."""


class LocalRateLimiter(RateLimiter):
    """In-process buckets. Buckets that have refilled are dropped (they equal a new one), so
    memory follows the keys active in the last `burst / rate` seconds."""

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic):
        super().__init__(rate, burst, clock)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> tokens, ts
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> tuple[bool, float]:
        now = self.clock() if now is None else now
        with self._lock:
            tokens, ts = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - ts) * self.rate)
            ts = max(ts, now)
            allowed = tokens >= 1
            if allowed:
                tokens -= 1
            self._buckets[key] = (tokens, ts)  # most recently used last
            # least recently used first: if even it has not refilled, every key was used in
            # the last burst / rate seconds and none can go
            while self._buckets:
                first, (t0, ts0) = next(iter(self._buckets.items()))
                if first == key or t0 + (now - ts0) * self.rate < self.burst:
                    break
                del self._buckets[first]
        return allowed, 0.0 if allowed else (1 - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


# KEYS[1] the bucket; ARGV: rate, burst, now. Returns {allowed 0/1, retry_after as a string}
# (Redis would truncate a Lua number to an integer).
_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens, ts = burst, now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local allowed, retry = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, tostring(retry)}
"""


class RedisRateLimiter(RateLimiter):
    """Buckets shared by every worker, at `{prefix}{key}`, expiring once refilled. The default
    clock is wall time, the clock that worker processes (and hosts) share."""

    def __init__(
        self,
        client: Any,
        rate: float,
        burst: int,
        *,
        prefix: str = "revision:rate:",
        clock: Clock = time.time,
    ):
        super().__init__(rate, burst, clock)
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(_BUCKET_LUA)

    def allow(self, key: str, now: float | None = None) -> tuple[bool, float]:
        now = self.clock() if now is None else now
        allowed, retry = self._script(
            keys=[f"{self.prefix}{key}"], args=[self.rate, self.burst, repr(float(now))]
        )
        return bool(allowed), float(retry)


# -- factory ----------------------------------------------------------------------------------


@dataclass
class ServeState:
    """The cross-request state of the service. Users and IPs have separate buckets: one IP
    (a NAT, an office) carries many users, so it gets a larger budget."""

    caps: CapStore
    user_limiter: RateLimiter
    ip_limiter: RateLimiter


def make_state(
    redis_url: str | None,
    *,
    user_rate: float = 1.0,
    user_burst: int = 5,
    ip_rate: float = 20.0,
    ip_burst: int = 100,
) -> ServeState:
    """In-process state for `redis_url=None` (one worker), else state in Redis (any number of
    workers). Redis is pinged here so that a wrong URL fails at start-up, not on a request."""
    if redis_url is None:
        return ServeState(
            LocalCapStore(),
            LocalRateLimiter(user_rate, user_burst),
            LocalRateLimiter(ip_rate, ip_burst),
        )
    try:
        import redis
    except ImportError:
        raise MissingExtraError("redis", "serve") from None
    try:
        client = redis.Redis.from_url(redis_url)
        client.ping()
    except (ValueError, redis.RedisError) as exc:  # ValueError: not a redis:// URL
        raise ConfigError(f"cannot reach Redis for the service state: {exc}") from exc
    return ServeState(
        RedisCapStore(client),
        RedisRateLimiter(client, user_rate, user_burst, prefix="revision:rate:user:"),
        RedisRateLimiter(client, ip_rate, ip_burst, prefix="revision:rate:ip:"),
    )


# -- decision cache ---------------------------------------------------------------------------


@dataclass
class CachedDecision:
    """A planner decision kept for near-duplicate queries."""

    plan: str  # the planner's completion, e.g. "<think>…</think> (2) (6)"
    tools: tuple[int, ...]
    created: float  # on the cache's clock
    hits: int = 0


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    size: int

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


def _as_completion(decision: Completion | str) -> Completion:
    # strings are read with the service's own contract, so a malformed plan is never cached
    return decision if isinstance(decision, Completion) else parse_completion(decision)


class DecisionCache:
    """Near-duplicate image queries reuse a cached planner decision (paper: similarity > 0.85).

    An exact inner-product FAISS index over L2-normalised vectors, in insertion order, so the
    oldest entries are a prefix: expired ones are skipped with an id range and evicted a tenth
    at a time (one O(n) shift per tenth, not per insert). The cache belongs to one
    (tool-list digest, planner version): decisions of another planner are never served.
    """

    def __init__(
        self,
        toollist_digest: str,
        planner_version: str,
        *,
        threshold: float = 0.85,
        ttl_s: float = 86400.0,
        max_entries: int = 10_000,
        clock: Clock = time.monotonic,
    ):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in (0, 1], got {threshold}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0 (math.inf: never expire), got {ttl_s}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.threshold = threshold
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._lock = threading.Lock()
        self._hits = self._misses = 0
        self._empty((toollist_digest, planner_version))

    def _empty(self, key: tuple[str, str]) -> None:
        self._key = key
        self._index: faiss.IndexFlatIP | None = None  # created on the first put: any dim
        self._entries: list[CachedDecision] = []
        self._created: list[float] = []  # non-decreasing, for bisect

    @property
    def key(self) -> tuple[str, str]:
        """(toollist_digest, planner_version) of the decisions held."""
        return self._key

    def reset(self, toollist_digest: str, planner_version: str) -> bool:
        """Adopt a (possibly new) planner; empties the cache if the key changed. True if it
        did."""
        with self._lock:
            if (toollist_digest, planner_version) == self._key:
                return False
            self._empty((toollist_digest, planner_version))
            return True

    def clear(self) -> None:
        with self._lock:
            self._empty(self._key)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries))

    def get(self, vector: np.ndarray) -> CachedDecision | None:
        """A copy of the nearest fresh decision with similarity >= threshold, or None."""
        q = _normalised(vector)
        with self._lock:
            found = self._nearest(q)
            if found is None:
                self._misses += 1
                return None
            found.hits += 1
            self._hits += 1
            return replace(found)

    def _nearest(self, q: np.ndarray) -> CachedDecision | None:
        if self._index is None or not self._entries:
            return None
        self._check_dim(q)
        n = len(self._entries)
        first = bisect_left(self._created, self.clock() - self.ttl_s)  # older ones expired
        if first >= n:
            return None
        params = None
        if first > 0:
            params = faiss.SearchParameters(sel=faiss.IDSelectorRange(first, n))
        sims, ids = self._index.search(q, 1, params=params)
        if ids[0, 0] < 0 or sims[0, 0] < self.threshold:
            return None
        return self._entries[int(ids[0, 0])]

    def put(
        self,
        vector: np.ndarray,
        decision: Completion | str,
        *,
        key: tuple[str, str] | None = None,
    ) -> CachedDecision | None:
        """Cache a planner's decision for this query vector. Pass the `key` of the planner that
        made it: if the cache has since moved to another planner, the decision is dropped
        (None) instead of being served under the new one."""
        q = _normalised(vector)
        completion = _as_completion(decision)
        with self._lock:
            if key is not None and tuple(key) != self._key:
                return None
            if self._index is None:
                self._index = faiss.IndexFlatIP(q.shape[1])
            self._check_dim(q)
            now = self.clock()
            self._evict(now)
            entry = CachedDecision(str(completion), tuple(completion.tools), now)
            self._index.add(q)
            self._entries.append(entry)
            self._created.append(now)
            return replace(entry)

    def _evict(self, now: float) -> None:
        """Drop the oldest entries, a tenth of the capacity at a time, when full or when that
        many have expired."""
        n = len(self._entries)
        chunk = max(1, self.max_entries // 10)
        expired = bisect_left(self._created, now - self.ttl_s)
        drop = expired if expired >= chunk else 0
        if n >= self.max_entries:
            drop = max(drop, n - self.max_entries + chunk)
        if drop:
            removed = self._index.remove_ids(faiss.IDSelectorRange(0, drop))
            assert removed == drop, (removed, drop)  # an index/entries mismatch is a bug here
            del self._entries[:drop]
            del self._created[:drop]

    def _check_dim(self, q: np.ndarray) -> None:
        if q.shape[1] != self._index.d:
            raise ValueError(f"vector has dim {q.shape[1]}, the cache holds dim {self._index.d}")


def _normalised(vector: np.ndarray) -> np.ndarray:
    q = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    norm = float(np.linalg.norm(q))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("query vector is zero or not finite; it has no direction to compare")
    return np.ascontiguousarray(q / norm)


# -- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepRow:
    """One threshold of `sweep`. A false hit serves a cached decision whose tools differ from
    what the planner would have said (the paper's cache "accuracy" is 1 - false_hit_rate)."""

    threshold: float
    queries: int
    hits: int
    false_hits: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    @property
    def false_hit_rate(self) -> float:
        return self.false_hits / self.hits if self.hits else 0.0


def sweep(
    vectors: np.ndarray | Sequence[np.ndarray],
    plans_fresh: Sequence[Completion | str],
    thresholds: Sequence[float],
) -> list[SweepRow]:
    """Replay a query stream through a cache at each threshold: a miss calls the "planner"
    (stores `plans_fresh[i]`), a hit is false if its tools differ from `plans_fresh[i]`. Tools,
    not the plan text, are compared: the thinking differs from call to call. No TTL, no
    eviction: the stream is taken to fit in the cache."""
    if len(vectors) != len(plans_fresh):
        raise ValueError(f"{len(vectors)} vectors but {len(plans_fresh)} plans")
    fresh = [_as_completion(p) for p in plans_fresh]
    rows = []
    for threshold in thresholds:
        cache = DecisionCache(
            "sweep", "sweep", threshold=threshold, ttl_s=math.inf, max_entries=max(1, len(fresh))
        )
        false_hits = 0
        for vector, plan in zip(vectors, fresh, strict=True):
            hit = cache.get(vector)
            if hit is None:
                cache.put(vector, plan)
            elif hit.tools != plan.tools:
                false_hits += 1
        rows.append(SweepRow(threshold, len(fresh), cache.stats.hits, false_hits))
    return rows
