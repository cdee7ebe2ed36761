"""The product-text vocabulary: materials, care phrases and specifications in descriptions.

One list each, read by mining (which materials and care phrases the results name) and by the
metadata tool (what to show on a result card). Trade-off: fixed phrase lists over the catalog's
own wording instead of a model; they miss unusual phrasings but never invent a material, and
description text stays data, matched against patterns and never followed.

    >>> materials_in("Jacket in imitation leather with a cotton-blend lining. Rib-knit cuffs.")
    ['imitation leather', 'rib-knit']
    >>> care_phrases("Machine wash at 40°C. Do not tumble dry.")
    ['machine wash', 'do not tumble']
"""

from __future__ import annotations

import re
from typing import Any

# Longest first, so "imitation leather" wins over "leather" and "organic cotton" over "cotton".
MATERIALS: tuple[str, ...] = tuple(
    sorted(
        {
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
            "merino",
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
        },
        key=lambda m: (-len(m), m),
    )
)
# Materials whose care the user should hear about (wool, silk, leather, …).
DELICATE = frozenset(
    {
        "wool",
        "merino wool",
        "merino",
        "cashmere",
        "mohair",
        "alpaca",
        "silk",
        "leather",
        "suede",
        "velvet",
        "satin",
        "chiffon",
        "lace",
        "faux fur",
        "fake fur",
    }
)
# Care instructions, as regular expressions over lower-cased text.
CARE_PHRASES: tuple[str, ...] = (
    r"machine[- ]wash\w*",
    r"hand[- ]wash\w*",
    r"dry[- ]clean\w*",
    r"tumble[- ]dr\w+",
    r"do not (?:iron|bleach|wash|tumble)\w*",
    r"wash(?:ing)? at(?: \d+\s*°?c?)?",
    r"iron\b",
    r"bleach\b",
)

# one alternation, longest names first: the leftmost, longest material name wins; a name
# glued to a hyphen is part of a longer word ("cotton-blend" is not "cotton")
_MATERIAL = re.compile(r"(?<![\w-])(" + "|".join(re.escape(m) for m in MATERIALS) + r")(?![\w-])")
_CARE = "|".join(CARE_PHRASES)
_CARE_PHRASE = re.compile(rf"\b(?:{_CARE})", re.I)
_CARE_SENTENCE = re.compile(rf"[^.]*\b(?:{_CARE})\b[^.]*\.", re.I)
_QUALIFIER = re.compile(r"\b(\d{1,3})\s*%\s*([a-z]+)")
_SPECS = (
    re.compile(
        r"\b((?:slim|regular|relaxed|loose|oversized|skinny|straight|tapered|wide|"
        r"super-skinny|boxy|fitted)[- ]fit)\b",
        re.I,
    ),
    re.compile(r"\b((?:knee|ankle|calf|thigh|hip|mid-calf|floor|waist)-length)\b", re.I),
    re.compile(r"\b((?:high|regular|low|mid|elasticated|adjustable) waist)\b", re.I),
    re.compile(r"\b(unlined|lined)\b", re.I),
    re.compile(
        r"\b(zip fly|zip|buttons?|press-studs?|hook-and-eye fastening|drawstring|"
        r"elastication|velcro|tie belt)\b",
        re.I,
    ),
    re.compile(r"\b((?:side|back|front|chest|flap|welt|patch|zipped) pockets|pockets)\b", re.I),
    re.compile(r"\b((?:long|short|3/4-length|cap|puff|raglan|wide) sleeves|sleeveless)\b", re.I),
    re.compile(
        r"\b(v-neck|round neck|round-necked|collar|hood|turtle neck|polo neck|"
        r"off-the-shoulder|square neckline)\b",
        re.I,
    ),
    re.compile(r"\b(non-wired|underwired|padded|moulded|removable inserts)\b", re.I),
    re.compile(r"\b(waterproof|water-repellent|windproof|breathable|reflective)\b", re.I),
)
# Standard care guidance by main material (used only when the description gives none).
CARE_BY_MATERIAL = {
    "wool": "hand wash cold or dry clean; dry flat",
    "merino wool": "hand wash cold or dry clean; dry flat",
    "merino": "hand wash cold or dry clean; dry flat",
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


def materials_in(text: str | None) -> list[str]:
    """The materials a text names, lower case, each once, in order of appearance."""
    return list(dict.fromkeys(m.group(1) for m in _MATERIAL.finditer((text or "").lower())))


def care_phrases(text: str | None) -> list[str]:
    """The care instructions a text gives ("machine wash", "do not tumble"), each once."""
    return list(dict.fromkeys(m.group(0).lower() for m in _CARE_PHRASE.finditer(text or "")))


def care_sentences(text: str | None) -> list[str]:
    """The sentences of a text that give care instructions."""
    if not text or not _CARE_PHRASE.search(text):  # cheap test first: the sentence backtracks
        return []
    return [m.group(0).strip() for m in _CARE_SENTENCE.finditer(text)]


def specifications(text: str | None) -> list[str]:
    """Fit, length, waist, lining, fastening, pockets, sleeves, neckline, … named in a text."""
    specs: list[str] = []
    for pattern in _SPECS:
        for m in pattern.findall(text or ""):
            value = m.lower()
            if value not in specs:
                specs.append(value)
    return specs


def parse_description(text: str | None) -> dict[str, Any]:
    """{material, care, care_source, specifications} read from a product description.

    When the description gives no care instructions, `care` is the standard guidance for its
    main material and `care_source` says so ("material", not "description").

    >>> parse_description("Jeans in washed denim. Slim fit with a high waist. Unlined.")
    ... # doctest: +NORMALIZE_WHITESPACE
    {'material': 'denim', 'care': 'wash inside out at 40°C with similar colours',
     'care_source': 'material', 'specifications': 'slim fit; high waist; unlined'}
    """
    text = text or ""
    low = text.lower()
    materials = materials_in(low)
    percent = [f"{p}% {name}" for p, name in _QUALIFIER.findall(low)]
    extra = []
    if re.search(r"\bpartly recycled\b|\brecycled\b", low) and not any(
        "recycled" in m for m in materials
    ):
        extra.append("partly recycled")
    if "organic" in low and not any("organic" in m for m in materials):
        extra.append("partly organic")
    material = ", ".join(percent or materials + extra) or None
    sentences = care_sentences(text)
    if sentences:
        care, care_source = " ".join(sentences), "description"
    else:
        main = next((m for m in materials if m in CARE_BY_MATERIAL), None)
        care = CARE_BY_MATERIAL.get(main) if main else None
        care_source = "material" if care else None
    return {
        "material": material,
        "care": care,
        "care_source": care_source,
        "specifications": "; ".join(specifications(text)) or None,
    }
