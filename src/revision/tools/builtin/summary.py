"""Result summarisation: group the page by its most informative attribute, one short card.

The grouping attribute is the one whose values are spread most evenly over the page (highest
entropy): a page of ten black dresses in three cuts is summarised by type, not by colour. The
card is built from catalog labels only (no generated prose), so it cannot state a falsehood
about a product.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from revision.search._base import SummaryCue
from revision.tools._base import Component, ToolContext, ToolStage
from revision.tools.builtin._common import Attribute, rows_of
from revision.tools.info import Info

SUMMARY_ATTRIBUTES = ("category", "colour", "pattern", "index_group")
TIER_NAMES = ("low", "mid", "high")


def entropy(values: list[Any]) -> float:
    counts = np.array(list(Counter(values).values()), dtype=float)
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def most_informative(ctx: ToolContext, rows: np.ndarray, attributes=SUMMARY_ATTRIBUTES) -> str:
    cat = ctx.catalog
    best, best_h = attributes[0], -1.0
    for attr in attributes:
        h = entropy([int(c) for c in cat.codes[attr][rows] if c >= 0])
        if h > best_h + 1e-9:
            best, best_h = attr, h
    return best


class ResultSummary(Component):
    name = "result_summary"
    title = "Result summarisation"
    description = (
        "Summarise the results in a short card: how they group by their most telling "
        "attribute (type, colour, pattern or audience), the price range and any labels. "
        "Input: the top results (optionally the attribute to group by). Output: a summary "
        "card with the groups and their products."
    )
    stage = ToolStage.DISPLAY
    keywords = ("summarise", "summarize", "summary", "overview", "group")
    after = ("product_labeling",)  # the card counts the labels when both run

    def run(
        self, ctx: ToolContext, attribute: Attribute | None = None, max_groups: int = 4
    ) -> None:
        """Add a summary card for the displayed results.

        Args:
            attribute: group by this attribute instead of the most informative one.
            max_groups: at most this many groups (the rest count as "other").
        """
        results = ctx.search.results
        if not results:
            ctx.notes["skipped"] = "no results"
            return
        cat = ctx.catalog
        rows = rows_of(ctx, results)
        attribute = attribute or most_informative(ctx, rows)
        labels = [cat.label(attribute, int(r)) or "unknown" for r in rows]
        counts = Counter(labels)
        groups = []
        for value, n in counts.most_common(max_groups):
            groups.append(
                {
                    "value": value,
                    "count": n,
                    "product_ids": [
                        h.product_id for h, v in zip(results, labels, strict=True) if v == value
                    ],
                }
            )
        other = len(results) - sum(g["count"] for g in groups)
        prices = cat.price[rows]
        priced = prices[~np.isnan(prices)]
        parts = [
            f"{len(results)} results by {attribute.replace('_', ' ')}: "
            + ", ".join(f"{g['value']} ({g['count']})" for g in groups)
            + (f", other ({other})" if other else "")
        ]
        price_range = None
        if len(priced):
            price_range = [round(float(priced.min()), 6), round(float(priced.max()), 6)]
            tiers = Counter(TIER_NAMES[t] for t in cat.tiers(rows) if t >= 0)
            tier_text = ", ".join(f"{n} {t}" for t, n in sorted(tiers.items()))
            parts.append(
                f"prices {price_range[0]:.4f}–{price_range[1]:.4f} ({tier_text}; "
                f"{len(rows) - len(priced)} without a price)"
            )
        badges = Counter(b for h in results for b in h.badges)
        if badges:
            parts.append("labelled " + ", ".join(f"{b} ({n})" for b, n in badges.most_common()))
        ctx.search.cues.append(
            SummaryCue(
                attribute=attribute,
                groups=groups,
                price_range=price_range,
                text="; ".join(parts) + ".",
            )
        )

    def from_info(self, info: Info) -> dict[str, Any]:
        return {"attribute": info.mentioned[0]} if info.mentioned else {}
