"""Simulated traffic: users with hidden intents send pool photos through a search pipeline.

Per day: plan the requests (who, when, which photo, which hidden intent), run them through the
pipeline, play each user's examination and clicks, and write `logs/requests`, `logs/impressions`,
`logs/clicks`, `logs/orders` and `sim/truth` for that day.

Rules worth knowing:

- `requests` is the total over all days (bots included), split across days by the world's
  weekday weights (largest remainder, so the counts add up exactly).
- Every table is partitioned by the request's UTC day and written as
  `<table>/dt=DAY/part-<variant>.parquet`: re-running a simulation replaces exactly the files it
  wrote before (no duplicate rows), and two pipelines (A/B arms) simulated under different
  variant names sit side by side. Clicks and orders go to their request's day, even the rare
  one after midnight, so each day's four tables are self-contained.
- A day with no requests (e.g. `--requests 0`, or more days than requests) is not an error: its
  partitions are written empty (replacing stale files) and the summary lists it in
  `empty_days`.
- Randomness comes in two streams per day: the request plan (seed, day) and the users' reactions
  (seed, day, drawn per request before any search). Two pipelines simulated with the same seed
  therefore see the same users, photos and intents, and differ only where their responses do.
- The traffic goes to any `Searcher` (the plain pipeline, a plan-executing pipeline, the online
  service in-process or over HTTP). A searcher that says it is `deterministic` answers a photo
  the same way every time, so its responses are computed once per distinct photo (memoized);
  any other is called for every request.
- The users' reactions (examination, clicks, purchases) live in `revision.sim.behaviour`.
- A searcher that can take an answer (`answer(request_id, user_id, choice, ts_ms)`, the online
  service) gets one when its response asked a preference question offering what a `preference`
  user wants: the refined results are what that user then examines (logged as further
  impressions of the same request).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa

from revision.catalog.schema import load_products
from revision.errors import InputError
from revision.progress import progress
from revision.search._base import Searcher, SearchRequest
from revision.sim.behaviour import NORMALS, UNIFORMS, UserBehaviour
from revision.sim.followups import DRAWS, FollowupModel
from revision.sim.intents import (
    INFO,
    INFO_FIELDS,
    OTHER_DEPARTMENT,
    PREFERENCE,
    CatalogFacts,
    PredicateParams,
    plain_cues,
    product_rows,
    value,
)
from revision.sim.photos import PhotoPool, build_pool
from revision.sim.world import PHOTO_KINDS, World
from revision.tables import (
    CLICKS,
    EVENTS,
    IMAGE_HASHES,
    IMPRESSIONS,
    ORDERS,
    REQUESTS,
    TRUTH,
    USER_TRUTH,
)
from revision.vision.embeddings import ImageEmbedder
from revision.vision.query_photos import LOW_QUALITY_KINDS
from revision.warehouse import Warehouse

DEFAULT_START = date(2025, 6, 2)  # a Monday; fixed so that the same command gives the same logs
NO_CLICK_WINDOW_S = 30.0  # the paper's no-click rule: no click within 30 s of the request
HEAVY_USER_DAY = 25  # mean human requests per user and day above which the summary warns
_DAY_MS = 86_400_000
_VARIANT = re.compile(r"^[A-Za-z0-9_.-]+$")
CATALOG_KIND = "catalog"  # a bot uploading the catalog photo itself


@dataclass
class UserPopulation:
    ids: list[str]
    price_sensitivity: np.ndarray
    patience: np.ndarray
    activity: np.ndarray
    habits: np.ndarray | None = None  # (users, intents) factors on the intent priors
    home: list[str | None] | None = None  # the audience each user shops for


def _short_id(*parts) -> str:
    return hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=6).hexdigest()


def make_users(
    world: World, n: int, seed: int, intents: list[str] | None = None, groups=None
) -> UserPopulation:
    """`n` human users with seeded profiles (ids look the same as bots' ids). Habits (one
    factor per user and intent in `intents`) and home audiences (weights by index group,
    `groups`: the catalog's counts) come from their own random streams, so a world without
    them draws the same users as before."""
    spec = world.users
    rng = np.random.default_rng([seed, 11])
    act = np.exp(spec.activity.sigma * rng.standard_normal(n))
    population = UserPopulation(
        ids=[f"u{_short_id(seed, 'user', i)}" for i in range(n)],
        price_sensitivity=rng.beta(spec.price_sensitivity.a, spec.price_sensitivity.b, n),
        patience=spec.patience.median * np.exp(spec.patience.sigma * rng.standard_normal(n)),
        activity=np.minimum(act, spec.activity.cap),
    )
    if spec.habits.shape is not None and intents:
        shape = spec.habits.shape
        population.habits = np.random.default_rng([seed, 12]).gamma(
            shape, 1.0 / shape, (n, len(intents))
        )
    if spec.home_groups is not None:
        weights = dict(spec.home_groups.weights or groups or {})
        names = sorted(g for g, w in weights.items() if w > 0)
        if names:
            w = np.array([weights[g] for g in names], dtype=float)
            picks = np.random.default_rng([seed, 13]).choice(len(names), size=n, p=w / w.sum())
            population.home = [names[i] for i in picks]
    return population


def day_counts(world: World, requests: int, start: date, days: int) -> list[int]:
    """Total `requests` split over `days` by weekday weight (largest remainder)."""
    weights = np.array(
        [world.traffic.weekday[(start + timedelta(d)).weekday()] for d in range(days)], dtype=float
    )
    if weights.sum() <= 0:
        weights = np.ones(days)
    share = requests * weights / weights.sum()
    counts = np.floor(share).astype(int)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: requests - counts.sum()]] += 1
    return counts.tolist()


def _parse_start(start_date) -> date:
    if isinstance(start_date, datetime):
        return start_date.date()
    if isinstance(start_date, date):
        return start_date
    try:
        return date.fromisoformat(str(start_date))
    except ValueError:
        raise InputError(f"--start-date {start_date!r}: expected YYYY-MM-DD") from None


def _product_factor(world: World, facts: CatalogFacts, spec, row: dict) -> float:
    m = spec.multipliers
    cat = value(row, "category")
    f = m.category.get(cat, 1.0) if cat is not None else 1.0
    for group, cats in world.catalog.category_groups.items():
        if cat in cats:
            f *= m.group.get(group, 1.0)
    for key in ("colour", "pattern", "department", "index_group"):
        v = value(row, key)
        if v is not None:
            f *= getattr(m, key).get(v, 1.0)
    return f * m.price_tier.get(facts.price_tier(row), 1.0)


def intent_priors(world: World, rows, facts: CatalogFacts, product_ids) -> np.ndarray:
    """(products, photo kinds, intents) relative weights of each hidden intent for a photo of
    a product: the world's prior times its multipliers, zero where no product could serve the
    intent. Intents in `world.intents.enabled()` order, photo kinds in `PHOTO_KINDS` order."""
    enabled = world.intents.enabled()
    base = np.zeros((len(product_ids), len(PHOTO_KINDS), len(enabled)))
    for p, pid in enumerate(product_ids):
        row = rows[pid]
        for i, (name, spec) in enumerate(enabled.items()):
            if spec.prior <= 0 or not facts.eligible(name, row):
                continue
            prior = spec.prior * _product_factor(world, facts, spec, row)
            for k, kind in enumerate(PHOTO_KINDS):
                base[p, k, i] = prior * spec.multipliers.photo.get(kind, 1.0)
    return base


def indexed_rows(warehouse: Warehouse) -> dict[str, dict]:
    """Catalog rows of the products users can find: those whose photo `revision index build`
    embedded (every product when the warehouse has no index yet)."""
    products = load_products(warehouse)
    if warehouse.exists(IMAGE_HASHES):
        hashes = warehouse.read_pandas(IMAGE_HASHES)
        ok = set(hashes.loc[hashes["image_hash"].fillna("") != "", "product_id"])
        products = products[products["product_id"].isin(ok)]
    return product_rows(products.sort_values("product_id").reset_index(drop=True))


class _Simulation:
    """One `simulate` call: the world, the catalog, the pool and the per-day loop."""

    def __init__(
        self,
        world: World,
        searcher: Searcher,
        warehouse: Warehouse,
        pool: PhotoPool | None,
        seed: int,
        variant: str,
        memoize: bool | None,
        catalog: Warehouse,
    ):
        self.world, self.searcher, self.warehouse = world, searcher, warehouse
        self.seed, self.variant = seed, variant
        self.rows = indexed_rows(catalog)
        self.catalog_ids = sorted(self.rows)
        self.embedder = ImageEmbedder(catalog)  # the index's encoder and embedding cache
        self.params = PredicateParams.from_world(world)
        self.facts = CatalogFacts(self.rows, self.params, world.catalog.price_tiers)
        self.pool = (
            pool
            if pool is not None
            else build_pool(world, warehouse, self.rows, self.embedder.encoder)
        )
        self.memoize = searcher.deterministic if memoize is None else memoize
        self.memo: dict[int, tuple] = {}
        self.intents = list(world.intents.enabled())
        self.specs = [world.intents.enabled()[i] for i in self.intents]
        purchase = {n: s.purchase_p for n, s in zip(self.intents, self.specs, strict=True)}
        self.behaviour = UserBehaviour(world, self.rows, self.params, purchase)
        self.followups = FollowupModel(world, self.rows, self.facts)
        self._catalog_hashes: dict[str, str] | None = None
        self._prepare_priors()

    # -- priors ---------------------------------------------------------------------------------
    def _prepare_priors(self) -> None:
        pool = self.pool
        self.product_index = {pid: i for i, pid in enumerate(pool.products)}
        kinds = {k: i for i, k in enumerate(PHOTO_KINDS)}
        self.base = intent_priors(self.world, self.rows, self.facts, pool.products)
        self.options: dict[str, dict[str, tuple[list[str], np.ndarray]]] = defaultdict(dict)
        for pid in pool.products:
            row = self.rows[pid]
            for name in (OTHER_DEPARTMENT, PREFERENCE):
                if name in self.intents and self.facts.eligible(name, row):
                    values, weights = self.facts.preferred_options(name, row)
                    self.options[name][pid] = (values, np.cumsum(weights) / sum(weights))
        base = self.base
        self.sens = np.array([s.price_sensitivity for s in self.specs])
        photo_kind = np.array([kinds[k] for k in pool.kinds])
        photo_product = np.array([self.product_index[p] for p in pool.product_ids])
        self.photo_kind_idx, self.photo_product_idx = photo_kind, photo_product
        valid = base[photo_product, photo_kind].sum(axis=1) > 0 if len(pool) else np.zeros(0, bool)
        is_lq = np.array([k not in ("mild", "medium", "hard") for k in pool.kinds], dtype=bool)
        self.product_photos: list[list[int]] = [[] for _ in pool.products]
        for j in np.flatnonzero(valid & ~is_lq):
            self.product_photos[photo_product[j]].append(int(j))
        self.target_products = np.array([p for p, ph in enumerate(self.product_photos) if ph])
        if len(self.target_products) == 0:
            raise InputError(
                f"world {self.world.name!r}: no intent is possible for any pooled product "
                "(check the intents' priors and multipliers)"
            )
        zipf = (np.arange(len(pool.products)) + 1.0) ** -self.world.catalog.popularity.zipf
        w = zipf[self.target_products]
        self.target_cdf = np.cumsum(w) / w.sum()
        lq = self.world.photos.low_quality
        self.lq_kinds = [k for k in LOW_QUALITY_KINDS if lq.kinds.get(k, 0) > 0]
        self.lq_photos = {
            k: np.flatnonzero(valid & (np.array(pool.kinds) == k)) for k in self.lq_kinds
        }
        self.lq_kinds = [k for k in self.lq_kinds if len(self.lq_photos[k])]
        kw = np.array([lq.kinds[k] for k in self.lq_kinds], dtype=float)
        self.lq_cdf = np.cumsum(kw) / kw.sum() if len(kw) else kw
        info = self.world.intents.info
        if info is not None:
            fields = [f for f in INFO_FIELDS if info.fields.get(f, 0) > 0]
            fw = np.array([info.fields[f] for f in fields])
            self.info_fields = (fields, np.cumsum(fw) / fw.sum())

    # -- the plan of a day ----------------------------------------------------------------------
    def plan_day(self, n: int, day: int, users: UserPopulation, bot_ids: list[str]) -> dict:
        """Requests of one day, sorted by time: columns as numpy arrays / lists."""
        rng = np.random.default_rng([self.seed, 0, day])
        bots = self.world.bots
        n_bot = min(n, round(n * bots.share)) if n else 0
        n_human = n - n_bot
        if n_human and not users.ids:
            raise InputError("--users must be at least 1 when there are human requests")
        plan = {
            "user": [],
            "is_bot": [],
            "t": [],
            "photo": [],
            "target": [],
            "kind": [],
            "intent": [],
            "preferred": [],
            "bot_click_p": [],
        }
        self._plan_humans(plan, rng, n_human, users)
        self._plan_bots(plan, rng, n_bot, len(users.ids), bot_ids)
        order = np.argsort(np.array(plan["t"], dtype=float), kind="stable")
        return {k: [v[i] for i in order] for k, v in plan.items()}

    def _hour_times(self, rng, size: int) -> np.ndarray:
        hourly = np.array(self.world.traffic.hourly, dtype=float)
        hours = rng.choice(24, size=size, p=hourly / hourly.sum())
        return (hours + rng.random(size)) * 3600.0

    def _plan_humans(self, plan: dict, rng, n: int, users: UserPopulation) -> None:
        if n == 0:
            return
        spec = self.world.users.sessions
        who = rng.choice(len(users.ids), size=n, p=users.activity / users.activity.sum())
        who.sort()
        fresh = self._hour_times(rng, n)
        new_session = rng.random(n) < spec.new_session_p
        gaps = np.maximum(
            spec.min_gap_s, spec.gap_s.median * np.exp(spec.gap_s.sigma * rng.standard_normal(n))
        )
        t = np.empty(n)
        for r in range(n):
            cont = r > 0 and who[r] == who[r - 1] and not new_session[r]
            t[r] = t[r - 1] + gaps[r] if cont else fresh[r]
        t = np.minimum(t, 86_399.0 + rng.random(n) * 0.999)
        # photos: a low-quality one at the world's rate, else a pooled product by popularity
        lq = self.world.photos.low_quality
        is_lq = (rng.random(n) < lq.rate) & (len(self.lq_kinds) > 0)
        u_target, u_slot, u_kind = rng.random(n), rng.random(n), rng.random(n)
        photos = np.empty(n, dtype=int)
        for r in range(n):
            if is_lq[r]:
                cands = self.lq_photos[self.lq_kinds[int(np.searchsorted(self.lq_cdf, u_kind[r]))]]
            else:
                p = self.target_products[
                    min(
                        int(np.searchsorted(self.target_cdf, u_target[r])),
                        len(self.target_products) - 1,
                    )
                ]
                cands = self.product_photos[p]
            photos[r] = cands[min(int(u_slot[r] * len(cands)), len(cands) - 1)]
        # hidden intents: priors by product and photo, scaled by price sensitivity
        prod, kind = self.photo_product_idx[photos], self.photo_kind_idx[photos]
        prior = self.base[prod, kind]
        s = users.price_sensitivity[who]
        scaled = prior * np.clip(1 + self.sens[None, :] * (2 * s[:, None] - 1), 0, None)
        if users.habits is not None:
            scaled = scaled * users.habits[who]
        home = None
        if users.home is not None and OTHER_DEPARTMENT in self.intents:
            home = [users.home[w] for w in who]
            away = np.array(
                [
                    h != value(self.rows[self.pool.product_ids[j]], "index_group")
                    for h, j in zip(home, photos, strict=True)
                ]
            )
            col = self.intents.index(OTHER_DEPARTMENT)
            scaled[:, col] *= np.where(away, self.world.users.home_groups.boost, 1.0)
        zero = scaled.sum(axis=1) <= 0
        scaled[zero] = prior[zero]
        cdf = np.cumsum(scaled, axis=1)
        pick = (cdf < rng.random(n)[:, None] * cdf[:, -1:]).sum(axis=1)
        u_pref = rng.random(n)
        for r in range(n):
            intent = self.intents[min(int(pick[r]), len(self.intents) - 1)]
            target = self.pool.product_ids[photos[r]]
            preferred = None
            if (
                intent == OTHER_DEPARTMENT
                and home is not None
                and home[r] in (self.options[intent][target][0])
            ):
                preferred = home[r]  # they shop for their own audience
            elif intent in (OTHER_DEPARTMENT, PREFERENCE):
                values, cdf_v = self.options[intent][target]
                preferred = values[min(int(np.searchsorted(cdf_v, u_pref[r])), len(values) - 1)]
            elif intent == INFO:
                fields, cdf_f = self.info_fields
                preferred = fields[min(int(np.searchsorted(cdf_f, u_pref[r])), len(fields) - 1)]
            plan["user"].append(int(who[r]))
            plan["is_bot"].append(False)
            plan["t"].append(float(t[r]))
            plan["photo"].append(int(photos[r]))
            plan["target"].append(target)
            plan["kind"].append(self.pool.kinds[photos[r]])
            plan["intent"].append(intent)
            plan["preferred"].append(preferred)
            plan["bot_click_p"].append(0.0)

    def _plan_bots(self, plan: dict, rng, n: int, n_users: int, bot_ids: list[str]) -> None:
        if n == 0:
            return
        spec = self.world.bots
        per_bot = (spec.requests_per_bot[0] + spec.requests_per_bot[1]) / 2
        k = int(min(len(bot_ids), max(1, round(n / per_bot))))
        active = rng.choice(len(bot_ids), size=k, replace=False)
        sizes = rng.multinomial(n - k, np.full(k, 1.0 / k)) + 1
        catalog = self.catalog_ids
        pool_photos = np.flatnonzero(np.isin(np.array(self.pool.kinds), ["mild", "medium", "hard"]))
        for b, size in zip(active, sizes, strict=True):
            mean = rng.uniform(*spec.interval_s)
            cv = rng.uniform(*spec.jitter)
            click_p = rng.uniform(*spec.click_p)
            gaps = mean * np.maximum(0.2, 1 + cv * rng.standard_normal(size))
            pauses = rng.random(size) < spec.pause_p
            gaps = gaps + pauses * rng.uniform(*spec.pause_s, size)
            gaps[0] = 0.0
            span = gaps.sum()
            if span > 0.95 * 86_400:  # a day holds at most so many requests: speed the bot up
                gaps *= 0.95 * 86_400 / span
                span = gaps.sum()
            t = rng.uniform(0, 86_400 - span) + np.cumsum(gaps)
            use_catalog = rng.random(size) < spec.catalog_photo_share
            for r in range(size):
                if use_catalog[r] or len(pool_photos) == 0:
                    row = int(rng.integers(len(catalog)))
                    photo, target, kind = len(self.pool) + row, catalog[row], CATALOG_KIND
                else:
                    photo = int(pool_photos[rng.integers(len(pool_photos))])
                    target, kind = self.pool.product_ids[photo], self.pool.kinds[photo]
                plan["user"].append(n_users + int(b))
                plan["is_bot"].append(True)
                plan["t"].append(float(t[r]))
                plan["photo"].append(photo)
                plan["target"].append(target)
                plan["kind"].append(kind)
                plan["intent"].append(None)
                plan["preferred"].append(None)
                plan["bot_click_p"].append(float(click_p))

    # -- photos ---------------------------------------------------------------------------------
    def photo(self, j: int) -> tuple[np.ndarray, str, str]:
        """(raw embedding, image path, image hash) of photo j: pool photos, then catalog
        photos (a bot uploading the product photo itself; embedded once, then cached)."""
        pool = self.pool
        if j < len(pool):
            return pool.vectors[j], pool.images[j], pool.hashes[j]
        pid = self.catalog_ids[j - len(pool)]
        path, image_hash = self.rows[pid]["image_path"], self._hash(pid)
        if image_hash not in self.embedder.cache:
            vectors, _ = self.embedder.embed_paths([path])
            return vectors[0], path, image_hash
        return self.embedder.cache.get([image_hash])[0], path, image_hash

    def _hash(self, pid: str) -> str:
        if self._catalog_hashes is None:
            self._catalog_hashes = {}
            if self.embedder.warehouse.exists(IMAGE_HASHES):
                t = self.embedder.warehouse.read(IMAGE_HASHES)
                self._catalog_hashes = dict(
                    zip(
                        t.column("product_id").to_pylist(),
                        t.column("image_hash").to_pylist(),
                        strict=True,
                    )
                )
        if not self._catalog_hashes.get(pid):
            from revision.vision.images import content_hash

            self._catalog_hashes[pid] = content_hash(self.rows[pid]["image_path"])
        return self._catalog_hashes[pid]

    def respond(self, j: int, request_id: str, user_id: str, ts_ms: int) -> tuple:
        """(response, product ids, ranks, scores, image, hash) for photo j, asked at `ts_ms`
        (the simulated clock: a service's daily cap counts simulated days)."""
        if self.memoize and j in self.memo:
            return self.memo[j]
        vector, image, image_hash = self.photo(j)
        request = SearchRequest(
            image=self.warehouse.resolve(image),
            embedding=vector,
            top_k=self.world.top_k,
            request_id=request_id,
            user_id=user_id,
            source=self.warehouse.relative(image),
            ts_ms=ts_ms,
        )
        response = self.searcher.respond(request)
        hits = response.results
        out = (
            response,
            [h.product_id for h in hits],
            [h.rank or i + 1 for i, h in enumerate(hits)],
            [float(h.score) for h in hits],
            image,
            image_hash,
        )
        if self.memoize:
            self.memo[j] = out
        return out


def simulate(
    world: World,
    searcher: Searcher,
    warehouse: Warehouse,
    users: int = 1000,
    days: int = 1,
    requests: int = 10_000,
    seed: int = 0,
    start_date: date | str = DEFAULT_START,
    *,
    variant: str = "baseline",
    pool: PhotoPool | None = None,
    memoize: bool | None = None,
    catalog: Warehouse | None = None,
    arm_of: Callable[[str], str] | None = None,
    reveal: Callable[[str, dict], None] | None = None,
) -> dict:
    """Simulate `requests` requests (total over `days` days from `start_date`) by `users` human
    users plus the world's bots, served by `searcher`; write the log tables and the hidden
    truth for each day, and return a summary (see `revision.sim.traffic` for the rules).

    `pool` reuses an already built photo pool; `memoize` overrides the automatic choice
    (responses memoized per photo for a deterministic searcher); `catalog` is the warehouse
    holding the catalog and its index (default: `warehouse` itself).

    For experiments: `arm_of(user_id)` names the arm that serves each user (the `variant` of
    their requests in the logs and the truth; `variant` then names the files); `reveal(request_id,
    truth)` hears each human request's hidden intent just before it is served (evaluation only:
    the oracle arm of an experiment).
    """
    if days < 1:
        raise InputError(f"--days must be at least 1, got {days}")
    if requests < 0:
        raise InputError(f"--requests must be at least 0, got {requests}")
    if users < 0:
        raise InputError(f"--users must be at least 0, got {users}")
    if not _VARIANT.match(variant):
        raise InputError(f"variant {variant!r}: use letters, digits, '_', '-' or '.'")
    start = _parse_start(start_date)
    counts = day_counts(world, requests, start, days)
    started = time.perf_counter()
    catalog = catalog if catalog is not None else warehouse
    sim = _Simulation(world, searcher, warehouse, pool, seed, variant, memoize, catalog)
    sim.arm_of, sim.reveal = arm_of, reveal
    pool_s = time.perf_counter() - started
    population = make_users(world, users, seed, sim.intents, sim.facts.group_counts())
    _write_users(warehouse, population, sim.intents, seed)
    bot_ids = [f"u{_short_id(seed, 'bot', i)}" for i in range(world.bots.pool)]
    all_ids = population.ids + bot_ids
    stats = _Stats(sim.intents)
    started = time.perf_counter()
    per_day = []
    for day, n in progress(list(enumerate(counts)), total=days, description="simulating days"):
        dt = (start + timedelta(day)).isoformat()
        plan = sim.plan_day(n, (start + timedelta(day)).toordinal(), population, bot_ids)
        tables = _run_day(sim, plan, dt, population, all_ids, stats)
        for name, table in tables.items():
            warehouse.write(name, table, {"dt": dt}, file=f"part-{variant}.parquet")
        per_day.append({"dt": dt, "requests": n})
    elapsed = time.perf_counter() - started
    summary = stats.summary()
    summary.update(
        world=world.name,
        variant=variant,
        seed=seed,
        start_date=start.isoformat(),
        days=days,
        users=len(stats.human_users),
        population=users,
        empty_days=[d["dt"] for d in per_day if d["requests"] == 0],
        per_day=per_day,
        pool={**sim.pool.build, "products": len(sim.pool.products)},
        pool_s=round(pool_s, 2),
        path="memoized" if sim.memoize else "per_request",
        simulate_s=round(elapsed, 3),
        requests_per_s=round(requests / elapsed, 1) if elapsed > 0 else None,
        warnings=[],
    )
    per_user_day = summary["human_requests"] / max(1, users) / days
    if per_user_day > HEAVY_USER_DAY:
        summary["warnings"].append(
            f"human users average {per_user_day:.0f} requests a day each: the heaviest will "
            f"look like bots to a rate filter (raise --users)"
        )
    return summary


def _write_users(warehouse: Warehouse, users: UserPopulation, intents: list[str], seed: int):
    """The users' hidden traits (evaluation only: the Bayes bound of the mining benchmark)."""
    n = len(users.ids)
    habits = users.habits if users.habits is not None else np.ones((n, len(intents)))
    table = pa.table(
        {
            "user_id": users.ids,
            "price_sensitivity": users.price_sensitivity.astype(float),
            "patience": users.patience.astype(float),
            "home_group": users.home if users.home is not None else [None] * n,
            "intents": [intents] * n,
            "habits": habits.astype(float).tolist(),
        },
        schema=USER_TRUTH.schema,
    )
    warehouse.write(USER_TRUTH, table, {"seed": str(seed)})


class _Stats:
    def __init__(self, intents: list[str]):
        self.intents = intents
        self.n = self.bots = self.lq = self.clicked = self.clicked30 = self.clicks = 0
        self.impressions = self.orders = 0
        self.gmv = 0.0
        self.human_users: set[int] = set()
        self.by_intent: dict[str, Counter] = defaultdict(Counter)
        self.by_kind: dict[str, Counter] = defaultdict(Counter)

    def add(
        self,
        *,
        user: int,
        is_bot: bool,
        intent,
        kind: str,
        n_clicks: int,
        first_s,
        sat,
        n_imp: int,
        orders: int,
        gmv: float,
    ) -> None:
        self.n += 1
        self.impressions += n_imp
        self.clicks += n_clicks
        self.orders += orders
        self.gmv += gmv
        clicked30 = first_s is not None and first_s <= NO_CLICK_WINDOW_S
        self.clicked += n_clicks > 0
        self.clicked30 += clicked30
        self.lq += kind not in ("mild", "medium", "hard", CATALOG_KIND)
        if is_bot:
            self.bots += 1
            return
        self.human_users.add(user)
        c = self.by_intent[intent]
        c["requests"] += 1
        c["no_click"] += not clicked30
        c["satisfied"] += bool(sat)
        k = self.by_kind[kind]
        k["requests"] += 1
        k["no_click"] += not clicked30

    def summary(self) -> dict:
        n, humans = self.n, self.n - self.bots
        ratio = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
        return {
            "requests": n,
            "human_requests": humans,
            "bot_requests": self.bots,
            "bot_share": ratio(self.bots, n),
            "low_quality_share": ratio(self.lq, n),
            "clicks": self.clicks,
            "ctr": ratio(self.clicked, n),
            "item_ctr": ratio(self.clicks, self.impressions),
            "no_click_ratio": ratio(n - self.clicked30, n),
            "human_no_click_ratio": ratio(
                humans - sum(c["requests"] - c["no_click"] for c in self.by_intent.values()), humans
            ),
            "orders": self.orders,
            "gmv": round(self.gmv, 6),
            "per_intent": {
                i: {
                    "requests": c["requests"],
                    "share": ratio(c["requests"], humans),
                    "no_click_ratio": ratio(c["no_click"], c["requests"]),
                    "satisfied_rate": ratio(c["satisfied"], c["requests"]),
                }
                for i in self.intents
                if (c := self.by_intent.get(i))
            },
            "per_photo_kind": {
                k: {
                    "requests": c["requests"],
                    "no_click_ratio": ratio(c["no_click"], c["requests"]),
                }
                for k in PHOTO_KINDS
                if (c := self.by_kind.get(k))
            },
        }


def _run_day(
    sim: _Simulation, plan: dict, dt: str, users: UserPopulation, all_ids: list[str], stats: _Stats
) -> dict[str, pa.Table]:
    """Serve and play one day's plan; returns the day's log tables and its truth."""
    rows = sim.rows
    n = len(plan["t"])
    rng = np.random.default_rng([sim.seed, 1, date.fromisoformat(dt).toordinal()])
    uni = rng.random((n, UNIFORMS))
    nrm = rng.standard_normal((n, NORMALS))
    follow_rng = np.random.default_rng([sim.seed, 2, date.fromisoformat(dt).toordinal()])
    fu, fz = follow_rng.random((n, DRAWS)), follow_rng.standard_normal(n)
    day_ms = int(datetime.fromisoformat(dt).replace(tzinfo=UTC).timestamp() * 1000)
    req = {k: [] for k in ("request_id", "user_id", "ts", "image", "image_hash", "relevance")}
    imp = {k: [] for k in ("request_id", "product_id", "rank", "score", "source", "tool")}
    clk = {k: [] for k in ("request_id", "product_id", "ts", "dwell_s")}
    ords = {k: [] for k in ("request_id", "product_id", "ts", "price")}
    evs = {k: [] for k in EVENTS.names}
    decisions: list[dict | None] = []  # the online service's, when it served the request
    shown_cues: list[str | None] = []  # the response's cues, JSON, as the service logs them
    tru: dict[str, list] = {k: [] for k in TRUTH.names if k != "variant"}
    for r in range(n):
        rid = _short_id(sim.seed, sim.variant, dt, r) + f"{r:06d}"
        user, is_bot, photo = plan["user"][r], plan["is_bot"][r], plan["photo"][r]
        ts = day_ms + int(plan["t"][r] * 1000)
        if sim.reveal is not None and not is_bot:
            sim.reveal(
                rid,
                {
                    "intent": plan["intent"][r],
                    "preferred": plan["preferred"][r],
                    "target": plan["target"][r],
                },
            )
        response, pids, ranks, scores, image, image_hash = sim.respond(
            photo, rid, all_ids[user], ts
        )
        req["request_id"].append(rid)
        req["user_id"].append(all_ids[user])
        req["ts"].append(ts)
        req["image"].append(sim.warehouse.relative(image))  # the warehouse stays movable
        req["image_hash"].append(image_hash)
        decision = getattr(response, "decision", None)
        # the baseline's relevance: what the trigger rule reads, whatever the arm showed
        req["relevance"].append(float(decision.relevance if decision else response.relevance))
        decisions.append(decision.log_row() if decision is not None else None)
        shown_cues.append(json.dumps(plain_cues(response.cues)) if response.cues else None)
        imp["request_id"].extend([rid] * len(pids))
        imp["product_id"].extend(pids)
        imp["rank"].extend(ranks)
        imp["score"].extend(scores)
        imp["source"].extend(h.source for h in response.results)
        imp["tool"].extend(h.tool for h in response.results)
        intent, target = plan["intent"][r], plan["target"][r]
        if is_bot:
            reaction = sim.behaviour.bot(pids, ts, plan["bot_click_p"][r], uni[r])
        else:
            cues = plain_cues(response.cues)
            choice = _answer(cues, intent, plan["preferred"][r])
            answer = getattr(sim.searcher, "answer", None)
            refined = answer(rid, all_ids[user], choice, ts + 3000) if choice and answer else None
            if refined is not None and refined.results:  # the question re-ran the search
                k = len(pids)
                # the question the user answered stays on screen above the refined list
                response, cues = refined, cues + plain_cues(refined.cues)
                pids = [h.product_id for h in refined.results]
                ranks = [k + (h.rank or i + 1) for i, h in enumerate(refined.results)]
                imp["request_id"].extend([rid] * len(pids))
                imp["product_id"].extend(pids)
                imp["rank"].extend(ranks)
                imp["score"].extend(float(h.score) for h in refined.results)
                imp["source"].extend(h.source for h in refined.results)
                imp["tool"].extend(h.tool for h in refined.results)
                ranks = [rk - k for rk in ranks]  # as the user sees them: a fresh list
            sats, whole = sim.behaviour.satisfaction(
                intent,
                target,
                plan["preferred"][r],
                pids,
                cues,
                response,
                memo_key=photo if sim.memoize else None,
            )
            reaction = sim.behaviour.human(
                intent=intent,
                target=target,
                pids=pids,
                ranks=ranks,
                sats=sats,
                cues=cues,
                patience=users.patience[user],
                ts=ts,
                u=uni[r],
                z=nrm[r],
            )
            reaction.satisfied = whole
            first_s = (reaction.clicks[0][1] - ts) / 1000 if reaction.clicks else None
            no_click = first_s is None or first_s > NO_CLICK_WINDOW_S
            preferred = plan["preferred"][r]
            events = sim.followups.events(intent, target, preferred, no_click, fu[r], fz[r])
            for kind, value_, delay in ([("question_answer", choice, 3.0)] if choice else []) + [
                (e.kind, e.value, e.delay_s) for e in events
            ]:
                evs["request_id"].append(rid)
                evs["user_id"].append(all_ids[user])
                evs["ts"].append(ts + int(delay * 1000))
                evs["kind"].append(kind)
                evs["value"].append(value_)
        gmv = 0.0
        for pid, t_click, dwell in reaction.clicks:
            clk["request_id"].append(rid)
            clk["product_id"].append(pid)
            clk["ts"].append(t_click)
            clk["dwell_s"].append(round(dwell, 3))
        for pid, t_order in reaction.orders:
            price = rows[pid].get("price") if pid in rows else None
            ords["request_id"].append(rid)
            ords["product_id"].append(pid)
            ords["ts"].append(t_order)
            ords["price"].append(price)
            gmv += price or 0.0
        tru["request_id"].append(rid)
        tru["user_id"].append(all_ids[user])
        tru["is_bot"].append(is_bot)
        tru["intent"].append(intent)
        tru["target_product_id"].append(target)
        tru["photo_kind"].append(plan["kind"][r])
        tru["preferred"].append(plan["preferred"][r])
        tru["satisfied"].append(reaction.satisfied)
        tru["clicked"].append(bool(reaction.clicks))
        tru["ordered"].append(bool(reaction.orders))
        clicks = reaction.clicks
        stats.add(
            user=user,
            is_bot=is_bot,
            intent=intent,
            kind=plan["kind"][r],
            n_clicks=len(clicks),
            first_s=(clicks[0][1] - ts) / 1000 if clicks else None,
            sat=reaction.satisfied,
            n_imp=len(pids),
            orders=len(reaction.orders),
            gmv=gmv,
        )
    arms = [sim.arm_of(u) if sim.arm_of else sim.variant for u in req["user_id"]]
    req["variant"] = arms
    tru["variant"] = arms
    requests = pa.Table.from_pydict(req, schema=REQUESTS.schema)
    if any(d is not None for d in decisions):  # log the service's decision beside each request
        for field in REQUESTS.optional:
            if any(d is not None and field.name in d for d in decisions):
                values = [d.get(field.name) if d is not None else None for d in decisions]
                requests = requests.append_column(field, pa.array(values, field.type))
    if any(c is not None for c in shown_cues):  # what the tools put on screen beside the results
        field = REQUESTS.optional.field("cues")
        requests = requests.append_column(field, pa.array(shown_cues, field.type))
    return {
        REQUESTS: requests,
        IMPRESSIONS: pa.Table.from_pydict(imp, schema=IMPRESSIONS.schema),
        CLICKS: pa.Table.from_pydict(clk, schema=CLICKS.schema),
        ORDERS: pa.Table.from_pydict(ords, schema=ORDERS.schema),
        TRUTH: pa.Table.from_pydict(tru, schema=TRUTH.schema),
        EVENTS: pa.Table.from_pydict(evs, schema=EVENTS.schema),
    }


def _answer(cues: list, intent: str, preferred: str | None) -> str | None:
    """The option a `preference` user taps when a question offers what they want."""
    if intent != PREFERENCE or not preferred:
        return None
    for cue in cues:
        if cue.get("type") == "question":
            for option in cue.get("options") or ():
                if str(option).casefold() == preferred.casefold():
                    return str(option)
    return None
