"""Same design in other variants: the other members of the top results' variant groups.

Colour variants of one design embed almost alike (ImageNet features are colour-blind), so they
usually sit among the candidates already, just below the page; this tool moves them right under
their group mate, the ones in a different colour from the matched product first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from revision.errors import InputError
from revision.search._base import Hit
from revision.tools._base import Component, ToolContext, ToolStage
from revision.tools.builtin._common import new_hits, rows_of
from revision.tools.info import Info


class VariantExpansion(Component):
    name = "variant_expansion"
    title = "Same design in other variants"
    description = (
        "Show the same design in its other variants (colours, cuts) right under the matched "
        "product. Input: the matched products (the top results) or a variant group. "
        "Output: the design's other variants placed next to it."
    )
    stage = ToolStage.RANK
    keywords = (
        "variant",
        "variants",
        "colour variants",
        "other colours",
        "other colors",
        "same design",
        "version",
        "colourway",
    )

    def run(
        self,
        ctx: ToolContext,
        variant_group: str | None = None,
        product_id: str | None = None,
        top: int = 2,
        per_group: int = 4,
    ) -> None:
        """Place each matched design's other variants right after it.

        Args:
            variant_group: expand this variant group instead of the top results' groups.
            product_id: expand the group of this product instead of the top results'.
            top: how many of the top results to expand.
            per_group: at most this many variants per design.
        """
        cat = ctx.catalog
        candidates = ctx.search.candidates
        anchors: list[tuple[int, np.ndarray]] = []  # (position in candidates, group rows)
        if variant_group is not None or product_id is not None:
            if product_id is not None:
                if product_id not in ctx.engine.row_of:
                    raise InputError(f"product {product_id!r} is not in the index")
                group = int(cat.group[cat.rows_of([product_id])[0]])
            else:
                group = variant_group
            members = cat.group_rows(group)
            cand_rows = rows_of(ctx, candidates)
            at = np.flatnonzero(np.isin(cand_rows, members))
            anchors.append((int(at[0]) if len(at) else 0, members))
        else:
            cand_rows = rows_of(ctx, candidates[: max(top, 1)])
            seen: set[int] = set()
            for i, row in enumerate(cand_rows[:top]):
                g = int(cat.group[row])
                if g in seen or not cat.group_names[g]:
                    continue
                seen.add(g)
                anchors.append((i, cat.group_rows(g)))
        placed: set[str] = set()
        out: list[Hit] = list(candidates)
        added = 0
        for pos, members in reversed(anchors):  # from the bottom so positions stay valid
            anchor_row = cat.rows_of([out[pos].product_id])[0] if out else -1
            others = members[members != anchor_row]
            if not len(others):
                continue
            sims = cat.similarity(ctx.query_vector, others)
            anchor_colour = cat.codes["colour"][anchor_row] if anchor_row >= 0 else -1
            other_colour = cat.codes["colour"][others] != anchor_colour
            order = np.lexsort((-sims, ~other_colour))[:per_group]
            hits = [
                h
                for h in new_hits(ctx, others[order], sims[order], self.name)
                if h.product_id not in placed
            ]
            placed.update(h.product_id for h in hits)
            ids = {h.product_id for h in hits}
            head = [h for h in out[: pos + 1] if h.product_id not in ids]
            tail = [h for h in out[pos + 1 :] if h.product_id not in ids]
            out = [*head, *hits, *tail]
            added += len(hits)
        ctx.notes["added"] = added
        ctx.search.candidates = out

    def from_info(self, info: Info) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if info.variant_group:
            out["variant_group"] = info.variant_group
        if info.product_id:
            out["product_id"] = info.product_id
        return out
