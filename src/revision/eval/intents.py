"""Evaluation only: do the mined signals name the user's hidden intent, and how much could they?

`signal_quality` pairs each kept no-click request's signals with its hidden intent
(`sim/truth`) and reports, per intent and overall, the share whose first signal serves the
intent, whose top 3 does, and the mean number of signals, split by whether the request shows
a follow-up event (an observable fact of the logs). Only intents some tool can serve count
(`exact` and `similar` are the baseline's).

`bayes_bound` says how well anyone could do: for each such request, the posterior over the
intents under the world file's own model, given what is observable (the photographed
product's attributes and price tier, the photo kind, that the response got no click within the
window, that no follow-up came) and, in a second figure, also the user's hidden traits
(their habits and home audience: the limit of what a long history reveals). The bound is the
share of requests whose most probable servable intent is the true one. The no-click
likelihood uses the world's click model with the user's median patience.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from revision.eval.mining_quality import BASELINE_INTENTS, serves
from revision.tables import EVENTS, IMPRESSIONS, PRODUCTS, SIGNALS, TRUTH, USER_TRUTH
from revision.warehouse import Warehouse


def _rate(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def followup_requests(warehouse: Warehouse) -> set[str]:
    """Requests with a follow-up event other than leaving (observable in the logs)."""
    if not warehouse.exists(EVENTS):
        return set()
    events = warehouse.read_pandas(EVENTS, columns=["request_id", "kind"])
    return set(events.loc[events["kind"] != "leave", "request_id"])


def signal_quality(warehouse: Warehouse, run: str | None = None) -> dict[str, Any]:
    """First-signal / top-3 serve rates and signals per request (see the module docstring)."""
    truth = warehouse.read_pandas(TRUTH, columns=["request_id", "intent", "target_product_id"])
    truth = truth.drop_duplicates("request_id").set_index("request_id")
    signals = warehouse.read_pandas(SIGNALS)
    if run is None:
        run = sorted(signals["run"].unique())[-1]
    signals = signals[signals["run"] == run].sort_values(["request_id", "position"])
    patterns = warehouse.read_pandas(PRODUCTS, columns=["product_id", "pattern"])
    pattern_of = dict(zip(patterns["product_id"], patterns["pattern"], strict=True))
    followed = followup_requests(warehouse)
    rows: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0])
    for rid, group in signals.groupby("request_id", sort=False):
        if rid not in truth.index:
            continue
        intent = truth.at[rid, "intent"]
        if intent is None or intent in BASELINE_INTENTS:
            continue
        pattern = pattern_of.get(truth.at[rid, "target_product_id"])
        hits = [
            serves(intent, a, i or "", pattern)
            for a, i in zip(group["action"], group["info"], strict=True)
        ]
        split = "with_followup" if rid in followed else "without_followup"
        for key in ("all", split, f"intent:{intent}"):
            r = rows[key]
            r[0] += 1
            r[1] += bool(hits and hits[0])
            r[2] += any(hits[:3])
            r[3] += len(hits)
    out = {
        key: {
            "requests": int(n),
            "first_signal": _rate(first, n),
            "top3": _rate(top3, n),
            "signals_per_request": _rate(count, n),
        }
        for key, (n, first, top3, count) in sorted(rows.items())
    }
    return {"run": run, **out}


def bayes_bound(warehouse: Warehouse, world, catalog: Warehouse | None = None) -> dict[str, Any]:
    """The share of kept no-click, follow-up-free requests with a servable intent whose most
    probable servable intent (under the world's model) is the true one; `observable` without
    the user's traits, `with_user_traits` knowing them."""
    from revision.sim.intents import (
        CatalogFacts,
        PredicateParams,
        UserState,
        satisfies,
    )
    from revision.sim.traffic import PHOTO_KINDS, indexed_rows, intent_priors

    catalog = catalog or warehouse
    rows = indexed_rows(catalog)
    params = PredicateParams.from_world(world)
    facts = CatalogFacts(rows, params, world.catalog.price_tiers)
    intents = list(world.intents.enabled())
    specs = list(world.intents.enabled().values())
    truth = warehouse.read_pandas(TRUTH)
    truth = truth[~truth["is_bot"] & truth["intent"].notna()].drop_duplicates("request_id")
    from revision.tables import NO_CLICK

    kept = warehouse.read_pandas(NO_CLICK, columns=["request_id", "kept"])
    kept_ids = set(kept.loc[kept["kept"].fillna(False), "request_id"])
    followed = followup_requests(warehouse)
    truth = truth[truth["request_id"].isin(kept_ids) & ~truth["request_id"].isin(followed)]
    truth = truth[~truth["intent"].isin(BASELINE_INTENTS)]
    products = sorted(set(truth["target_product_id"]) & set(rows))
    prior = intent_priors(world, rows, facts, products)
    index_of = {p: i for i, p in enumerate(products)}
    kind_of = {k: i for i, k in enumerate(PHOTO_KINDS)}
    sens = np.array([s.price_sensitivity for s in specs])
    p_follow = np.array(
        [
            (world.followups.by_intent[i].p if world.followups and i in world.followups.by_intent
             else 0.0)
            for i in intents
        ]
    )  # fmt: skip
    servable = np.array([i not in BASELINE_INTENTS for i in intents])
    users = _users(warehouse)
    shown = _impressions(warehouse, set(truth["request_id"]))
    beh = world.behaviour
    correct = {"observable": 0, "with_user_traits": 0}
    n = 0
    for row in truth.itertuples():
        if row.target_product_id not in index_of or row.photo_kind not in kind_of:
            continue
        base = prior[index_of[row.target_product_id], kind_of[row.photo_kind]].copy()
        target = rows[row.target_product_id]
        likelihood = np.ones(len(intents))
        for i, name in enumerate(intents):
            miss = 1.0
            for rank, pid in shown.get(row.request_id, []):
                hit = rows.get(pid)
                sat = hit is not None and satisfies(name, target, hit, (), UserState(), params)
                examine = beh.examination.top * rank ** (-beh.examination.eta)
                miss *= 1 - examine * (beh.click_p if sat else beh.stray_click_p)
            likelihood[i] = miss * (1 - p_follow[i])
        n += 1
        post = base * likelihood * servable
        if post.sum() > 0 and intents[int(post.argmax())] == row.intent:
            correct["observable"] += 1
        traits = users.get(row.user_id)
        if traits is not None:
            s, habits, home = traits
            mine = base * np.clip(1 + sens * (2 * s - 1), 0, None) * habits[: len(intents)]
            boost = world.users.home_groups.boost if world.users.home_groups else 1.0
            if home is not None and "other_department" in intents:
                away = home != target.get("index_group")
                mine[intents.index("other_department")] *= boost if away else 1.0
            post = mine * likelihood * servable
        if post.sum() > 0 and intents[int(post.argmax())] == row.intent:
            correct["with_user_traits"] += 1
    return {
        "requests": n,
        "observable": _rate(correct["observable"], n),
        "with_user_traits": _rate(correct["with_user_traits"], n),
    }


def _users(warehouse: Warehouse) -> dict[str, tuple[float, np.ndarray, str | None]]:
    if not warehouse.exists(USER_TRUTH):
        return {}
    frame = warehouse.read_pandas(USER_TRUTH)
    return {
        u: (float(s), np.asarray(h, float), g)
        for u, s, h, g in zip(
            frame["user_id"],
            frame["price_sensitivity"],
            frame["habits"],
            frame["home_group"],
            strict=True,
        )
    }


def _impressions(warehouse: Warehouse, wanted: set[str]) -> dict[str, list[tuple[int, str]]]:
    imp = warehouse.read_pandas(IMPRESSIONS, columns=["request_id", "product_id", "rank"])
    imp = imp[imp["request_id"].isin(wanted)]
    out: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for rid, pid, rank in zip(imp["request_id"], imp["product_id"], imp["rank"], strict=True):
        out[rid].append((int(rank), pid))
    return out
