"""Hidden user intents and the predicates that say whether a result, or a response, serves one.

The predicates are the simulator's definition of a satisfied user and the yardstick any later
benchmark uses for "satisfied rate": they read product rows (mappings with the catalog columns)
and the response's cues, never the engine. Trade-off: they are deliberately crisp rules (a price
threshold, an equal attribute), so a result either serves an intent or it does not; real users
are fuzzier, which the click model adds back with examination noise and stray clicks.

Cue types a pipeline may emit in `SearchResponse.cues` and what they do here:

Cues arrive typed (`revision.search._base`: LabelCue, MetadataCue, …); `plain_cues` turns them
into mappings, the form the predicates read:

- `{"type": "metadata", "product_id": P, "fields": {"material": ..., "care": ...}}` serves
  `info` when P is of the target's design (same variant group) and carries the wanted field.
- `{"type": "question", "attribute": "colour", "options": [...]}` serves `preference`: the user
  answers with their hidden preferred value when it is offered, and is satisfied when a result
  of the target's category has that value. (Until a pipeline re-runs on the answer, that result
  must already be among the shown ones.)
- `{"type": "label", "product_id": P, "badge": ...}` and `{"type": "summary", ...}` change
  what users look at (see `revision.sim.traffic`), not what satisfies them.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EXACT = "exact"  # this very item
SIMILAR = "similar"  # another design of the same type
VARIANT = "variant"  # the same design in another colour
CHEAPER = "cheaper"  # the same type, clearly cheaper
PREMIUM = "premium"  # the same type, clearly dearer
SAME_PATTERN = "same_pattern"  # the same print or structure on another design
OTHER_DEPARTMENT = "other_department"  # the same type for another audience (kids, men, ...)
INFO = "info"  # material or care details of this item
PREFERENCE = "preference"  # an ambiguous photo: needs a preference question

INTENTS: tuple[str, ...] = (
    EXACT,
    SIMILAR,
    VARIANT,
    CHEAPER,
    PREMIUM,
    SAME_PATTERN,
    OTHER_DEPARTMENT,
    INFO,
    PREFERENCE,
)
INFO_FIELDS = ("material", "care")
Row = Mapping[str, Any]


@dataclass(frozen=True)
class UserState:
    """What a simulated user holds back: the value their intent is about, if any.

    `preferred` is the wanted index group for `other_department`, the wanted detail
    (`material` or `care`) for `info`, and the wanted attribute value (a colour) for
    `preference`; None elsewhere.
    """

    preferred: str | None = None


@dataclass(frozen=True)
class PredicateParams:
    """The thresholds of the predicates; `from_world` reads them from a world file."""

    min_discount: float = 0.25
    min_markup: float = 0.25
    price_same_index_group: bool = True
    plain_patterns: frozenset[str] = frozenset({"Solid", "Unknown"})
    pattern_same_category: bool = True
    preference_attribute: str = "colour"

    @classmethod
    def from_world(cls, world) -> PredicateParams:
        it = world.intents
        kwargs: dict[str, Any] = {}
        if it.cheaper is not None:
            kwargs.update(
                min_discount=it.cheaper.min_discount,
                price_same_index_group=it.cheaper.same_index_group,
            )
        if it.premium is not None:
            kwargs["min_markup"] = it.premium.min_markup
        if it.same_pattern is not None:
            kwargs.update(
                plain_patterns=frozenset(it.same_pattern.plain_patterns),
                pattern_same_category=it.same_pattern.same_category,
            )
        if it.preference is not None:
            kwargs["preference_attribute"] = it.preference.attribute
        return cls(**kwargs)


DEFAULT_PARAMS = PredicateParams()


def value(row: Row, key: str) -> Any:
    """A row's field, with missing, NaN and empty text all read as None."""
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return None
    return v


def _same(a: Row, b: Row, key: str) -> bool:
    x = value(a, key)
    return x is not None and x == value(b, key)


def plain_cues(cues: Iterable[Any]) -> list[Mapping[str, Any]]:
    """Cues as mappings: the typed cues of a response (pydantic models) or plain dicts."""
    return [c.model_dump() if hasattr(c, "model_dump") else c for c in cues]


def _cues_of(cues: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [c for c in cues if isinstance(c, Mapping) and c.get("type") == kind]


def _metadata_has(cue: Mapping[str, Any], wanted: str | None) -> bool:
    fields = cue.get("fields")
    if not isinstance(fields, Mapping):
        return False
    keys = (wanted,) if wanted else INFO_FIELDS
    return any(fields.get(k) not in (None, "", [], {}) for k in keys)


def _offered(cues: Iterable[Mapping[str, Any]], attribute: str, preferred: str) -> bool:
    want = preferred.casefold()
    for cue in _cues_of(cues, "question"):
        if cue.get("attribute") != attribute:
            continue
        options = cue.get("options") or ()
        if any(str(o).casefold() == want for o in options):
            return True
    return False


def _price_ok(target: Row, hit: Row, params: PredicateParams, cheaper: bool) -> bool:
    p, q = value(target, "price"), value(hit, "price")
    if p is None or q is None or hit.get("product_id") == target.get("product_id"):
        return False  # never invent a price: unpriced products are neither cheaper nor dearer
    if not _same(target, hit, "category"):
        return False
    if params.price_same_index_group and value(target, "index_group") != value(hit, "index_group"):
        return False
    if cheaper:
        return q <= p * (1 - params.min_discount)
    return q >= p * (1 + params.min_markup)


def satisfies(
    intent: str,
    target: Row,
    hit: Row,
    cues: Sequence[Mapping[str, Any]] = (),
    user: UserState | None = None,
    params: PredicateParams = DEFAULT_PARAMS,
) -> bool:
    """Does the shown product `hit` serve `intent` for a photo of `target`?

    `target` and `hit` are product rows (catalog columns); `cues` the response's cues.

    >>> t = {"product_id": "1", "category": "Dress", "index_group": "Ladieswear", "price": 0.04}
    >>> satisfies("cheaper", t, {**t, "product_id": "2", "price": 0.02})
    True
    >>> satisfies("cheaper", t, {**t, "product_id": "2", "price": None})
    False
    """
    user = user or UserState()
    same_item = hit.get("product_id") == target.get("product_id")
    if intent == EXACT:
        return same_item
    if intent == SIMILAR:
        return _same(target, hit, "category") and not _same(target, hit, "variant_group")
    if intent == VARIANT:
        return (
            not same_item
            and _same(target, hit, "variant_group")
            and value(hit, "colour") != value(target, "colour")
        )
    if intent == CHEAPER:
        return _price_ok(target, hit, params, cheaper=True)
    if intent == PREMIUM:
        return _price_ok(target, hit, params, cheaper=False)
    if intent == SAME_PATTERN:
        pattern = value(target, "pattern")
        if pattern is None or pattern in params.plain_patterns:
            return False
        if params.pattern_same_category and not _same(target, hit, "category"):
            return False
        return value(hit, "pattern") == pattern and not _same(target, hit, "variant_group")
    if intent == OTHER_DEPARTMENT:
        if not _same(target, hit, "category"):
            return False
        group = value(hit, "index_group")
        if user.preferred is not None:
            return group == user.preferred
        return group is not None and group != value(target, "index_group")
    if intent == INFO:
        if not (same_item or _same(target, hit, "variant_group")):
            return False
        return any(
            c.get("product_id") == hit.get("product_id") and _metadata_has(c, user.preferred)
            for c in _cues_of(cues, "metadata")
        )
    if intent == PREFERENCE:
        attribute = params.preference_attribute
        if user.preferred is None or not _offered(cues, attribute, user.preferred):
            return False
        return _same(target, hit, "category") and value(hit, attribute) == user.preferred
    raise ValueError(f"unknown intent {intent!r}; valid: {', '.join(INTENTS)}")


def satisfied(
    intent: str,
    target: Row,
    response,
    *,
    products: Mapping[str, Row],
    user: UserState | None = None,
    params: PredicateParams = DEFAULT_PARAMS,
    cues: Sequence[Mapping[str, Any]] | None = None,
) -> bool:
    """Does a `SearchResponse` serve `intent`? True when any shown result does, or, for `info`,
    when a metadata cue with the wanted field is about a product of the target's design (even
    one not among the results: the details are on screen). `products` maps product_id -> row;
    `cues` (default: the response's) are what the user has on screen, which after answering a
    question still includes the question.
    """
    cues = plain_cues(response.cues or ()) if cues is None else plain_cues(cues)
    for hit in response.results:
        row = products.get(hit.product_id)
        if row is not None and satisfies(intent, target, row, cues, user, params):
            return True
    if intent == INFO:
        wanted = (user or UserState()).preferred
        for cue in _cues_of(cues, "metadata"):
            row = products.get(cue.get("product_id"))
            design = row is not None and (
                row.get("product_id") == target.get("product_id")
                or _same(target, row, "variant_group")
            )
            if design and _metadata_has(cue, wanted):
                return True
    return False


def product_rows(products) -> dict[str, dict[str, Any]]:
    """product_id -> row dict from a catalog DataFrame, with NaN read as None."""
    frame = products.astype(object).where(products.notna(), None)
    return {row["product_id"]: row for row in frame.to_dict("records")}


# -- which intents a product can carry, and the hidden values users may prefer -----------------


@dataclass
class CatalogFacts:
    """Catalog-wide facts the intent model needs: is an intent possible for a product at all
    (a cheaper item must exist), and which values may a user prefer (another department)."""

    rows: Mapping[str, Row]
    params: PredicateParams = DEFAULT_PARAMS
    tier_quantiles: tuple[float, float] = (0.33, 0.67)
    tiers_: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        prices: dict[tuple, list[float]] = defaultdict(list)
        self.cat_groups_: dict[Any, Counter] = defaultdict(Counter)
        self.cat_colours_: dict[Any, Counter] = defaultdict(Counter)
        self.cat_designs_: dict[Any, set] = defaultdict(set)
        self.pattern_designs_: dict[tuple, set] = defaultdict(set)
        self.design_colours_: dict[Any, Counter] = defaultdict(Counter)
        known = []
        for row in self.rows.values():
            cat, group, colour = (value(row, k) for k in ("category", "index_group", "colour"))
            design = value(row, "variant_group") or row.get("product_id")
            price = value(row, "price")
            if price is not None:
                known.append(price)
                prices[self._price_key(row)].append(price)
            if cat is None:
                continue
            self.cat_designs_[cat].add(design)
            if group is not None:
                self.cat_groups_[cat][group] += 1
            if colour is not None:
                self.cat_colours_[cat][colour] += 1
                self.design_colours_[design][colour] += 1
            pkey = (
                (cat, value(row, "pattern"))
                if self.params.pattern_same_category
                else (None, value(row, "pattern"))
            )
            self.pattern_designs_[pkey].add(design)
        self.prices_ = {k: (min(v), max(v)) for k, v in prices.items()}
        lo, hi = np.quantile(known, self.tier_quantiles) if known else (math.inf, math.inf)
        self.tiers_ = (float(lo), float(hi))

    def _price_key(self, row: Row) -> tuple:
        group = value(row, "index_group") if self.params.price_same_index_group else None
        return (value(row, "category"), group)

    def group_counts(self) -> dict[str, int]:
        """Products per audience (index group): where users' home audiences come from."""
        counts: Counter = Counter()
        for groups in self.cat_groups_.values():
            counts.update(groups)
        return dict(counts)

    def price_tier(self, row: Row) -> str:
        price = value(row, "price")
        if price is None:
            return "none"
        return "low" if price < self.tiers_[0] else ("high" if price > self.tiers_[1] else "mid")

    def eligible(self, intent: str, target: Row) -> bool:
        """Can any catalog product satisfy `intent` for `target`? (Else users never hold it.)"""
        cat = value(target, "category")
        design = value(target, "variant_group") or target.get("product_id")
        if intent == EXACT:
            return True
        if intent == SIMILAR:
            return cat is not None and len(self.cat_designs_[cat] - {design}) > 0
        if intent == VARIANT:
            colours = self.design_colours_.get(design, Counter())
            return any(c != value(target, "colour") for c in colours)
        if intent in (CHEAPER, PREMIUM):
            price = value(target, "price")
            bounds = self.prices_.get(self._price_key(target))
            if price is None or cat is None or bounds is None:
                return False
            if intent == CHEAPER:
                return bounds[0] <= price * (1 - self.params.min_discount)
            return bounds[1] >= price * (1 + self.params.min_markup)
        if intent == SAME_PATTERN:
            pattern = value(target, "pattern")
            if pattern is None or pattern in self.params.plain_patterns:
                return False
            key = (cat, pattern) if self.params.pattern_same_category else (None, pattern)
            return len(self.pattern_designs_.get(key, set()) - {design}) > 0
        if intent == OTHER_DEPARTMENT:
            return bool(self.preferred_options(intent, target)[0])
        if intent == INFO:
            return value(target, "description") is not None
        if intent == PREFERENCE:
            return len(self.preferred_options(intent, target)[0]) >= 2
        raise ValueError(f"unknown intent {intent!r}; valid: {', '.join(INTENTS)}")

    def preferred_options(self, intent: str, target: Row) -> tuple[list[str], list[float]]:
        """Values a user with `intent` may hold for `target`, with weights (empty: none)."""
        cat = value(target, "category")
        if intent == OTHER_DEPARTMENT:
            mine = value(target, "index_group")
            groups = self.cat_groups_.get(cat, Counter()) if cat is not None else Counter()
            # every other audience equally likely: a parent wants the kids' version as often
            # as a young-fashion shopper wants the ladies' one, whatever the catalog's sizes
            others = sorted(g for g in groups if g != mine)
            return others, [1.0] * len(others)
        if intent == PREFERENCE:
            if self.params.preference_attribute != "colour":
                return [], []
            design = value(target, "variant_group") or target.get("product_id")
            colours = self.design_colours_.get(design, Counter())
            if len(colours) < 2 and cat is not None:  # one colour only: the type's common ones
                colours = Counter(dict(self.cat_colours_[cat].most_common(6)))
            items = sorted(colours.items())
            return [c for c, _ in items], [float(n) for _, n in items]
        return [], []
