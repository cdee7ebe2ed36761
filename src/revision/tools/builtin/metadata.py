"""Display metadata adjustment: material, care and specifications surfaced from descriptions.

Product descriptions say what a photo cannot ("in organic cotton jersey", "Unlined", "high
waist"); this component reads them with fixed phrase lists into three fields and shows them on
the result cards. Few catalog descriptions carry washing instructions, so when a description
has none, `care` is the standard textile-care guidance for its main material and the cue says
so (`care_source: "material"`), rather than presenting guidance as the maker's label.
Parsed fields are cached per product: the hot path is a dictionary lookup.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Literal

from revision.tools._base import Component, ToolContext, ToolStage
from revision.tools.builtin._common import rows_of
from revision.tools.info import Info

Field = Literal["material", "care", "specifications"]
ALL_FIELDS: tuple[str, ...] = ("material", "care", "specifications")

# Longest first, so "imitation leather" wins over "leather" and "organic cotton" over "cotton".
MATERIALS = sorted(
    [
        "organic cotton",
        "recycled cotton",
        "cotton",
        "recycled polyester",
        "polyester",
        "viscose",
        "lyocell",
        "tencel",
        "modal",
        "linen",
        "merino wool",
        "wool",
        "cashmere",
        "mohair",
        "alpaca",
        "silk",
        "satin",
        "chiffon",
        "lace",
        "mesh",
        "tulle",
        "jersey",
        "denim",
        "corduroy",
        "twill",
        "velour",
        "velvet",
        "fleece",
        "faux fur",
        "fake fur",
        "imitation leather",
        "imitation suede",
        "leather",
        "suede",
        "canvas",
        "rib-knit",
        "fine-knit",
        "cable-knit",
        "knit",
        "sweatshirt fabric",
        "crêpe",
        "crepe",
        "elastane",
        "nylon",
        "polyamide",
        "acrylic",
        "sequins",
        "glitter",
        "rubber",
        "straw",
        "down-filled",
        "padding",
        "terry",
        "muslin",
        "poplin",
        "seersucker",
        "chambray",
        "flannel",
        "softshell",
        "oxford",
        "piqué",
        "woven fabric",
        "weave",
        "microfibre",
        "functional fabric",
        "chunky knit",
        "rib knit",
        "stretch twill",
        "metal",
        "plastic",
        "glass",
        "wood",
        "ceramic",
        "paper",
    ],
    key=len,
    reverse=True,
)
# one alternation, longest names first: the leftmost, longest material name wins
_MATERIAL = re.compile(r"(?<![\w-])(" + "|".join(re.escape(m) for m in MATERIALS) + r")(?![\w-])")
_QUALIFIER = re.compile(r"\b(\d{1,3})\s*%\s*([a-z]+)")
_SPECS = [
    (
        re.compile(
            r"\b((?:slim|regular|relaxed|loose|oversized|skinny|straight|tapered|wide|"
            r"super-skinny|boxy|fitted)[- ]fit)\b",
            re.I,
        ),
        None,
    ),
    (re.compile(r"\b((?:knee|ankle|calf|thigh|hip|mid-calf|floor|waist)-length)\b", re.I), None),
    (re.compile(r"\b((?:high|regular|low|mid|elasticated|adjustable) waist)\b", re.I), None),
    (re.compile(r"\b(unlined|lined)\b", re.I), None),
    (
        re.compile(
            r"\b(zip fly|zip|buttons?|press-studs?|hook-and-eye fastening|drawstring|"
            r"elastication|velcro|tie belt)\b",
            re.I,
        ),
        "fastening",
    ),
    (
        re.compile(r"\b((?:side|back|front|chest|flap|welt|patch|zipped) pockets|pockets)\b", re.I),
        None,
    ),
    (
        re.compile(
            r"\b((?:long|short|3/4-length|cap|puff|raglan|wide) sleeves|sleeveless)\b", re.I
        ),
        None,
    ),
    (
        re.compile(
            r"\b(v-neck|round neck|round-necked|collar|hood|turtle neck|polo neck|"
            r"off-the-shoulder|square neckline)\b",
            re.I,
        ),
        None,
    ),
    (re.compile(r"\b(non-wired|underwired|padded|moulded|removable inserts)\b", re.I), None),
    (re.compile(r"\b(waterproof|water-repellent|windproof|breathable|reflective)\b", re.I), None),
]
_CARE_WORD = re.compile(
    r"\b(machine wash|hand wash|dry clean|tumble dry|do not wash|wash at|iron|bleach)\b", re.I
)
_CARE_SENTENCE = re.compile(
    r"[^.]*\b(machine wash|hand wash|dry clean|tumble dry|do not wash|wash at|iron|bleach)"
    r"\b[^.]*\.",
    re.I,
)
# Standard care guidance by main material (used only when the description gives none).
CARE_BY_MATERIAL = {
    "wool": "hand wash cold or dry clean; dry flat",
    "merino wool": "hand wash cold or dry clean; dry flat",
    "cashmere": "hand wash cold or dry clean; dry flat",
    "mohair": "hand wash cold; dry flat",
    "alpaca": "hand wash cold; dry flat",
    "silk": "hand wash cold or dry clean; do not tumble dry",
    "satin": "gentle wash 30°C; iron low",
    "leather": "do not wash; wipe clean or professional leather clean",
    "suede": "do not wash; brush, professional suede clean",
    "imitation leather": "wipe clean with a damp cloth",
    "imitation suede": "wipe or brush clean",
    "denim": "wash inside out at 40°C with similar colours",
    "lace": "hand wash or delicate cycle in a wash bag",
    "tulle": "hand wash or delicate cycle in a wash bag",
    "chiffon": "hand wash cold; iron low",
    "sequins": "hand wash inside out; do not iron",
    "viscose": "gentle wash 30°C; do not tumble dry",
    "lyocell": "gentle wash 30°C; do not tumble dry",
    "tencel": "gentle wash 30°C; do not tumble dry",
    "modal": "gentle wash 30°C; do not tumble dry",
    "linen": "machine wash 40°C; iron while damp",
    "velvet": "dry clean or hand wash cold; do not iron the pile",
    "velour": "machine wash 30°C inside out",
    "fleece": "machine wash 30°C; do not tumble dry",
    "fake fur": "hand wash cold; do not tumble dry",
    "faux fur": "hand wash cold; do not tumble dry",
    "down-filled": "machine wash 30°C; tumble dry low",
    "padding": "machine wash 30°C; tumble dry low",
    "polyester": "machine wash 40°C; iron low",
    "recycled polyester": "machine wash 40°C; iron low",
    "nylon": "machine wash 30°C; iron low",
    "polyamide": "machine wash 30°C; iron low",
    "acrylic": "machine wash 30°C; dry flat",
    "jersey": "machine wash 40°C",
    "cotton": "machine wash 40°C; iron medium",
    "woven fabric": "machine wash 40°C; iron medium",
    "weave": "machine wash 40°C; iron medium",
    "twill": "machine wash 40°C; iron medium",
    "stretch twill": "machine wash 40°C; iron low",
    "poplin": "machine wash 40°C; iron medium",
    "chambray": "machine wash 40°C; iron medium",
    "seersucker": "machine wash 40°C; no ironing needed",
    "muslin": "machine wash 40°C; iron low",
    "flannel": "machine wash 40°C; iron medium",
    "oxford": "machine wash 40°C; iron medium",
    "terry": "machine wash 60°C; tumble dry low",
    "sweatshirt fabric": "machine wash 40°C inside out",
    "corduroy": "machine wash 30°C inside out; do not iron the pile",
    "canvas": "wipe or spot clean; machine wash 30°C if needed",
    "knit": "gentle wash 30°C; dry flat",
    "fine-knit": "gentle wash 30°C; dry flat",
    "rib-knit": "gentle wash 30°C; dry flat",
    "rib knit": "gentle wash 30°C; dry flat",
    "cable-knit": "gentle wash 30°C; dry flat",
    "chunky knit": "hand wash cold; dry flat",
    "microfibre": "machine wash 40°C; do not iron",
    "functional fabric": "machine wash 40°C; no fabric softener",
    "softshell": "machine wash 30°C; no fabric softener",
    "mesh": "gentle wash 30°C in a wash bag",
    "crêpe": "gentle wash 30°C; iron low",
    "crepe": "gentle wash 30°C; iron low",
    "piqué": "machine wash 40°C",
    "elastane": "machine wash 30°C; do not tumble dry",
    "glitter": "hand wash inside out; do not iron",
    "rubber": "wipe clean",
    "straw": "spot clean; keep dry",
    "metal": "wipe clean with a dry cloth",
    "plastic": "wipe clean with a damp cloth",
    "glass": "wipe clean",
    "wood": "wipe clean; keep dry",
    "ceramic": "wipe clean",
    "paper": "keep dry",
    "organic cotton": "machine wash 40°C; iron medium",
    "recycled cotton": "machine wash 40°C; iron medium",
}


def parse_description(text: str) -> dict[str, Any]:
    """{material, care, care_source, specifications} read from a product description.

    >>> parse_description("Jeans in washed denim. Slim fit with a high waist. Unlined.")
    ... # doctest: +NORMALIZE_WHITESPACE
    {'material': 'denim', 'care': 'wash inside out at 40°C with similar colours',
     'care_source': 'material', 'specifications': 'slim fit; high waist; unlined'}
    """
    low = text.lower()
    materials = list(dict.fromkeys(m.group(1) for m in _MATERIAL.finditer(low)))
    percent = [f"{p}% {name}" for p, name in _QUALIFIER.findall(low)]
    extra = []
    if re.search(r"\bpartly recycled\b|\brecycled\b", low) and not any(
        "recycled" in m for m in materials
    ):
        extra.append("partly recycled")
    if "organic" in low and not any("organic" in m for m in materials):
        extra.append("partly organic")
    material = ", ".join(percent or materials + extra) or None
    sentences = []
    if _CARE_WORD.search(text):  # cheap test first: the sentence pattern backtracks
        sentences = [m.group(0).strip() for m in _CARE_SENTENCE.finditer(text)]
    if sentences:
        care = " ".join(sentences)
        care_source = "description"
    else:
        main = next((m for m in materials if m in CARE_BY_MATERIAL), None)
        care = CARE_BY_MATERIAL.get(main) if main else None
        care_source = "material" if care else None
    specs: list[str] = []
    for pattern, _ in _SPECS:
        for m in pattern.findall(text):
            value = m.lower()
            if value not in specs:
                specs.append(value)
    out: dict[str, Any] = {
        "material": material,
        "care": care,
        "care_source": care_source,
        "specifications": "; ".join(specs) or None,
    }
    return out


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
            cue = {"type": "metadata", "product_id": hit.product_id, "fields": shown}
            if "care" in shown:
                cue["care_source"] = parsed["care_source"]
            ctx.search.cues.append(cue)

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
