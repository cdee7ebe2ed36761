"""Evaluation only: the log stage's figures against the simulator's hidden truth.

No-click ratio per hidden intent and per photo kind, the bot filter's verdicts against the
labels, and the low-quality filter against the photos the simulator degraded on purpose.
Nothing here is fed back into a stage.
"""

from __future__ import annotations

import numpy as np

from revision.logs.bots import evaluate_bot_scores, precision_recall
from revision.logs.no_click import DEFAULT_SKEW_TOLERANCE, DEFAULT_WINDOW, open_logs, scan
from revision.tables import NO_CLICK, TRUTH
from revision.warehouse import Warehouse

# Simulator photo kinds the quality filter should catch ("off_topic" is a usable photo of the
# wrong thing: no pixel statistic can tell).
LOW_QUALITY_KINDS = ("dark", "blurred", "tiny")


def _ratio(num, den) -> float | None:
    return round(float(num) / float(den), 6) if den else None


def logs_evaluation(
    warehouse: Warehouse,
    *,
    window: float = DEFAULT_WINDOW,
    skew_tolerance: float = DEFAULT_SKEW_TOLERANCE,
) -> dict | None:
    """The `evaluation` block of `revision logs stats` (None without `sim/truth`)."""
    if not warehouse.exists(TRUTH):
        return None
    con, _ = open_logs(warehouse, window=window, skew_tolerance=skew_tolerance)
    try:
        return _evaluation(con, warehouse)
    finally:
        con.close()


def _evaluation(con, warehouse: Warehouse) -> dict:
    """EVALUATION ONLY: figures that need the simulator's hidden truth (never fed back)."""
    cols = {r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {scan(warehouse, TRUTH)}").fetchall()}
    out: dict = {"note": "evaluation only: uses the simulator's hidden truth (sim/truth)"}
    for column, key in (("intent", "no_click_by_intent"), ("photo_kind", "no_click_by_photo")):
        if column not in cols or "request_id" not in cols:
            continue
        rows = con.sql(f"""
            SELECT t.{column}, count(*), count(*) FILTER (NOT r.clicked)
            FROM reqc r JOIN {scan(warehouse, TRUTH)} t USING (request_id)
            GROUP BY 1 ORDER BY 1 NULLS LAST
        """).fetchall()
        out[key] = [
            {column: v, "requests": int(n), "no_click_ratio": _ratio(nc, n)} for v, n, nc in rows
        ]
    bots = evaluate_bot_scores(warehouse, TRUTH)
    if bots:
        out["bot_filter"] = bots
    if {"photo_kind", "request_id"} <= cols and warehouse.exists(NO_CLICK):
        # The quality filter against the photos the simulator degraded on purpose, over the
        # no-click requests of humans it judged (bots are dropped first, whatever the photo).
        con.register("ncq", warehouse.read(NO_CLICK, columns=["request_id", "drop_reason"]))
        rows = con.sql(f"""
            SELECT t.photo_kind, n.drop_reason = 'low_quality' AS flagged
            FROM ncq n JOIN {scan(warehouse, TRUTH)} t USING (request_id)
            WHERE n.drop_reason IS DISTINCT FROM 'bot'
              AND n.drop_reason IS DISTINCT FROM 'unreadable_image'
        """).fetchall()
        if rows:
            truth = np.array([r[0] in LOW_QUALITY_KINDS for r in rows])
            pred = np.array([bool(r[1]) for r in rows])
            by_kind: dict[str, list[int]] = {}
            for kind, flagged in rows:
                counts = by_kind.setdefault(str(kind), [0, 0])
                counts[0] += 1
                counts[1] += bool(flagged)
            out["quality_filter"] = {
                "degraded_kinds": list(LOW_QUALITY_KINDS),
                "requests": len(rows),
                **precision_recall(truth, pred),
                "flagged_by_kind": {
                    k: {"requests": n, "flagged": f} for k, (n, f) in sorted(by_kind.items())
                },
            }
    return out
