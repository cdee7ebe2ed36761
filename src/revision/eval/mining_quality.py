"""Mining quality against the simulator's truth: does some signal serve the hidden intent?

Evaluation only: this is the one place of the mining stage's code that reads `sim/truth`
(mining itself must find intents from the logs alone). For each hidden intent, the share of
mined no-click requests (signals ∪ errors of a run; an error serves nothing) with at least
one signal whose action would serve it, per `SERVES`. `exact` and `similar` are what the
baseline visual search already serves; they are reported apart and left out of the goal.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import pyarrow.compute as pc

from revision.errors import MissingArtifactError
from revision.tables import MINING_ERRORS, PRODUCTS, SIGNALS, TRUTH
from revision.warehouse import Warehouse

BASELINE_INTENTS = ("exact", "similar")
GOAL = 0.8


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w:/ ]+", " ", text.casefold()).split())


def serves(intent: str, action: str, info: str, pattern: str | None = None) -> bool:
    """Would a tool executing `action -> info` serve a user holding `intent`?

    >>> serves("variant", "Show other colour variants", "variant group 0123456")
    True
    >>> serves("same_pattern", "Refine search condition", "colour: black")
    False
    """
    a, i = _norm(action), _norm(info)
    if intent == "variant":
        return a == "show other colour variants"
    if intent == "cheaper":
        return a == "supplement cheaper products"
    if intent == "premium":
        return a == "supplement premium products"
    if intent == "same_pattern":
        if a == "refine search condition" and i.startswith("pattern:"):
            return True
        return a == "search by text description" and bool(pattern) and _norm(pattern) in i
    if intent == "other_department":
        return a == "show same type in another department" or (
            a == "refine search condition" and i.startswith("department:")
        )
    if intent == "info":
        return a in ("show material details", "show care details")
    if intent == "preference":
        return a == "ask a preference question"
    return False


def mining_quality(warehouse: Warehouse, run: str | None = None) -> dict[str, Any]:
    """Per intent: mined no-click requests, the share served by some signal, and the share
    served by the first signal; plus whether every tool-servable intent reaches `GOAL`."""
    if not warehouse.exists(TRUTH):
        raise MissingArtifactError(f"no {TRUTH} in {warehouse.root}: it exists for simulated logs")
    truth = warehouse.read(TRUTH, columns=["request_id", "intent", "target_product_id"])
    intent_of = dict(
        zip(truth.column("request_id").to_pylist(), truth.column("intent").to_pylist(), strict=True)
    )
    target_of = dict(
        zip(
            truth.column("request_id").to_pylist(),
            truth.column("target_product_id").to_pylist(),
            strict=True,
        )
    )
    patterns = _patterns(warehouse)
    signals = warehouse.read(SIGNALS, columns=["request_id", "position", "action", "info", "run"])
    if run is not None:
        signals = signals.filter(pc.equal(signals.column("run"), run))
    per_request: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for rid, pos, action, info in zip(
        *(signals.column(c).to_pylist() for c in ("request_id", "position", "action", "info")),
        strict=True,
    ):
        per_request[rid].append((pos, action, info or ""))
    failed: set[str] = set()
    if warehouse.exists(MINING_ERRORS):
        errors = warehouse.read(MINING_ERRORS, columns=["request_id", "run"])
        if run is not None:
            errors = errors.filter(pc.equal(errors.column("run"), run))
        failed = set(errors.column("request_id").to_pylist()) - set(per_request)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"requests": 0, "any": 0, "first": 0})
    unknown = 0
    for rid in [*per_request, *failed]:
        intent = intent_of.get(rid)
        if intent is None:  # bots, or requests from real logs
            unknown += 1
            continue
        row = counts[intent]
        row["requests"] += 1
        rows = sorted(per_request.get(rid, []))
        pattern = patterns.get(target_of.get(rid))
        hits = [serves(intent, action, info, pattern) for _, action, info in rows]
        row["any"] += any(hits)
        row["first"] += bool(hits and hits[0])
    per_intent = {}
    for intent, row in sorted(counts.items()):
        n = row["requests"]
        per_intent[intent] = {
            "requests": n,
            "served_share": round(row["any"] / n, 4) if n else None,
            "first_signal_share": round(row["first"] / n, 4) if n else None,
            "served_by": "baseline" if intent in BASELINE_INTENTS else "signals",
        }
    servable = {k: v for k, v in per_intent.items() if k not in BASELINE_INTENTS}
    shares = [v["served_share"] for v in servable.values() if v["served_share"] is not None]
    total = sum(v["requests"] for v in servable.values())
    return {
        "run": run,
        "per_intent": per_intent,
        "servable_requests": total,
        "servable_served_share": round(
            sum(v["served_share"] * v["requests"] for v in servable.values()) / total, 4
        )
        if total
        else None,
        "min_served_share": min(shares) if shares else None,
        "goal": GOAL,
        "goal_met": bool(shares) and min(shares) >= GOAL,
        "requests_without_truth": unknown,
    }


def _patterns(warehouse: Warehouse) -> dict[str, str]:
    if not warehouse.exists(PRODUCTS):
        return {}
    products = warehouse.read(PRODUCTS, columns=["product_id", "pattern"])
    return dict(
        zip(
            products.column("product_id").to_pylist(),
            products.column("pattern").to_pylist(),
            strict=True,
        )
    )


def format_markdown(report: dict[str, Any]) -> str:
    lines = [
        "| intent | no-click requests | served by some signal | by the first signal |",
        "|---|---:|---:|---:|",
    ]
    for intent, row in report["per_intent"].items():
        if row["served_by"] == "baseline":
            lines.append(f"| {intent} | {row['requests']} | (baseline search) | |")
            continue
        lines.append(
            f"| {intent} | {row['requests']} | {row['served_share']:.1%} | "
            f"{row['first_signal_share']:.1%} |"
        )
    if report["servable_served_share"] is not None:
        lines.append(
            f"| **all tool-servable** | {report['servable_requests']} | "
            f"{report['servable_served_share']:.1%} | |"
        )
    return "\n".join(lines)
