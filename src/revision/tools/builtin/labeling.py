"""Target product labelling: badges that tell a user which result is which.

Badges come from comparisons a user would otherwise make by eye: "same item" (similarity at
or above a threshold: the photographed product itself), "same design" (another variant of that
item), "same colour" (the colour the query photo shows), "cheaper" (a known price below the
matched item's; unpriced products are never labelled cheaper).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from revision.search._base import LabelCue
from revision.tools._base import Component, ToolContext, ToolStage
from revision.tools.builtin._common import rows_of
from revision.tools.catalog import MISSING
from revision.tools.info import SAME_ITEM_SCORE, Info

Badge = Literal["same item", "same design", "same colour", "cheaper"]
ALL_BADGES: tuple[str, ...] = ("same item", "same design", "same colour", "cheaper")


class ProductLabeling(Component):
    name = "product_labeling"
    title = "Target product labelling"
    description = (
        "Label the results that answer the query: 'same item' on the photographed product, "
        "'same design' on its other variants, 'same colour' on results in the photo's colour, "
        "'cheaper' on results priced below the matched item. Input: the results and the query. "
        "Output: badges on the matching results."
    )
    stage = ToolStage.DISPLAY
    keywords = ("label", "labelling", "labeling", "mark", "badge", "highlight", "target")
    extractable = frozenset({"colour"})

    def run(
        self,
        ctx: ToolContext,
        badges: list[Badge] | None = None,
        colour: str | None = None,
        same_item_score: float = SAME_ITEM_SCORE,
    ) -> None:
        """Add badges to the displayed results.

        Args:
            badges: which badges to give (default: all four).
            colour: the colour for "same colour" (default: the colour seen in the photo).
            same_item_score: similarity from which a result is the photographed item.
        """
        wanted = set(badges or ALL_BADGES)
        results = ctx.search.results
        if not results:
            return
        cat = ctx.catalog
        rows = rows_of(ctx, results)
        scores = np.array([h.score for h in results])
        marks: list[list[str]] = [[] for _ in results]
        same = scores >= same_item_score
        if same.any():
            best = int(np.argmax(scores))  # one item is photographed: label only the best
            if "same item" in wanted:
                marks[best].append("same item")
            if "same design" in wanted and cat.group_names[cat.group[rows[best]]]:
                group = cat.group[rows[best]]
                for i in np.flatnonzero(cat.group[rows] == group):
                    if i != best:
                        marks[i].append("same design")
            anchor = best
        else:
            anchor = 0
        if "same colour" in wanted:
            code = cat.code("colour", colour) if colour else MISSING
            if code != MISSING:
                for i in np.flatnonzero(cat.codes["colour"][rows] == code):
                    marks[i].append("same colour")
        if "cheaper" in wanted:
            ref = cat.price[rows[anchor]]
            if np.isnan(ref):
                priced = np.flatnonzero(~np.isnan(cat.price[rows]))
                ref = cat.price[rows[priced[0]]] if len(priced) else np.nan
            if not np.isnan(ref):
                for i in np.flatnonzero(cat.price[rows] < ref):  # NaN < x is False
                    marks[i].append("cheaper")
        for hit, labels in zip(results, marks, strict=True):
            for badge in labels:
                if badge not in hit.badges:
                    hit.badges.append(badge)
                    ctx.search.cues.append(LabelCue(product_id=hit.product_id, badge=badge))

    def from_query(self, ctx: ToolContext, inputs: dict[str, Any]) -> dict[str, Any]:
        if "colour" in inputs or "same colour" not in (inputs.get("badges") or ALL_BADGES):
            return {}
        colour = ctx.query_info.value("colour")
        return {"colour": colour} if colour else {}

    def from_info(self, info: Info) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "colour" in info.attributes:
            out["colour"] = info.attributes["colour"]
        low = info.raw.lower()
        named = [b for b in ALL_BADGES if b in low or b.replace(" ", "") in low.replace(" ", "")]
        if "cheap" in low and "cheaper" not in named:
            named.append("cheaper")
        if named:
            out["badges"] = named
        return out
