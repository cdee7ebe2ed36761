"""Follow-up events: what a simulated user does after a response that did not serve them.

Real logs hold more evidence than a photo and its results: the user sorted by price, tapped a
colour or the kids' tab, opened the material section, typed a text query, re-uploaded, or left.
The world file's `followups` section says, per hidden intent, how likely a follow-up is and of
which kind; the value comes from what the user holds back (the wanted audience, colour, detail)
or from the photographed product. A share of events is noise (a random kind and value), and
anyone may simply leave. Text queries are short templates in English or Chinese filled with
catalog values, sometimes misspelt: real text for an analyst to read, never instructions.

Randomness has its own stream per day, drawn for every request before any search, so two
searchers shown the same users produce the same follow-ups wherever the responses agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from revision.sim.intents import (
    CHEAPER,
    EXACT,
    INFO,
    OTHER_DEPARTMENT,
    PREFERENCE,
    PREMIUM,
    SAME_PATTERN,
    SIMILAR,
    VARIANT,
    value,
)

DRAWS = 12  # uniform draws per request

# {category}, {colour}, {pattern}, {group}, {material}, {price} are filled from the catalog.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    CHEAPER: {
        "en": ("cheaper {category}", "{category} under {price}", "budget {colour} {category}",
               "cheap {category} like this", "affordable {category}"),
        "zh": ("便宜的{category}", "{category} 平价", "更便宜的{colour}{category}"),
    },
    PREMIUM: {
        "en": ("premium {category}", "luxury {category}", "high quality {category}",
               "designer {colour} {category}", "higher end {category}"),
        "zh": ("高端{category}", "{category} 品质好", "高档{colour}{category}"),
    },
    VARIANT: {
        "en": ("{category} in {colour}", "this {category} in other colours", "{colour} version",
               "same {category} {colour}"),
        "zh": ("{colour}的{category}", "这款{category}其他颜色", "{category} {colour}款"),
    },
    OTHER_DEPARTMENT: {
        "en": ("{category} for {group}", "{group} {category}", "{category} {group} size"),
        "zh": ("{group}{category}", "{category} {group}款"),
    },
    INFO: {
        "en": ("what is this {category} made of", "{category} material", "{category} fabric",
               "how to wash {category}", "{category} care instructions"),
        "zh": ("{category}是什么材质", "{category}面料", "{category}怎么洗"),
    },
    PREFERENCE: {
        "en": ("{colour} {category}", "{category} {colour}", "the {colour} one"),
        "zh": ("{colour}{category}", "{colour}的"),
    },
    SAME_PATTERN: {
        "en": ("{pattern} {category}", "{pattern} print {category}", "{pattern} pattern"),
        "zh": ("{pattern}图案{category}", "{pattern}花纹"),
    },
    SIMILAR: {
        "en": ("{category} like this", "similar {category}", "{colour} {category}"),
        "zh": ("类似的{category}", "差不多的{category}"),
    },
    EXACT: {
        "en": ("{title}", "{title} {colour}", "where to buy this {category}"),
        "zh": ("{title}", "同款{category}"),
    },
}  # fmt: skip
_INFO_TEMPLATE = {"material": (0, 1, 2), "care": (3, 4)}  # English templates per detail


@dataclass(frozen=True)
class Event:
    kind: str
    value: str
    delay_s: float


class FollowupModel:
    """The world's follow-up model over catalog facts (`CatalogFacts`, product rows)."""

    def __init__(self, world, rows, facts):
        self.spec = world.followups
        self.rows, self.facts = rows, facts
        self.colours = sorted({c for row in rows.values() if (c := value(row, "colour"))})
        self.groups = sorted(facts.group_counts())
        self.categories = sorted({c for row in rows.values() if (c := value(row, "category"))})
        langs = self.spec.text.languages if self.spec else {"en": 1.0}
        self.languages = list(langs)
        w = np.array([langs[k] for k in self.languages], dtype=float)
        self.language_cdf = np.cumsum(w) / w.sum()

    def events(self, intent, target, preferred, no_click: bool, u, z) -> list[Event]:
        """Follow-ups of one human request (`u`: DRAWS uniforms, `z`: one normal)."""
        spec = self.spec
        if spec is None or not no_click:
            return []
        delay = spec.delay_s.median * float(np.exp(spec.delay_s.sigma * z))
        out: list[Event] = []
        mine = spec.by_intent.get(intent)
        if mine is not None and u[0] < mine.p:
            if u[1] < spec.noise:
                out.append(self._noise(u[2:]))
            else:
                kinds = list(mine.kinds)
                w = np.cumsum([mine.kinds[k] for k in kinds])
                kind = kinds[min(int(np.searchsorted(w / w[-1], u[2])), len(kinds) - 1)]
                event = self._event(kind, intent, target, preferred, u[3:])
                out.append(event or self._noise(u[2:]))
        if u[10] < spec.leave_p:
            out.append(Event("leave", "", 0.0))
        return [Event(e.kind, e.value, delay * (1 + i)) for i, e in enumerate(out)]

    # -- one event -------------------------------------------------------------------------------
    def _event(self, kind, intent, target, preferred, u) -> Event | None:
        row = self.rows[target]
        if kind == "sort_price":
            if intent in (CHEAPER, PREMIUM):
                return Event(kind, "asc" if intent == CHEAPER else "desc", 0.0)
            return Event(kind, "asc" if u[0] < 0.5 else "desc", 0.0)
        if kind == "filter_colour":
            colour = preferred if intent == PREFERENCE else self._other_colour(row, u[0])
            return Event(kind, colour, 0.0) if colour else None
        if kind == "filter_department":
            group = preferred if intent == OTHER_DEPARTMENT else value(row, "index_group")
            return Event(kind, group, 0.0) if group else None
        if kind == "filter_category":
            category = value(row, "category")
            return Event(kind, category, 0.0) if category else None
        if kind == "open_details":
            detail = preferred if intent == INFO and preferred else "size"
            return Event(kind, detail, 0.0)
        if kind == "text_query":
            return Event(kind, self._text(intent, row, preferred, u), 0.0)
        if kind in ("reupload", "leave"):
            return Event(kind, "", 0.0)
        return None

    def _other_colour(self, row, u: float) -> str | None:
        design = value(row, "variant_group") or row.get("product_id")
        colours = [c for c in self.facts.design_colours_.get(design, {}) if c != row.get("colour")]
        return sorted(colours)[min(int(u * len(colours)), len(colours) - 1)] if colours else None

    def _noise(self, u) -> Event:
        """An event that says nothing about the intent: a random kind with a random value."""
        kinds = ("sort_price", "filter_colour", "filter_department", "filter_category",
                 "open_details", "reupload")  # fmt: skip
        kind = kinds[min(int(u[0] * len(kinds)), len(kinds) - 1)]
        pick = lambda seq: seq[min(int(u[1] * len(seq)), len(seq) - 1)] if seq else ""  # noqa: E731
        values = {
            "sort_price": ("asc", "desc"),
            "filter_colour": self.colours,
            "filter_department": self.groups,
            "filter_category": self.categories,
            "open_details": ("material", "care", "size"),
            "reupload": ("",),
        }
        return Event(kind, pick(values[kind]), 0.0)

    def _text(self, intent, row, preferred, u) -> str:
        language = self.languages[
            min(int(np.searchsorted(self.language_cdf, u[0])), len(self.languages) - 1)
        ]
        templates = TEMPLATES.get(intent, TEMPLATES[SIMILAR])[language]
        if intent == INFO and language == "en" and preferred in _INFO_TEMPLATE:
            templates = tuple(templates[i] for i in _INFO_TEMPLATE[preferred])
        template = templates[min(int(u[1] * len(templates)), len(templates) - 1)]
        colour = value(row, "colour") or ""
        if intent == PREFERENCE and preferred:
            colour = preferred
        elif intent == VARIANT:
            colour = self._other_colour(row, u[2]) or colour
        group = preferred if intent == OTHER_DEPARTMENT and preferred else ""
        price = value(row, "price")
        fields = {
            "category": (value(row, "category") or "item").lower(),
            "colour": colour.lower(),
            "pattern": (value(row, "pattern") or "").lower(),
            "group": group.lower(),
            "title": (row.get("title") or "").lower()[:40],
            "price": f"{price * 0.7:.3f}" if price else "",
        }
        if language == "zh":  # Chinese runs on without spaces; Latin words keep theirs
            fields = {k: f" {v} " if v.isascii() else v for k, v in fields.items()}
        text = " ".join(template.format(**fields).split())
        if u[3] < self.spec.text.typo_p:
            text = misspell(text, u[4], u[5])
        return text


def misspell(text: str, u1: float, u2: float) -> str:
    """Drop or swap one letter of a longer word (what thumbs do on phones).

    >>> misspell("cheaper dress", 0.0, 0.0)
    'heaper dress'
    >>> misspell("cheaper dress", 0.0, 0.9)
    'hceaper dress'
    """
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) >= 4 and w.isascii()]
    if not long:
        return text
    i = long[min(int(u1 * len(long)), len(long) - 1)]
    w = words[i]
    at = min(int(u1 * 7919) % (len(w) - 1), len(w) - 2)
    words[i] = w[:at] + w[at + 1 :] if u2 < 0.5 else w[:at] + w[at + 1] + w[at] + w[at + 2 :]
    return " ".join(words)
