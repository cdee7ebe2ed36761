"""Small helpers the built-in components share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from revision.search._base import Hit
from revision.tools._base import ToolContext

Attribute = Literal["colour", "category", "pattern", "department", "index_group"]


def rows_of(ctx: ToolContext, hits: Sequence[Hit]) -> np.ndarray:
    return ctx.catalog.rows_of([h.product_id for h in hits])


def new_hits(ctx: ToolContext, rows: np.ndarray, scores: np.ndarray, source: str) -> list[Hit]:
    ids = ctx.catalog.ids
    return [ctx.hit(ids[r], float(s), source) for r, s in zip(rows, scores, strict=True)]


def place(hits: list[Hit], inserts: list[Hit], position: int) -> list[Hit]:
    """`hits` with `inserts` at 1-based `position` (any earlier copies of them removed)."""
    moved = {h.product_id for h in inserts}
    rest = [h for h in hits if h.product_id not in moved]
    at = max(0, min(position - 1, len(rest)))
    return [*rest[:at], *inserts, *rest[at:]]


def title_has(title: str, *words: str) -> bool:
    low = title.lower()
    return any(w in low for w in words)
