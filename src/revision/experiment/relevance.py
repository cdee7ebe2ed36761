"""Top-1 / top-4 relevance of the baseline and of an arm on the same requests (paper §IV-A(a),
Table I).

The A/B arms serve different users, so the two systems are compared on one set of requests: the
requests of one arm's logs (the revision arm by default; any request log works). For each:

- the arm's results are what it showed: `logs/impressions`, ranks 1-4 of the response (a
  refined list after a question's answer comes later, at higher ranks), with the response's
  cues when the logs carry them (`logs/requests.cues`);
- the baseline's are the engine's initial results for the same query photo, searched again by
  the plain visual pipeline from the photo's embedding (cached by its hash). The baseline is
  deterministic, so these are the results the trigger rule read; the logged `relevance` (the
  mean similarity of the baseline's first four) checks it.

Trade-off: searching again instead of reading the baseline from the logs: a treatment arm that
acted logs only what it showed, and the baseline arm's own logs are other users' requests.

A judge (`revision.experiment.judges`: the simulator's truth, or an LLM) says, per request and
shown product, whether the product is relevant to the user's need. Top-1 is relevant when the
first result is; top-4 when at least one of the first four is (the paper's "at least one highly
relevant product"). A pair the judge could not judge is counted, and a request whose figure it
leaves open drops out of that figure (counted as `unjudged`).

Rates per system, and the difference in points with a 95% interval and a two-sided p-value from
a bootstrap over users (the Poisson weights of `revision.experiment.analyze`), paired: both
systems are resampled with the same users' weights. For all requests and the trigger subset.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from revision.errors import InputError
from revision.experiment.analyze import _round
from revision.experiment.judges import Pair, RelevanceJudge
from revision.progress import progress
from revision.tables import BOT_SCORES, IMPRESSIONS, REQUESTS, TRUTH
from revision.warehouse import Warehouse

TOPS = (1, 4)  # Table I's cut-offs


# -- the requests and the two systems' results ---------------------------------------------------


def requests_of(
    warehouse: Warehouse,
    arm: str | None = "revision",
    days: tuple[str, str] | None = None,
    *,
    humans_only: bool = True,
) -> pd.DataFrame:
    """One row per request of `arm` (all requests when the logs name no arms, or `arm` is
    None): request_id, user_id, dt, image, image_hash, relevance, triggered, cues, shown."""
    if not warehouse.exists(REQUESTS):
        raise InputError(f"no {REQUESTS} in {warehouse.root}: nothing to evaluate")
    frame = warehouse.read_pandas(REQUESTS).drop_duplicates("request_id")
    if days is not None:
        first, last = (str(d) for d in days)
        frame = frame[(frame["dt"].astype(str) >= first) & (frame["dt"].astype(str) <= last)]
    if arm is not None and "variant" in frame and frame["variant"].notna().any():
        arms = sorted(frame["variant"].dropna().unique())
        if arm not in arms:
            raise InputError(f"no requests of arm {arm!r} here; arms: {', '.join(arms)}")
        frame = frame[frame["variant"] == arm]
    for column in ("image_hash", "relevance", "triggered", "cues", "shown"):
        if column not in frame:
            frame[column] = None
    if humans_only:
        frame = frame[~frame["user_id"].isin(_bots(warehouse))]
    columns = ["request_id", "user_id", "dt", "ts", "image", "image_hash", "relevance"]
    frame = frame[[*columns, "triggered", "cues", "shown"]]
    return frame.sort_values(["ts", "request_id"]).reset_index(drop=True)


def _bots(warehouse: Warehouse) -> set[str]:
    """Users known to be bots: the simulator's truth where it exists, else the log stage's
    bot filter verdicts, else none."""
    if warehouse.exists(TRUTH):
        truth = warehouse.read_pandas(TRUTH, columns=["user_id", "is_bot"])
        return set(truth.loc[truth["is_bot"].fillna(False).astype(bool), "user_id"])
    if warehouse.exists(BOT_SCORES):
        scores = warehouse.read_pandas(BOT_SCORES, columns=["user_id", "is_bot"])
        return set(scores.loc[scores["is_bot"].fillna(False).astype(bool), "user_id"])
    return set()


def shown_results(warehouse: Warehouse, request_ids, top: int = max(TOPS)) -> dict[str, list]:
    """request_id -> the product ids an arm showed at ranks 1..`top`, in rank order."""
    wanted = set(request_ids)
    if not warehouse.exists(IMPRESSIONS):
        return {}
    table = warehouse.read(
        IMPRESSIONS, columns=["request_id", "product_id", "rank"], filter=pc.field("rank") <= top
    ).to_pandas()
    table = table[table["request_id"].isin(wanted)].sort_values(["request_id", "rank"])
    table = table.drop_duplicates(["request_id", "rank"])
    return {rid: part["product_id"].tolist() for rid, part in table.groupby("request_id")}


def baseline_results(
    warehouse: Warehouse, requests: pd.DataFrame, *, index: str = "hnsw", top: int = max(TOPS)
) -> dict[str, tuple[list[str], float] | str]:
    """request_id -> (the plain visual pipeline's first `top` product ids for the request's
    photo, their relevance score), or why the photo could not be searched again."""
    from revision.search._base import Query
    from revision.search.engine import SearchEngine
    from revision.search.pipeline import SearchPipeline
    from revision.vision.embeddings import ImageEmbedder

    engine = SearchEngine.open(warehouse, kind=index)
    pipeline = SearchPipeline(engine)
    embedder = ImageEmbedder(warehouse, engine.encoder)
    out: dict[str, tuple[list[str], float] | str] = {}
    for r in progress(
        list(requests.itertuples()), total=len(requests), description="baseline results"
    ):
        key = r.image_hash if isinstance(r.image_hash, str) and r.image_hash else None
        try:
            if key is not None and key in embedder.cache:
                raw = embedder.cache.get([key])[0]
            else:
                vectors, _ = embedder.embed_paths([str(warehouse.resolve(r.image))])
                raw = vectors[0]
        except Exception as exc:  # a photo that is gone or unreadable: not searched again
            out[r.request_id] = f"{type(exc).__name__}: {exc}"[:200]
            continue
        response = pipeline.run(
            Query(source=str(r.image), vector=np.asarray(raw, np.float32), top_k=top)
        )
        out[r.request_id] = ([h.product_id for h in response.results[:top]], response.relevance)
    return out


def _cues(text) -> tuple[dict, ...]:
    if not isinstance(text, str) or not text:
        return ()
    try:
        cues = json.loads(text)
    except ValueError:
        return ()
    return tuple(c for c in cues if isinstance(c, dict)) if isinstance(cues, list) else ()


# -- the evaluation ------------------------------------------------------------------------------


def _top(verdicts: list[bool | None], k: int) -> bool | None:
    """Relevant at `k`: some result among the first k is; open when one of them is unjudged
    and none is relevant."""
    head = verdicts[:k]
    if any(v is True for v in head):
        return True
    if any(v is None for v in head):
        return None
    return False


def paired_difference(frame: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Rates of `base` and `arm` (0/1 per request) and their difference in points, with a
    95% interval and a two-sided p-value from a bootstrap over users, paired (one Poisson
    weight per user and replicate for both systems, as in `analyze`)."""
    if frame.empty:
        return {"judged": 0, "baseline": None, "arm": None, "diff_points": None}
    frame = frame.assign(n=1.0)
    sums = frame.groupby("user_id")[["n", "base", "arm"]].sum().to_numpy(float)
    rate_b, rate_a = sums[:, 1].sum() / sums[:, 0].sum(), sums[:, 2].sum() / sums[:, 0].sum()
    weights = np.random.default_rng(seed).poisson(1.0, (n_boot, len(sums))).astype(float)
    totals = weights @ sums
    ok = totals[:, 0] > 0
    boot = 100 * (totals[ok, 2] - totals[ok, 1]) / totals[ok, 0]
    out: dict[str, Any] = {
        "judged": len(frame),
        "users": len(sums),
        "baseline": _round(rate_b),
        "arm": _round(rate_a),
        "diff_points": _round(100 * (rate_a - rate_b)),
    }
    if len(boot):
        lo, hi = np.quantile(boot, [0.025, 0.975])
        out["ci95"] = [_round(lo), _round(hi)]
        out["p"] = _round(min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean())))
    return out


def _summary(table: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "requests": len(table),
        "users": int(table["user_id"].nunique()),
        "changed": int(table["changed"].sum()),  # top-4 lists that differ between the systems
    }
    for k in TOPS:
        base, arm = table[f"base_top{k}"], table[f"arm_top{k}"]
        judged = base.notna() & arm.notna()
        part = pd.DataFrame(
            {
                "user_id": table.loc[judged, "user_id"],
                "base": base[judged].astype(float),
                "arm": arm[judged].astype(float),
            }
        )
        out[f"top{k}"] = {
            **paired_difference(part, n_boot=n_boot, seed=seed),
            "unjudged": int((~judged).sum()),
        }
    return out


def relevance_table(
    warehouse: Warehouse,
    judge: RelevanceJudge,
    *,
    arm: str | None = "revision",
    days: tuple[str, str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    index: str = "hnsw",
) -> pd.DataFrame:
    """One row per evaluated request: user, `triggered`, `shown` (the arm's tools reached the
    user), `changed` (the two systems' first four differ) and, per cut-off k, `base_topk` and
    `arm_topk` (True, False, or None when the judge left it open). `attrs` holds the requests
    before sampling, the pairs judged and notes. `limit` keeps a seeded random sample."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    requests = requests_of(warehouse, arm, days)
    if requests.empty:
        raise InputError(f"no human requests of arm {arm!r} to evaluate")
    total = len(requests)
    if limit is not None and limit < total:
        keep = sorted(random.Random(seed).sample(range(total), limit))
        requests = requests.iloc[keep].reset_index(drop=True)
    notes: list[str] = []
    baseline = baseline_results(warehouse, requests, index=index)
    lost = {rid: why for rid, why in baseline.items() if isinstance(why, str)}
    if lost:
        notes.append(
            f"{len(lost)} request(s) whose photo could not be searched again are left out "
            f"(e.g. {next(iter(lost.values()))})"
        )
        requests = requests[~requests["request_id"].isin(lost)].reset_index(drop=True)
    shown = shown_results(warehouse, requests["request_id"])
    top = max(TOPS)
    pairs: list[Pair] = []
    spans: list[tuple[int, int, int]] = []  # per request: first pair, baseline's, arm's
    mismatch = 0
    for r in requests.itertuples():
        base_ids, base_relevance = baseline[r.request_id]
        if isinstance(r.relevance, float) and np.isfinite(r.relevance):
            mismatch += abs(base_relevance - r.relevance) > 1e-4
        arm_ids = shown.get(r.request_id, [])[:top]
        cues = _cues(r.cues)
        spans.append((len(pairs), len(base_ids), len(arm_ids)))
        pairs += [Pair(r.request_id, p) for p in base_ids]  # the plain pipeline shows no cues
        pairs += [Pair(r.request_id, p, cues) for p in arm_ids]
    verdicts = judge.judge(requests, pairs)
    if len(verdicts) != len(pairs):
        raise RuntimeError(f"judge {judge.name} gave {len(verdicts)} verdicts for {len(pairs)}")
    rows = []
    for r, (start, nb, na) in zip(requests.itertuples(), spans, strict=True):
        middle, end = start + nb, start + nb + na
        base_v, arm_v = verdicts[start:middle], verdicts[middle:end]
        rows.append(
            {
                "request_id": r.request_id,
                "user_id": r.user_id,
                "triggered": r.triggered,
                "shown": r.shown,
                "changed": [p.product_id for p in pairs[start:middle]]
                != [p.product_id for p in pairs[middle:end]],
                **{f"base_top{k}": _top(base_v, k) for k in TOPS},
                **{f"arm_top{k}": _top(arm_v, k) for k in TOPS},
            }
        )
    if mismatch:
        notes.append(
            f"{mismatch} request(s) whose baseline searched again scores otherwise than logged "
            "(was the index rebuilt since?)"
        )
    table = pd.DataFrame(rows)
    table.attrs.update(requests=total, pairs=len(pairs), notes=notes)
    return table


def evaluate_relevance(
    warehouse: Warehouse,
    judge: RelevanceJudge,
    *,
    arm: str | None = "revision",
    days: tuple[str, str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    index: str = "hnsw",
) -> dict[str, Any]:
    """Top-1 / top-4 relevance of the baseline and of `arm` on `arm`'s requests (see the module
    docstring), for all requests and the trigger subset. `limit` judges a seeded random sample
    of that many requests."""
    table = relevance_table(
        warehouse, judge, arm=arm, days=days, limit=limit, seed=seed, index=index
    )
    notes = list(table.attrs["notes"])
    out: dict[str, Any] = {
        "arm": arm,
        "judge": judge.name,
        "requests": table.attrs["requests"],
        "evaluated": len(table),
        "pairs": table.attrs["pairs"],
        "all": _summary(table, n_boot, seed),
        "triggered": None,
        "judge_stats": judge.stats(),
        "notes": notes,
    }
    if table["triggered"].notna().any():
        subset = table[table["triggered"].fillna(False).astype(bool)]
        if len(subset):
            out["triggered"] = _summary(subset, n_boot, seed)
        else:
            notes.append("no triggered request among those evaluated")
    else:
        notes.append("no `triggered` column in the logs: no trigger-subset figures")
    return out


def truth_relevance(
    warehouse: Warehouse,
    arms: list[str],
    *,
    baseline: str = "baseline",
    world=None,
    days: tuple[str, str] | None = None,
    n_boot: int = 1000,
) -> tuple[dict[str, Any], list[str]]:
    """Table I for every arm but the baseline, by the simulator's truth (evaluation only), for
    the experiment report: ({arm: evaluation}, notes). Empty without `sim/truth`. Cheap: a
    vector search per request (about 2,000 requests a second on one core)."""
    from revision.errors import RevisionError
    from revision.experiment.judges import TruthJudge

    out: dict[str, Any] = {}
    notes: list[str] = []
    if not warehouse.exists(TRUTH):
        return out, notes
    for arm in arms:
        if arm == baseline:
            continue
        try:
            judge = TruthJudge(warehouse, world=world)
            out[arm] = evaluate_relevance(warehouse, judge, arm=arm, days=days, n_boot=n_boot)
        except (RevisionError, OSError) as exc:
            notes.append(f"relevance, arm {arm}: {exc}")
    return out, notes
