"""Evaluation only: do planned tools serve the user's hidden intent?

A tool-list entry serves an intent by what its component does with the inputs its title implies
(`Component.defaults_for`): a price segmentation titled "cheaper" serves `cheaper`, a search
refinement titled "department" serves `other_department`, and so on. `plan_coverage` reports,
over requests whose hidden intent some tool can serve, the share whose plan holds a tool that
serves it, and the mean plan length; `intent_bound` the same for a classifier that knows the
photographed product's true attributes (the "how much is knowable" figure of the issues).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from revision.eval.mining_quality import BASELINE_INTENTS
from revision.tables import TRUTH
from revision.warehouse import Warehouse


def tool_intents(tools) -> dict[int, set[str]]:
    """Tool index -> the hidden intents it serves (by component and implied inputs)."""
    from revision.tools import registry

    reg = registry()
    out: dict[int, set[str]] = {}
    for entry in tools.active():
        cls = reg.get(entry.component)
        d = cls.defaults_for(entry.title, tuple(entry.keywords))
        serves: set[str] = set()
        if entry.component == "variant_expansion":
            serves.add("variant")
        elif entry.component == "price_segmentation":
            direction = d.get("direction")
            serves |= {direction} if direction in ("cheaper", "premium") else {"cheaper", "premium"}
        elif entry.component == "search_refinement":
            if d.get("other") == "index_group":
                serves.add("other_department")
            if "pattern" in (d.get("same") or []):
                serves.add("same_pattern")
        elif entry.component == "metadata_display":
            serves.add("info")
        elif entry.component == "preference_question":
            serves.add("preference")
        out[entry.index] = serves
    return out


def plan_coverage(
    warehouse: Warehouse,
    request_ids: Sequence[str],
    plans: Sequence[Sequence[int]],
    tools,
) -> dict[str, Any]:
    """Share of requests (with a tool-servable hidden intent) whose plan serves it."""
    truth = warehouse.read_pandas(TRUTH, columns=["request_id", "intent"])
    intent_of = dict(zip(truth["request_id"], truth["intent"], strict=True))
    serves = tool_intents(tools)
    rows: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0])
    for rid, plan in zip(request_ids, plans, strict=True):
        intent = intent_of.get(rid)
        if intent is None or intent in BASELINE_INTENTS:
            continue
        hit = any(intent in serves.get(t, ()) for t in plan)
        for key in ("all", f"intent:{intent}"):
            r = rows[key]
            r[0] += 1
            r[1] += hit
            r[2] += len(plan)
    return {
        k: {
            "requests": int(n),
            "served": round(h / n, 4) if n else None,
            "tools_per_plan": round(t / n, 3) if n else None,
        }
        for k, (n, h, t) in sorted(rows.items())
    }
