"""Price range segmentation: tiers by catalog price quantiles, cheaper or premium supplements.

The paper's expert rule: "if the retrieval results show large price discrepancies concentrated
in low ranges, suggest similar high-end products". Prices are compared within the product type
(a premium sock is cheaper than a basic coat), by the quantiles of that type's priced catalog
products. A product without a known price is never counted as cheaper or premium: it has no
tier, and no price is ever invented for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from revision.tools._base import Component, ToolContext, ToolStage
from revision.tools.builtin._common import new_hits, place, rows_of, title_has
from revision.tools.catalog import MISSING
from revision.tools.info import SAME_ITEM_SCORE, Info


class PriceSegmentation(Component):
    name = "price_segmentation"
    title = "Price range segmentation"
    description = (
        "Split the results into price tiers (low, mid, high for the product type) and add "
        "similar products from a cheaper or a more premium tier. Input: direction (cheaper, "
        "premium or tiers) and optionally a price bound. Output: similar products of the "
        "wanted price placed near the top; the tiers in the request's facts."
    )
    stage = ToolStage.RANK
    keywords = (
        "price",
        "cheaper",
        "cheap",
        "premium",
        "budget",
        "expensive",
        "luxury",
        "supplement",
        "tier",
        "affordable",
    )

    def run(
        self,
        ctx: ToolContext,
        direction: Literal["cheaper", "premium", "tiers"] = "tiers",
        min_price: float | None = None,
        max_price: float | None = None,
        margin: float = 0.25,
        count: int = 4,
        position: int = 2,
    ) -> None:
        """Supplement similar products from another price tier.

        Args:
            direction: cheaper, premium, or tiers (two of each).
            min_price: only products at or above this price (premium).
            max_price: only products at or below this price (cheaper).
            margin: how much cheaper or dearer than the matched product, as a fraction.
            count: how many products to add.
            position: 1-based rank where the added products start.
        """
        cat = ctx.catalog
        candidates = ctx.search.candidates
        top_rows = rows_of(ctx, candidates[: ctx.top_k])
        reference, matched = self._reference(ctx, candidates[: ctx.top_k], top_rows)
        tiers = cat.tiers(top_rows)
        ctx.facts["price_tiers"] = {
            "reference": reference,
            "tiers": {c.product_id: int(t) for c, t in zip(candidates, tiers, strict=False)},
        }
        if reference is None and min_price is None and max_price is None:
            ctx.notes["skipped"] = "no priced result to compare with"
            return
        # the matched product's type and audience; else what the photo shows
        info = ctx.query_info
        if matched is not None:
            category = int(cat.codes["category"][matched])
            audience = int(cat.codes["index_group"][matched])
        else:
            category = cat.code("category", info.value("category"))
            audience = cat.code("index_group", info.value("index_group"))
        if category == MISSING and len(top_rows):
            category = int(cat.codes["category"][top_rows[0]])
        wanted = {"cheaper": [("cheaper", count)], "premium": [("premium", count)]}.get(
            direction, [("cheaper", (count + 1) // 2), ("premium", count // 2)]
        )
        added = []
        shown = set(top_rows[: max(position - 1, 0)].tolist())
        for side, n in wanted:
            bounds = self._bounds(side, reference, margin, min_price, max_price)
            if bounds is None:
                continue
            lo, hi = bounds
            rows, scores, relaxed = self._supplement(ctx, category, audience, lo, hi, n, shown)
            shown.update(rows.tolist())
            added.extend(new_hits(ctx, rows, scores, self.name))
            ctx.notes[side] = {"added": len(rows), "price_range": [lo, hi], "relaxed": relaxed}
        if direction == "tiers":  # cheaper first, then premium, each best-first
            added.sort(key=lambda h: h.price or 0.0)
        ctx.search.candidates = place(candidates, added, position)

    @staticmethod
    def _reference(ctx, hits, rows) -> tuple[float | None, int | None]:
        """(price, row) of the matched product: the best priced result when it is close enough
        to be the item; else (median price of the priced results shown, None)."""
        prices = ctx.catalog.price[rows] if len(rows) else np.zeros(0)
        priced = ~np.isnan(prices)
        if not priced.any():
            return None, None
        first = int(np.argmax(priced))
        if hits[first].score >= SAME_ITEM_SCORE - 0.1:
            return float(prices[first]), int(rows[first])
        return float(np.median(prices[priced])), None

    @staticmethod
    def _bounds(side, reference, margin, min_price, max_price) -> tuple[float, float] | None:
        """The wanted price range: cheaper (or dearer) than the matched product by `margin`,
        and within the given bounds."""
        if side == "cheaper":
            caps = [
                p
                for p in (max_price, None if reference is None else reference * (1 - margin))
                if p is not None
            ]
            return ((min_price or 0.0), min(caps)) if caps else None
        floors = [
            p
            for p in (min_price, None if reference is None else reference * (1 + margin))
            if p is not None
        ]
        if not floors:
            return None
        lo = max(floors)
        return lo, (max_price if max_price is not None and max_price > lo else np.inf)

    @staticmethod
    def _supplement(ctx, category, audience, lo, hi, n, shown):
        """Nearest priced products in [lo, hi] of the type and audience; drops the audience,
        then the type, when none qualify."""
        cat = ctx.catalog
        price = cat.price
        in_range = (price >= lo) & (price <= hi)  # NaN compares False: unpriced never qualify
        for relaxed, mask in (
            ("none", (cat.codes["category"] == category) & (cat.codes["index_group"] == audience)),
            ("audience", cat.codes["category"] == category),
        ):
            pool = np.flatnonzero(in_range & mask)
            if len(pool):
                rows, scores = ctx.nearest(pool, n, exclude=list(shown))
                if len(rows):
                    return rows, scores, relaxed
        return np.zeros(0, np.int64), np.zeros(0, np.float32), "no match"

    def from_info(self, info: Info) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if info.direction:
            out["direction"] = info.direction
        if info.min_price is not None:
            out["min_price"] = info.min_price
        if info.max_price is not None:
            out["max_price"] = info.max_price
        return out

    @classmethod
    def defaults_for(cls, title: str, keywords: Sequence[str] = ()) -> dict[str, Any]:
        if title_has(title, "cheap", "budget", "afford", "lower"):
            return {"direction": "cheaper"}
        if title_has(title, "premium", "luxury", "high-end", "expensive"):
            return {"direction": "premium"}
        return {}
