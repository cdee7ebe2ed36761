"""Log statistics: volumes, CTR, no-click ratio, bot share (evaluation figures against the
simulator's truth live in `revision.eval.logs_truth`; this stage never reads it).

Trade-off: the figures are recomputed from the raw log tables with the same rules as the
extraction (`open_logs`), not read from `logs/no_click`, so they are right even before the
first extraction; only the filter figures (drop reasons, bot share) need an extraction run.

Definitions (docs/logs.md): `ctr` = clicks on logged requests / impressions; `no_click_ratio`
= requests without a click inside the window / requests; `bot_share` = share of requests sent
by users the last extraction flagged as bots; `cvr` = orders / clicks.
"""

from __future__ import annotations

from revision.logs.no_click import (
    DEFAULT_SKEW_TOLERANCE,
    DEFAULT_WINDOW,
    bad_input_counts,
    open_logs,
    scan,
)
from revision.tables import BOT_SCORES, CLICKS, IMPRESSIONS, NO_CLICK, ORDERS
from revision.warehouse import Warehouse

MAX_RANK = 20  # CTR by rank is reported for ranks 1..MAX_RANK


def _ratio(num, den) -> float | None:
    return round(float(num) / float(den), 6) if den else None


def compute_stats(
    warehouse: Warehouse,
    *,
    window: float = DEFAULT_WINDOW,
    skew_tolerance: float = DEFAULT_SKEW_TOLERANCE,
) -> dict:
    """The figures of `revision logs stats --json` (see the module docstring)."""
    con, facts = open_logs(warehouse, window=window, skew_tolerance=skew_tolerance)
    requests, users, no_click = con.sql(
        "SELECT count(*), count(DISTINCT user_id), count(*) FILTER (NOT clicked) FROM reqc"
    ).fetchall()[0]
    out: dict = {
        "requests": int(requests),
        "users": int(users),
        "impressions": None,
        "clicks": facts["clicks"] - facts["orphan_clicks"],
        "orders": None,
        "gmv": None,
        "ctr": None,
        "cvr": None,
        "no_click": int(no_click),
        "no_click_ratio": _ratio(no_click, requests),
        "bot_share": None,
        "bot_user_share": None,
        "window_s": window,
        "rules": bad_input_counts(facts),
    }
    if warehouse.exists(IMPRESSIONS):
        con.execute(f"""CREATE TEMP VIEW imp AS SELECT i.request_id, i.product_id, i.rank
                        FROM {scan(warehouse, IMPRESSIONS)} i SEMI JOIN reqc USING (request_id)""")
        out["impressions"] = int(con.sql("SELECT count(*) FROM imp").fetchall()[0][0])
        out["ctr"] = _ratio(out["clicks"], out["impressions"])
    if warehouse.exists(ORDERS):
        n, gmv = con.sql(f"""SELECT count(*), sum(price) FROM {scan(warehouse, ORDERS)} o
                             SEMI JOIN reqc USING (request_id)""").fetchall()[0]
        out["orders"], out["gmv"] = int(n), round(float(gmv or 0.0), 2)
        out["cvr"] = _ratio(n, out["clicks"])

    out["per_day"] = [
        {"dt": dt, "requests": int(n), "no_click": int(nc), "no_click_ratio": _ratio(nc, n)}
        for dt, n, nc in con.sql("""SELECT CAST(day AS VARCHAR) AS dt, count(*),
                                           count(*) FILTER (NOT clicked)
                                    FROM reqc GROUP BY dt ORDER BY dt""").fetchall()
    ]
    out["ctr_by_rank"] = []
    if warehouse.exists(IMPRESSIONS) and warehouse.exists(CLICKS):
        rows = con.sql(f"""
            WITH c AS (SELECT DISTINCT request_id, product_id FROM {scan(warehouse, CLICKS)})
            SELECT imp.rank, count(*) AS n, count(c.request_id) AS clicked
            FROM imp LEFT JOIN c USING (request_id, product_id)
            WHERE imp.rank <= {MAX_RANK} GROUP BY imp.rank ORDER BY imp.rank
        """).fetchall()
        out["ctr_by_rank"] = [
            {"rank": int(r), "impressions": int(n), "ctr": _ratio(c, n)} for r, n, c in rows
        ]

    if warehouse.exists(BOT_SCORES):
        con.register("bs", warehouse.read(BOT_SCORES))
        method, bot_req, bot_users, all_users = con.sql("""
            SELECT any_value(method), sum(n_requests) FILTER (is_bot), count(*) FILTER (is_bot),
                   count(*) FROM bs""").fetchall()[0]
        if method != "none":
            out["bot_filter"] = method
            out["bot_share"] = _ratio(bot_req or 0, requests)
            out["bot_user_share"] = _ratio(bot_users, all_users)
    if warehouse.exists(NO_CLICK):
        nc = warehouse.read(NO_CLICK, columns=["kept", "drop_reason"])
        con.register("nc", nc)
        out["extraction"] = {
            "no_click_rows": nc.num_rows,
            "kept": int(con.sql("SELECT count(*) FILTER (kept) FROM nc").fetchall()[0][0]),
            "dropped": dict(
                con.sql("""SELECT drop_reason, count(*) FROM nc
                                       WHERE drop_reason IS NOT NULL GROUP BY 1
                                       ORDER BY 2 DESC""").fetchall()
            ),
        }
    con.close()
    return out
