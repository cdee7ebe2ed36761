"""Info extraction: the inputs a tool needs, from a mined signal's Info or from the query.

Paper §III-C(a): "the required execution information Info is extracted from the query and the
retrieval products". Two sources, in this order of precedence:

- a signal's Info text ("colour: black", "cheaper", "price above 0.05", "variant group 0108775",
  "material and care", "brand: Blendy", or free text), parsed by `parse_info` against the
  catalog's own vocabulary so that a value is a catalog label or nothing;
- the query itself (`QueryInfo`): visual attributes from the trained attribute heads over the
  query embedding and colour histogram (or, without heads or a photo, a similarity-weighted vote
  of the nearest catalog products), and printed text read by OCR. These are read by
  `revision.vision`'s `QueryUnderstanding` (the one mining reads photos with); `QueryInfo`
  holds its per-request memo, so each is computed at most once per request, however many
  tools ask.

Info text is untrusted data: it is matched against fixed patterns and vocabularies, never
executed or passed on as instructions.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from revision.errors import InputError
from revision.tools.catalog import ATTRIBUTES, SYNONYMS, CatalogArrays, catalog_arrays
from revision.vision.understanding import SAME_ITEM_SCORE, Photo, QueryUnderstanding

if TYPE_CHECKING:
    from revision.search._base import Query
    from revision.search.engine import SearchEngine

__all__ = ["SAME_ITEM_SCORE", "Info", "QueryInfo", "parse_info", "parse_signal", "warm_up"]

FIELDS = ("material", "care", "specifications")
_FIELD_WORDS = {
    "material": ("material", "materials", "fabric", "composition", "made of", "content", "textile"),
    "care": ("care", "wash", "washing", "laundry", "cleaning", "iron", "ironing"),
    "specifications": (
        "specification",
        "specifications",
        "specs",
        "size",
        "fit",
        "dimensions",
        "measurements",
        "length",
    ),
}
_KEYS = {
    "colour": "colour",
    "color": "colour",
    "pattern": "pattern",
    "print": "pattern",
    "type": "category",
    "category": "category",
    "product type": "category",
    "department": "department",
    "index group": "index_group",
    "index_group": "index_group",
    "audience": "index_group",
    "section": "index_group",
    "brand": "text",
    "text": "text",
    "ocr": "text",
    "logo": "text",
    "keyword": "text",
    "keywords": "text",
    "query": "text",
    "variant group": "variant_group",
    "variant_group": "variant_group",
    "group": "variant_group",
    "product": "product_id",
    "product id": "product_id",
    "product_id": "product_id",
}
_NUMBER = r"(\d+(?:\.\d+)?)"
_CHEAPER = re.compile(
    r"\b(cheaper|cheap|cheapest|budget|affordable|inexpensive|lower[- ]priced?|low[- ]cost|"
    r"discount(?:ed)?|bargain|less expensive)\b",
    re.I,
)
_PREMIUM = re.compile(
    r"\b(premium|luxury|high[- ]end|higher[- ]end|upscale|pricier|dearer|more expensive|"
    r"higher[- ]priced?|designer)\b",
    re.I,
)
_TIERS = re.compile(r"\b(tiers?|segment(?:ed|ation)?|price range|price levels?)\b", re.I)


@dataclass
class Info:
    """What a signal's Info says, normalised to catalog vocabulary."""

    raw: str = ""
    context: str = ""  # the signal's Action, when known
    attributes: dict[str, str] = field(default_factory=dict)  # colour/pattern/... -> label
    mentioned: list[str] = field(default_factory=list)  # attributes named without a value
    direction: str | None = None  # cheaper | premium | tiers
    min_price: float | None = None
    max_price: float | None = None
    variant_group: str | None = None
    product_id: str | None = None
    fields: list[str] = field(default_factory=list)  # material | care | specifications
    text: str | None = None  # quoted, brand or OCR text

    def values(self) -> dict[str, Any]:
        """Candidate tool inputs, by the names components use."""
        out: dict[str, Any] = dict(self.attributes)
        for key in ("direction", "min_price", "max_price", "variant_group", "product_id", "text"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.fields:
            out["fields"] = list(self.fields)
        if self.mentioned:
            out["attribute"] = self.mentioned[0]
        return out

    def __bool__(self) -> bool:
        return bool(self.raw.strip())


def parse_signal(signal: str) -> tuple[str, str]:
    """('Action', 'Info') from a mined signal "Action -> Info" (Info may be empty)."""
    action, _, info = signal.partition("->")
    return action.strip(), info.strip()


def parse_info(text: str | None, catalog: CatalogArrays | None = None, context: str = "") -> Info:
    """Parse a signal's Info into normalised values. `context` is the signal's Action: its
    words may set a direction ("Supplement cheaper products"), fields ("Show care details") or
    name an attribute, but never become values or text.

    >>> info = parse_info("cheaper, price below 0.02")
    >>> info.direction, info.max_price
    ('cheaper', 0.02)
    >>> parse_info('brand: "Blendy"').text
    'Blendy'
    """
    raw = (text or "").strip()
    info = Info(raw=raw, context=context.strip())
    if not raw and not info.context:
        return info
    rest = raw
    # key: value pairs first ("colour: black; pattern=stripe")
    for m in re.finditer(r"([A-Za-z_][A-Za-z_ ]*?)\s*[:=]\s*(\"[^\"]*\"|'[^']*'|[^,;\n]+)", raw):
        key = " ".join(m.group(1).lower().split())
        key = next((k for k in sorted(_KEYS, key=len, reverse=True) if key.endswith(k)), key)
        value = m.group(2).strip().strip("\"'").strip()
        target = _KEYS.get(key)
        if not value:
            continue
        if target in ATTRIBUTES:
            label = catalog.canonical(target, value) if catalog is not None else value
            if label is None and catalog is not None and target == "department":
                label = catalog.canonical("index_group", value)  # "department: menswear"
                target = "index_group" if label else target
            if label is not None:
                info.attributes[target] = label
                rest = rest.replace(m.group(0), " ")
        elif target == "text":
            info.text = value
            rest = rest.replace(m.group(0), " ")
        elif target == "variant_group":
            info.variant_group = value.split()[0]
            rest = rest.replace(m.group(0), " ")
        elif target == "product_id":
            info.product_id = value.split()[0]
            rest = rest.replace(m.group(0), " ")
    quoted = re.search(r"\"([^\"]+)\"|“([^”]+)”", raw)
    if quoted and info.text is None:
        info.text = (quoted.group(1) or quoted.group(2)).strip()
    m = re.search(r"variant[ _]group\s*#?\s*([A-Za-z0-9_-]+)", raw, re.I)
    if m and info.variant_group is None:
        info.variant_group = m.group(1)
    _parse_price(raw, info)
    low = f" {rest.lower()} "
    either = f"{low} {info.context.lower()} "
    for name, words in _FIELD_WORDS.items():
        if any(re.search(rf"\b{re.escape(w)}\b", either) for w in words):
            info.fields.append(name)
    if catalog is not None:
        low = _parse_free_values(low, catalog, info)
    for word, attr in _MENTIONS:
        if re.search(rf"\b{word}s?\b", f"{low} {info.context.lower()}") and (
            attr not in info.mentioned
        ):
            info.mentioned.append(attr)
    return info


def _parse_price(raw: str, info: Info) -> None:
    low = raw.lower()
    words = f"{low} {info.context.lower()}"
    if m := re.search(rf"between\s+{_NUMBER}\s+(?:and|-|to)\s+{_NUMBER}", low):
        info.min_price, info.max_price = sorted((float(m.group(1)), float(m.group(2))))
    if m := re.search(rf"(?:above|over|more than|at least|min(?:imum)?|>=?|from)\s*{_NUMBER}", low):
        info.min_price = float(m.group(1))
    if m := re.search(
        rf"(?:below|under|less than|at most|max(?:imum)?|cheaper than|<=?|up to)\s*{_NUMBER}", low
    ):
        info.max_price = float(m.group(1))
    if _CHEAPER.search(words) or (info.max_price is not None and info.min_price is None):
        info.direction = "cheaper"
    elif _PREMIUM.search(words) or (info.min_price is not None and info.max_price is None):
        info.direction = "premium"
    elif _TIERS.search(words):
        info.direction = "tiers"


def _parse_free_values(low: str, catalog: CatalogArrays, info: Info) -> str:
    """Catalog labels named in free text ("black striped top"), longest match first; returns
    the text with them removed."""
    for attr in ("colour", "pattern", "category", "index_group"):
        if attr in info.attributes:
            continue
        names = {v.lower(): v for v in catalog.vocab.get(attr, []) if v.lower() != "unknown"}
        for syn, target in SYNONYMS.get(attr, {}).items():
            if target in names and syn not in ("color",):
                names.setdefault(syn, names[target])
        for name in sorted(names, key=len, reverse=True):
            if re.search(rf"(?<![\w/-]){re.escape(name)}(?![\w/-])", low):
                info.attributes[attr] = names[name]
                low = low.replace(name, " ")
                break
    return low


_MENTIONS = (
    ("colour", "colour"),
    ("color", "colour"),
    ("pattern", "pattern"),
    ("print", "pattern"),
    ("type", "category"),
    ("category", "category"),
    ("department", "index_group"),
    ("audience", "index_group"),
)


# -- from the query ----------------------------------------------------------------------------


def warm_up(engine: SearchEngine) -> None:
    """Load the attribute heads and run them once, outside any request's deadline."""
    catalog_arrays(engine).understanding.warm_up()


class QueryInfo:
    """Facts about one query that tools need, each extracted at most once (thread-safe).

    A thin view of `revision.vision`'s query understanding (`catalog.understanding` unless
    given) over this request's photo: the heads read the raw embedding
    (`query.facts["embedding"]`), the neighbour vote the search-space vector (`query.vector`).
    """

    def __init__(
        self,
        engine: SearchEngine,
        catalog: CatalogArrays,
        query: Query,
        understanding: QueryUnderstanding | None = None,
    ):
        self.engine = engine
        self.catalog = catalog
        self.query = query
        self.understanding = understanding or catalog.understanding
        self._lock = threading.Lock()
        self._bound = False
        # OCR may start at once; what needs the embedding binds it when the photo is encoded
        self._photo: Photo = self.understanding.photo(query.image)
        # Tools may start before the photo is encoded; whatever needs the embedding waits.
        self.understood = threading.Event()
        if query.vector is not None:
            self.understood.set()

    def vector(self, timeout: float = 30.0) -> np.ndarray:
        """The query embedding, once the main search has encoded the photo."""
        if not self.understood.wait(timeout):
            raise TimeoutError("the query photo was not encoded in time")
        if self.query.vector is None:
            raise InputError(f"{self.query.source}: the query could not be encoded")
        return self.query.vector

    def photo(self) -> Photo:
        """The request's photo memo, its embeddings bound once the main search encoded it."""
        vector = self.vector()
        with self._lock:
            if not self._bound:
                # the heads read the encoder's raw embedding, not the adapter's search space
                raw = getattr(self.query, "embedding", None)
                if raw is None:
                    raw = self.query.facts.get("embedding", vector)
                self._photo.bind(embedding=raw, vector=vector)
                self._bound = True
        return self._photo

    def _once(self, key: str, compute):
        return self._photo.once(key, compute)

    def attributes(self) -> dict[str, tuple[str, float]]:
        """{attribute: (catalog label, confidence)} for colour, category, pattern, department
        and index group (see `QueryUnderstanding.attributes`). Cached in
        `query.facts["attributes"]`."""
        if "attributes" in self.query.facts:
            return self.query.facts["attributes"]
        return self._once(
            "attributes",
            lambda: self.understanding.attributes(self.photo(), self.catalog.labels),
        )

    def similarities(self) -> np.ndarray:
        """The query's cosine similarity to every indexed product (computed once)."""
        return self._once("similarities", lambda: self.catalog.similarity(self.vector()))

    def value(self, attr: str) -> str | None:
        got = self.attributes().get(attr)
        return got[0] if got else None

    def ocr_text(self) -> str:
        """Text printed on the query item (empty without a photo or when none is legible)."""
        return self._photo.ocr_text()

    def description(self) -> str:
        """A short text query for the photo: colour, pattern (unless plain), type, audience."""
        return QueryUnderstanding.describe(self.attributes())
