"""Search condition refinement: only products that meet the condition, topped up from the catalog.

A filter-stage tool: it drops the candidates that fail the condition and the rank stage orders
the rest by similarity. Trade-off: conditions are compared against catalog labels (exact codes),
not re-embedded, so a refinement costs a few vectorised comparisons; when fewer than a page of
the recalled candidates match, the nearest matching products of the whole catalog fill the page
(an exact scan over the matching rows: the deep recall the condition needs, ~1 ms for 10k).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from revision.errors import InputError
from revision.tools._base import Component, ToolContext, ToolStage
from revision.tools.builtin._common import Attribute, new_hits, rows_of, title_has
from revision.tools.catalog import MISSING
from revision.tools.info import Info

_AUTO_ORDER = ("category", "pattern", "colour", "index_group")


class SearchRefinement(Component):
    name = "search_refinement"
    title = "Search condition refinement"
    description = (
        "Narrow the visual search by a condition the results got wrong: a colour, pattern, "
        "product type, department or audience, or text printed on the item (brand, slogan). "
        "Input: attribute values (or the attributes to hold at the query's values, or one to "
        "change). Output: only matching products, topped up with the nearest matching "
        "catalog products."
    )
    stage = ToolStage.FILTER
    keywords = (
        "refine",
        "refinement",
        "narrow",
        "filter",
        "condition",
        "restrict",
        "department",
        "brand",
        "same type",
        "same pattern",
    )

    def run(
        self,
        ctx: ToolContext,
        colour: str | None = None,
        pattern: str | None = None,
        category: str | None = None,
        department: str | None = None,
        index_group: str | None = None,
        text: str | None = None,
        same: list[Attribute] | None = None,
        other: Attribute | None = None,
        ocr: bool = False,
        min_confidence: float = 0.4,
    ) -> None:
        """Keep only products that meet every condition; fill the page from the catalog.

        Args:
            colour: catalog colour to require, e.g. "Black".
            pattern: catalog pattern to require, e.g. "Stripe".
            category: product type to require, e.g. "Dress".
            department: catalog department to require.
            index_group: audience to require, e.g. "Menswear".
            text: words that must appear in the title or description (brand, printed text).
            same: attributes to hold at the values read from the query photo.
            other: an attribute whose value must differ from the query's (e.g. index_group
                for "the same type in another department").
            ocr: read `text` from the query photo by OCR when it is not given.
            min_confidence: hold an attribute at the query's value (`same`) only when the
                photo shows it with at least this confidence.
        """
        cat = ctx.catalog
        info = ctx.query_info
        given = {
            "colour": colour,
            "pattern": pattern,
            "category": category,
            "department": department,
            "index_group": index_group,
        }
        conditions: dict[str, int] = {}
        for attr, value in given.items():
            if value is None:
                continue
            code = cat.code(attr, value)
            if code == MISSING:
                raise InputError(f"{attr} {value!r} is not in the catalog")
            conditions[attr] = code
        unsure = {}
        for attr in same or ():
            label, confidence = info.attributes().get(attr, (None, 0.0))
            if label is None or attr in conditions:
                continue
            if confidence < min_confidence:  # a guess would drop what the baseline got right
                unsure[attr] = round(confidence, 3)
                continue
            conditions[attr] = cat.code(attr, label)
        if unsure:
            ctx.notes["unsure"] = unsure
        exclude: tuple[str, int] | None = None
        if other is not None:
            value = info.value(other)
            exclude = (other, cat.code(other, value) if value else MISSING)
        if text is None and ocr:
            text = info.ocr_text() or None
        if not conditions and exclude is None and not text:
            if unsure:
                ctx.notes["skipped"] = "the photo does not show the attributes clearly"
                return
            auto = self._auto_condition(ctx)
            if auto is None:
                ctx.notes["skipped"] = "results already agree with the query's attributes"
                return
            conditions[auto[0]] = auto[1]
        ctx.notes["conditions"] = {a: cat.vocab[a][c] for a, c in conditions.items()}
        if exclude:
            ctx.notes["other_than"] = {exclude[0]: info.value(exclude[0])}
        if text:
            ctx.notes["text"] = text

        def matching(rows: np.ndarray) -> np.ndarray:
            ok = np.ones(len(rows), bool)
            for attr, code in conditions.items():
                ok &= cat.codes[attr][rows] == code
            if exclude is not None:
                codes = cat.codes[exclude[0]][rows]
                ok &= (codes != exclude[1]) & (codes != MISSING)
            if text:
                ok[ok] = cat.text_matches(text, rows[ok])
            return ok

        candidates = ctx.search.candidates
        rows = rows_of(ctx, candidates)
        ok = matching(rows)
        kept = [h for h, m in zip(candidates, ok, strict=True) if m]
        rest = [h for h, m in zip(candidates, ok, strict=True) if not m]
        need = ctx.top_k - len(kept)
        if need > 0 or exclude is not None:
            ctx.check()
            pool = np.flatnonzero(self._catalog_mask(ctx, conditions, exclude))
            if text:
                pool = pool[cat.text_matches(text, pool)]
            if exclude is not None:
                kept = self._spread(ctx, kept, pool, exclude[0])
            else:
                top, scores = ctx.nearest(pool, need, exclude=rows[ok])
                kept.extend(new_hits(ctx, top, scores, self.name))
        # a filter drops: the rank stage then orders what is left by similarity
        ctx.notes.update(matching=len(kept), dropped=len(rest))
        ctx.search.candidates = kept

    def _spread(self, ctx: ToolContext, kept, pool: np.ndarray, attr: str):
        """For "another value of `attr`": the nearest products of every other value, an equal
        share each, so the page offers each alternative (kids' and men's, not ten men's)."""
        cat = ctx.catalog
        codes = cat.codes[attr][pool]
        values = np.unique(codes)
        if not len(values):
            return kept
        share = max(2, -(-ctx.top_k // len(values)))
        out = []
        for v in values:
            top, scores = ctx.nearest(pool[codes == v], share)
            mine = [h for h in kept if cat.codes[attr][ctx.engine.row_of[h.product_id]] == v]
            ids = {h.product_id for h in mine}
            mine += [h for h in new_hits(ctx, top, scores, self.name) if h.product_id not in ids]
            mine.sort(key=lambda h: h.score, reverse=True)
            out.extend(mine[:share])
        return out

    @staticmethod
    def _catalog_mask(ctx, conditions: dict[str, int], exclude) -> np.ndarray:
        cat = ctx.catalog
        mask = np.ones(cat.n, bool)
        for attr, code in conditions.items():
            mask &= cat.codes[attr] == code
        if exclude is not None:
            codes = cat.codes[exclude[0]]
            mask &= (codes != exclude[1]) & (codes != MISSING)
        return mask

    @staticmethod
    def _auto_condition(ctx: ToolContext) -> tuple[str, int] | None:
        """The attribute the results got most wrong: confidence in the query's value times the
        share of displayed results that disagree with it."""
        cat = ctx.catalog
        rows = rows_of(ctx, ctx.search.candidates[: ctx.top_k])
        best, best_score = None, 0.2
        attrs = ctx.query_info.attributes()
        for attr in _AUTO_ORDER:
            if attr not in attrs:
                continue
            label, confidence = attrs[attr]
            code = cat.code(attr, label)
            if code == MISSING or not len(rows):
                continue
            disagree = float(np.mean(cat.codes[attr][rows] != code))
            if confidence * disagree > best_score:
                best, best_score = (attr, code), confidence * disagree
        return best

    def from_info(self, info: Info) -> dict[str, Any]:
        out: dict[str, Any] = dict(info.attributes)
        if info.text:
            out["text"] = info.text
        elsewhere = r"\b(other|another|different)\s+(department|audience|section)"
        if re.search(elsewhere, f"{info.context} {info.raw}", re.I):
            out["other"] = "index_group"
            out.setdefault("same", ["category"])
        elif info.mentioned and not info.attributes:
            out["same"] = list(info.mentioned)
            if "pattern" in info.mentioned and "category" not in info.mentioned:
                out["same"].append("category")  # the same print on the same kind of product
        return out

    @classmethod
    def defaults_for(cls, title: str, keywords: Sequence[str] = ()) -> dict[str, Any]:
        if title_has(title, "colour", "color"):
            return {"same": ["colour"]}
        if title_has(title, "pattern", "print"):
            return {"same": ["pattern", "category"]}
        if title_has(title, "department", "audience"):
            return {"same": ["category"], "other": "index_group"}
        if title_has(title, "type", "category"):
            return {"same": ["category"]}
        if title_has(title, "brand", "logo", "printed"):
            return {"ocr": True}
        return {}
