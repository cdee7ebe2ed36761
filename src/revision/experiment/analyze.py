"""A/B analysis from the logs alone: per arm, all requests and the trigger subset.

Works on any warehouse whose `logs/requests` carry an arm (`variant`) and, for the trigger
subset, the boolean `triggered` (the trigger rule's decision for the request, logged in every
arm whether or not the arm acted on it). No simulator is needed; where `sim/truth` exists the
no-click ratio is also broken down by hidden intent (evaluation only).

Metrics, per arm: requests, users, CTR (clicks / impressions), no-click ratio (requests with no
click within the window / requests), CVR (orders / clicks), orders and GMV per request.
Lifts are relative to the baseline arm; 95% intervals and two-sided p-values come from a
bootstrap over **users** (requests of one user are not independent), with Poisson weights so
that both arms are resampled in one vectorised pass.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from revision.errors import InputError
from revision.logs.no_click import DEFAULT_WINDOW, open_logs, scan
from revision.tables import CLICKS, IMPRESSIONS, ORDERS, REQUESTS, TRUTH
from revision.warehouse import Warehouse

METRICS = ("ctr", "no_click_ratio", "cvr", "orders_per_request", "gmv_per_request")
# metric -> (numerator, denominator) over per-user sums
RATIOS = {
    "ctr": ("clicks", "impressions"),
    "no_click_ratio": ("no_click", "requests"),
    "cvr": ("orders", "clicks"),
    "orders_per_request": ("orders", "requests"),
    "gmv_per_request": ("gmv", "requests"),
}
SUMS = ("requests", "no_click", "clicks", "impressions", "orders", "gmv")


def request_table(
    warehouse: Warehouse,
    window: float = DEFAULT_WINDOW,
    days: tuple[str, str] | None = None,
) -> pd.DataFrame:
    """One row per request: arm, user, day, triggered, no_click, clicks, impressions, orders,
    gmv (and the hidden intent where the simulator's truth exists)."""
    con, _ = open_logs(warehouse, window=window)
    try:
        cols = {
            r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {scan(warehouse, REQUESTS)}").fetchall()
        }
        if "variant" not in cols:
            raise InputError(
                f"{REQUESTS} has no `variant` column: an experiment's logs name each request's arm"
            )
        triggered = "r.triggered" if "triggered" in cols else "NULL::BOOLEAN"
        frame = con.sql(f"""
            SELECT q.request_id, q.user_id, CAST(q.day AS VARCHAR) AS day,
                   r.variant AS arm, {triggered} AS triggered, NOT q.clicked AS no_click
            FROM reqc q JOIN (SELECT DISTINCT ON (request_id) * FROM {scan(warehouse, REQUESTS)})
                 r USING (request_id) {_between(days)}""").df()
        for table, name, expr in (
            (CLICKS, "clicks", "count(*)"),
            (IMPRESSIONS, "impressions", "count(*)"),
            (ORDERS, "orders", "count(*)"),
            (ORDERS, "gmv", "coalesce(sum(price), 0)"),
        ):
            if warehouse.exists(table):
                part = con.sql(
                    f"SELECT request_id, {expr} AS {name} FROM {scan(warehouse, table)} GROUP BY 1"
                ).df()
                frame = frame.merge(part, on="request_id", how="left")
            else:
                frame[name] = 0
    finally:
        con.close()
    frame[["clicks", "impressions", "orders", "gmv"]] = (
        frame[["clicks", "impressions", "orders", "gmv"]].fillna(0).astype(float)
    )
    frame["requests"] = 1.0
    frame["no_click"] = frame["no_click"].astype(float)
    if warehouse.exists(TRUTH):
        truth = warehouse.read_pandas(TRUTH, columns=["request_id", "intent", "is_bot"])
        frame = frame.merge(truth.drop_duplicates("request_id"), on="request_id", how="left")
    return frame


def _between(days: tuple[str, str] | None) -> str:
    if days is None:
        return ""
    first, last = (str(d) for d in days)
    for d in (first, last):
        if len(d) != 10 or not d.replace("-", "").isdigit():
            raise InputError(f"days {days}: expected YYYY-MM-DD")
    return f"WHERE CAST(q.day AS VARCHAR) BETWEEN '{first}' AND '{last}'"


def _where(warehouse: Warehouse, days: tuple[str, str] | None) -> str:
    """` between FIRST and LAST (days logged: …)`: where an error about a days range looked."""
    if days is None:
        return ""
    logged = sorted(
        p.name[3:] for p in warehouse.table_dir(REQUESTS).iterdir() if p.name.startswith("dt=")
    )
    span = f" (days logged: {logged[0]} … {logged[-1]})" if logged else ""
    return f" between {days[0]} and {days[1]}{span}"


def _user_sums(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.groupby("user_id")[list(SUMS)].sum()


def _ratios(sums: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Ratio metrics for each bootstrap replicate: `sums` (users, len(SUMS)), `weights`
    (replicates, users)."""
    totals = weights @ sums  # (replicates, len(SUMS))
    idx = {name: i for i, name in enumerate(SUMS)}
    out = {}
    for metric, (num, den) in RATIOS.items():
        d = totals[:, idx[den]]
        out[metric] = np.where(d > 0, totals[:, idx[num]] / np.maximum(d, 1e-12), np.nan)
    return out


def compare(
    frame: pd.DataFrame, arm: str, baseline: str, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Metrics of `arm` and `baseline` on `frame`'s requests, with lifts, intervals, p-values."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    stats = {}
    for name in (baseline, arm):
        part = frame[frame["arm"] == name]
        if part.empty:
            raise InputError(f"arm {name!r} has no requests here")
        sums = _user_sums(part).to_numpy(float)
        point = _ratios(sums, np.ones((1, len(sums))))
        boot = _ratios(sums, rng.poisson(1.0, (n_boot, len(sums))).astype(float))
        stats[name] = (point, boot)
        out[name] = {
            "requests": int(part["requests"].sum()),
            "users": int(part["user_id"].nunique()),
            **{m: _round(point[m][0]) for m in METRICS},
        }
    lifts = {}
    for m in METRICS:
        p_b, b_b = stats[baseline][0][m][0], stats[baseline][1][m]
        p_a, b_a = stats[arm][0][m][0], stats[arm][1][m]
        lift = p_a / p_b - 1 if p_b else np.nan
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 replicates are dropped
            boot = b_a / b_b - 1
        boot = boot[np.isfinite(boot)]
        if len(boot) == 0 or not np.isfinite(lift):
            lifts[m] = {"lift": None}
            continue
        lo, hi = np.quantile(boot, [0.025, 0.975])
        p = min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean()))
        lifts[m] = {"lift": _round(lift), "ci95": [_round(lo), _round(hi)], "p": _round(p)}
    out["lift"] = lifts
    return out


def _round(x) -> float | None:
    x = float(x)
    return round(x, 5) if np.isfinite(x) else None


def analyze(
    warehouse: Warehouse,
    *,
    baseline: str = "baseline",
    window: float = DEFAULT_WINDOW,
    n_boot: int = 1000,
    seed: int = 0,
    humans_only: bool = True,
    days: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Every arm against `baseline`, for all requests and for the trigger subset; per hidden
    intent on the trigger subset when the simulator's truth exists; daily no-click series.
    `days` = (first, last) restricts to an experiment's days."""
    frame = request_table(warehouse, window, days)
    notes: list[str] = []
    if frame.empty:
        raise InputError(f"no requests in {REQUESTS}{_where(warehouse, days)}")
    logged_arms = sorted(frame["arm"].dropna().unique())
    if not logged_arms:
        raise InputError(
            f"every request in {REQUESTS}{_where(warehouse, days)} has an empty `variant`: "
            "an experiment's logs name each request's arm"
        )
    if humans_only and "is_bot" in frame:
        frame = frame[~frame["is_bot"].fillna(False).astype(bool)]
    arms = sorted(frame["arm"].dropna().unique())
    for arm in logged_arms:
        if arm not in arms:
            notes.append(f"arm {arm}: no human requests (only bots), left out")
    if baseline not in arms:
        what = "only bots' requests" if baseline in logged_arms else "no requests"
        raise InputError(
            f"{what} of the baseline arm {baseline!r}{_where(warehouse, days)}; "
            f"arms with requests: {', '.join(arms) or 'none'}"
        )
    if days is not None:
        first, last = (date.fromisoformat(str(d)) for d in days)
        seen = set(frame["day"])
        empty = [
            d.isoformat()
            for d in (first + timedelta(days=i) for i in range((last - first).days + 1))
            if d.isoformat() not in seen
        ]
        if empty:
            notes.append(f"no requests on {len(empty)} day(s) of the range: {', '.join(empty)}")
    has_trigger = frame["triggered"].notna().any()
    out: dict[str, Any] = {
        "arms": arms,
        "baseline": baseline,
        "requests": len(frame),
        "trigger_share": _round(frame["triggered"].fillna(False).mean()) if has_trigger else None,
        "all": {},
        "triggered": {},
        "notes": notes,
    }
    if not has_trigger:
        out["notes"].append("no `triggered` column in the logs: no trigger-subset figures")
    subset = frame[frame["triggered"].fillna(False).astype(bool)] if has_trigger else None
    for arm in arms:
        if arm == baseline:
            continue
        out["all"][arm] = compare(frame, arm, baseline, n_boot=n_boot, seed=seed)
        if subset is not None:
            try:
                out["triggered"][arm] = compare(subset, arm, baseline, n_boot=n_boot, seed=seed)
            except InputError as exc:
                out["notes"].append(f"trigger subset, arm {arm}: {exc}")
    out["daily"] = (
        frame.groupby(["day", "arm"])["no_click"].mean().round(5).unstack().to_dict(orient="index")
    )
    if "intent" in frame and subset is not None:
        per = subset.dropna(subset=["intent"]).groupby(["intent", "arm"])["no_click"]
        out["per_intent_triggered"] = {
            f"{i}|{a}": {"requests": int(n), "no_click_ratio": _round(r)}
            for (i, a), n, r in zip(per.size().index, per.size(), per.mean(), strict=True)
        }
    return out
