"""Display metadata adjustment: material, care and specifications surfaced from descriptions.

Product descriptions say what a photo cannot ("in organic cotton jersey", "Unlined", "high
waist"); this component reads them with the shared product-text vocabulary
(`revision.text.vocabulary`, the same lists mining reads) into three fields and shows them on
the result cards. Few catalog descriptions carry washing instructions, so when a description
has none, `care` is the standard textile-care guidance for its main material and the cue says
so (`care_source: "material"`), rather than presenting guidance as the maker's label.
Parsed fields are cached per product: the hot path is a dictionary lookup.

    >>> parse_description("Top in linen. Machine wash at 30°C.")["care"]
    'Machine wash at 30°C.'
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from revision.search._base import MetadataCue
from revision.text.vocabulary import parse_description
from revision.tools._base import Component, ToolContext, ToolStage
from revision.tools.builtin._common import rows_of
from revision.tools.info import Info

Field = Literal["material", "care", "specifications"]
ALL_FIELDS: tuple[str, ...] = ("material", "care", "specifications")
__all__ = ["ALL_FIELDS", "MetadataDisplay", "parse_description"]


class MetadataDisplay(Component):
    name = "metadata_display"
    title = "Display metadata adjustment"
    description = (
        "Show on each result card what the photo cannot tell: material and composition, care "
        "instructions and specifications (fit, length, waist, fastening, lining), read from "
        "the product descriptions. Input: which fields. Output: metadata cues per result."
    )
    stage = ToolStage.DISPLAY
    keywords = (
        "material",
        "care",
        "details",
        "specification",
        "specifications",
        "composition",
        "information",
        "metadata",
    )

    def __init__(self) -> None:
        self._cache: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def run(
        self, ctx: ToolContext, fields: list[Field] | None = None, top: int | None = None
    ) -> None:
        """Add a metadata cue per displayed result.

        Args:
            fields: which fields to show (default: material, care and specifications).
            top: only the first `top` results (default: all displayed).
        """
        wanted = list(fields or ALL_FIELDS)
        results = ctx.search.results[:top] if top else ctx.search.results
        rows = rows_of(ctx, results)
        for hit, row in zip(results, rows, strict=True):
            parsed = self._parsed(ctx, int(row))
            shown = {f: parsed[f] for f in wanted if parsed.get(f)}
            if not shown:
                continue
            care_source = parsed["care_source"] if "care" in shown else None
            ctx.search.cues.append(
                MetadataCue(product_id=hit.product_id, fields=shown, care_source=care_source)
            )

    def _parsed(self, ctx: ToolContext, row: int) -> dict[str, Any]:
        pid = ctx.catalog.ids[row]
        got = self._cache.get(pid)
        if got is None:
            got = parse_description(ctx.catalog.descriptions[row])
            with self._lock:
                self._cache[pid] = got
        return got

    def from_info(self, info: Info) -> dict[str, Any]:
        return {"fields": list(info.fields)} if info.fields else {}
