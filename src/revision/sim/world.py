"""The world file: everything the simulator assumes about users, intents, photos and bots.

A world is a YAML file validated by pydantic models that forbid unknown keys, so a typo
(`min_discont`) fails with the key's path and the valid keys instead of being silently ignored.
Values that are catalog names (categories, colours, patterns) cannot be checked against a
catalog at load time: a multiplier naming a category the catalog lacks simply never applies.
The shipped `default_world.yaml` is the reference; a different file works without code changes.
"""

from __future__ import annotations

import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from revision.config import parse_yaml, read_config_text
from revision.errors import ConfigError
from revision.tables import EVENT_KINDS
from revision.vision.query_photos import LOW_QUALITY_KINDS, SEVERITIES

DEFAULT_WORLD = "default_world.yaml"

PriceTier = Literal["low", "mid", "high", "none"]  # "none": the product has no known price
Severity = Literal["mild", "medium", "hard"]
LowQualityKind = Literal["dark", "blurred", "tiny", "off_topic"]
PhotoKind = Literal["mild", "medium", "hard", "dark", "blurred", "tiny", "off_topic"]
PHOTO_KINDS: tuple[str, ...] = (*SEVERITIES, *LOW_QUALITY_KINDS)
PRICE_TIERS: tuple[str, ...] = typing.get_args(PriceTier)

Probability = typing.Annotated[float, Field(ge=0.0, le=1.0)]
Weight = typing.Annotated[float, Field(ge=0.0)]
Positive = typing.Annotated[float, Field(gt=0.0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _range(v: tuple[float, float]) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError(f"range [{v[0]}, {v[1]}] has its low end above its high end")
    return v


def _some_weight(v: dict[str, float]) -> dict[str, float]:
    if v and sum(v.values()) <= 0:
        raise ValueError("needs at least one positive weight")
    return v


class LogNormal(_Model):
    """A positive quantity drawn as `median * exp(sigma * N(0, 1))`."""

    median: Positive
    sigma: Weight = 0.5


# -- catalog-derived facts ---------------------------------------------------------------------


class Popularity(_Model):
    """Which products users photograph: a Zipf law over a seeded popularity order."""

    zipf: Weight = 0.7  # exponent over popularity rank (0 = uniform)
    priced_boost: Weight = 3.0  # products with a known price (bought before) are this much likelier
    noise_sigma: Weight = 1.0  # lognormal spread of popularity among otherwise equal products


class CatalogSpec(_Model):
    price_tiers: tuple[Probability, Probability] = (0.33, 0.67)  # quantiles: low | mid | high
    category_groups: dict[str, list[str]] = Field(default_factory=dict)  # name -> categories
    popularity: Popularity = Popularity()

    _tiers = field_validator("price_tiers")(_range)


# -- photos ------------------------------------------------------------------------------------


class LowQuality(_Model):
    rate: Probability = 0.06  # share of human requests sent with a low-quality photo
    photos: int = Field(default=80, ge=0)  # low-quality photos in the pool
    kinds: dict[LowQualityKind, Weight] = Field(
        default_factory=lambda: {"dark": 0.3, "blurred": 0.3, "tiny": 0.2, "off_topic": 0.2}
    )

    _kinds = field_validator("kinds")(_some_weight)

    @model_validator(mode="after")
    def _photos_for_rate(self) -> LowQuality:
        if self.rate > 0 and self.photos == 0:
            raise ValueError("rate is above 0 but photos is 0: the pool needs low-quality photos")
        return self


class PhotoSpec(_Model):
    """The query-photo pool: photos derived from catalog photos, built once and reused."""

    seed: int = Field(default=0, ge=0)  # the pool's own seed, independent of traffic seeds
    products: int = Field(default=400, ge=1)  # the most popular products get photos
    per_product: int = Field(default=2, ge=1, le=20)
    severity: dict[Severity, Weight] = Field(
        default_factory=lambda: {"mild": 0.42, "medium": 0.45, "hard": 0.13}
    )
    low_quality: LowQuality = LowQuality()

    _severity = field_validator("severity")(_some_weight)


# -- intents -----------------------------------------------------------------------------------


class Multipliers(_Model):
    """Factors on an intent's prior by what the photographed product shows."""

    category: dict[str, Weight] = Field(default_factory=dict)
    group: dict[str, Weight] = Field(default_factory=dict)  # a `catalog.category_groups` name
    colour: dict[str, Weight] = Field(default_factory=dict)
    pattern: dict[str, Weight] = Field(default_factory=dict)
    department: dict[str, Weight] = Field(default_factory=dict)
    index_group: dict[str, Weight] = Field(default_factory=dict)
    price_tier: dict[PriceTier, Weight] = Field(default_factory=dict)
    photo: dict[PhotoKind, Weight] = Field(default_factory=dict)


class IntentSpec(_Model):
    prior: Weight
    multipliers: Multipliers = Multipliers()
    # How the user's price sensitivity s in [0, 1] scales the prior: x (1 + w (2s - 1)), >= 0.
    price_sensitivity: float = Field(default=0.0, ge=-1.0, le=1.0)
    purchase_p: Probability = 0.1  # chance a satisfied click ends in an order


class ExactSpec(IntentSpec):
    pass


class SimilarSpec(IntentSpec):
    pass


class VariantSpec(IntentSpec):
    pass


class CheaperSpec(IntentSpec):
    min_discount: float = Field(default=0.25, gt=0.0, lt=1.0)  # at least this much cheaper
    same_index_group: bool = True  # the cheaper item must be for the same audience


class PremiumSpec(IntentSpec):
    min_markup: Positive = 0.25  # at least this much dearer
    same_index_group: bool = True


class SamePatternSpec(IntentSpec):
    # Patterns that are no style to look for: the intent is never drawn for them.
    plain_patterns: list[str] = Field(default_factory=lambda: ["Solid", "Unknown"])
    same_category: bool = True


class OtherDepartmentSpec(IntentSpec):
    pass


class InfoSpec(IntentSpec):
    fields: dict[Literal["material", "care"], Weight] = Field(
        default_factory=lambda: {"material": 0.6, "care": 0.4}
    )
    # A baseline user may still open the exact item to read its details.
    click_exact_p: Probability = 0.08

    _fields = field_validator("fields")(_some_weight)


class PreferenceSpec(IntentSpec):
    attribute: Literal["colour"] = "colour"


class Intents(_Model):
    """One block per intent; an absent block disables that intent."""

    exact: ExactSpec | None = None
    similar: SimilarSpec | None = None
    variant: VariantSpec | None = None
    cheaper: CheaperSpec | None = None
    premium: PremiumSpec | None = None
    same_pattern: SamePatternSpec | None = None
    other_department: OtherDepartmentSpec | None = None
    info: InfoSpec | None = None
    preference: PreferenceSpec | None = None

    @model_validator(mode="after")
    def _some_prior(self) -> Intents:
        if not any(spec is not None and spec.prior > 0 for spec in self.enabled().values()):
            raise ValueError("at least one intent needs a prior above 0")
        return self

    def enabled(self) -> dict[str, IntentSpec]:
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if getattr(self, name) is not None
        }


# -- users and their behaviour -----------------------------------------------------------------


class BetaDist(_Model):
    a: Positive = 2.0
    b: Positive = 2.0


class Activity(_Model):
    sigma: Weight = 0.9  # lognormal spread of requests per user
    cap: Positive = 6.0  # no user is more than this many times the median activity


class Sessions(_Model):
    new_session_p: Probability = 0.5  # chance that a user's next request starts a new session
    gap_s: LogNormal = LogNormal(median=40.0, sigma=0.8)  # between requests of one session
    min_gap_s: Weight = 5.0


class Habits(_Model):
    """Users' stable leanings: each user's intent weights are the world's priors times factors
    drawn once per user and intent from Gamma(shape, 1 / shape). The factors average 1, so the
    population's mix is unchanged; a small shape makes strong habits (the same user keeps
    wanting the cheaper one, or the material), a large one makes every user alike."""

    shape: Positive | None = None  # None: no habits


class HomeGroups(_Model):
    """Who a user shops for: an audience (index group) drawn per user. A user whose photo shows
    another audience's product wants the same type for their own audience `boost` times as
    often (`other_department`, with their home group as the preferred value)."""

    weights: dict[str, Weight] = Field(default_factory=dict)  # empty: the catalog's own shares
    boost: Positive = 1.0  # 1: home groups change nothing


class Users(_Model):
    price_sensitivity: BetaDist = BetaDist()
    patience: LogNormal = LogNormal(median=1.0, sigma=0.35)
    activity: Activity = Activity()
    sessions: Sessions = Sessions()
    habits: Habits = Habits()
    home_groups: HomeGroups | None = None  # absent: users have no home audience


class Examination(_Model):
    """Position bias: P(examine rank r) = top * r ** (-eta / patience)."""

    top: Probability = 0.97
    eta: Weight = 0.5


class ClickDelay(_Model):
    median_s: Positive = 3.5
    per_rank_s: Weight = 0.8
    sigma: Weight = 0.6


class Dwell(_Model):
    satisfied: LogNormal = LogNormal(median=45.0, sigma=0.7)
    other: LogNormal = LogNormal(median=6.0, sigma=0.6)


class Behaviour(_Model):
    examination: Examination = Examination()
    click_p: Probability = 0.9  # click on an examined result that satisfies the intent
    stray_click_p: Probability = 0.025  # click on an examined result that does not
    continue_after_click: Probability = 0.3
    label_examine: Probability = 0.95  # a result with a label cue is examined at least this often
    summary_patience: Positive = 1.5  # a summary cue makes users look this much deeper
    click_delay: ClickDelay = ClickDelay()
    dwell: Dwell = Dwell()
    next_click_gap_s: LogNormal = LogNormal(median=4.0, sigma=0.5)
    order_delay_s: LogNormal = LogNormal(median=60.0, sigma=0.6)
    stray_purchase_p: Probability = 0.005


class Traffic(_Model):
    weekday: list[Weight] = Field(default_factory=lambda: [1.0] * 7)  # Monday first
    hourly: list[Weight] = Field(default_factory=lambda: [1.0] * 24)  # UTC hours

    @field_validator("weekday")
    @classmethod
    def _seven(cls, v: list[float]) -> list[float]:
        if len(v) != 7 or sum(v) <= 0:
            raise ValueError(f"needs 7 weights (Monday first), some positive; got {len(v)}")
        return v

    @field_validator("hourly")
    @classmethod
    def _twenty_four(cls, v: list[float]) -> list[float]:
        if len(v) != 24 or sum(v) <= 0:
            raise ValueError(f"needs 24 weights (UTC hours 0-23), some positive; got {len(v)}")
        return v


class Bots(_Model):
    """Scripted scrapers: few ids, many requests each, near-regular intervals, hardly a click."""

    share: Probability = 0.06  # of all requests
    requests_per_bot: tuple[Positive, Positive] = (150.0, 600.0)  # per active bot and day
    pool: int = Field(default=6, ge=1)  # distinct bot ids across days
    interval_s: tuple[Positive, Positive] = (1.0, 6.0)  # mean seconds between requests
    jitter: tuple[Weight, Weight] = (0.02, 0.2)  # coefficient of variation of the interval
    pause_p: Probability = 0.01  # chance per request of a pause (rate limit, restart)
    pause_s: tuple[Positive, Positive] = (60.0, 600.0)
    click_p: tuple[Probability, Probability] = (0.0, 0.03)
    catalog_photo_share: Probability = 0.5  # uploads of the catalog photo itself

    _ranges = field_validator("requests_per_bot", "interval_s", "jitter", "pause_s", "click_p")(
        _range
    )


EventKind = Literal[EVENT_KINDS]  # type: ignore[valid-type]
IntentName = Literal[
    "exact",
    "similar",
    "variant",
    "cheaper",
    "premium",
    "same_pattern",
    "other_department",
    "info",
    "preference",
]


class IntentFollowups(_Model):
    """What a user of one intent does after a response that did not serve them."""

    p: Probability = 0.0  # chance of a follow-up that reflects the intent
    kinds: dict[EventKind, Weight] = Field(default_factory=dict)

    _kinds = field_validator("kinds")(_some_weight)

    @model_validator(mode="after")
    def _kinds_for_p(self) -> IntentFollowups:
        if self.p > 0 and not self.kinds:
            raise ValueError("p is above 0 but no kinds are given")
        return self


class TextQueries(_Model):
    languages: dict[Literal["en", "zh"], Weight] = Field(default_factory=lambda: {"en": 1.0})
    typo_p: Probability = 0.1  # chance a text query carries a misspelling

    _languages = field_validator("languages")(_some_weight)


class Followups(_Model):
    """Follow-up events after a no-click response (`logs/events`): sorting by price, tapping a
    colour or another department, opening the material section, typing a text query,
    re-uploading, or leaving. `by_intent` says how each hidden intent shows itself; `noise` is
    the share of follow-ups that say nothing about the intent (a random kind and value); any
    user may simply leave."""

    by_intent: dict[IntentName, IntentFollowups] = Field(default_factory=dict)
    noise: Probability = 0.1
    leave_p: Probability = 0.2
    delay_s: LogNormal = LogNormal(median=12.0, sigma=0.6)  # after the request
    text: TextQueries = TextQueries()


class World(_Model):
    name: str = "world"
    description: str = ""
    catalog: CatalogSpec = CatalogSpec()
    photos: PhotoSpec = PhotoSpec()
    intents: Intents
    users: Users = Users()
    behaviour: Behaviour = Behaviour()
    traffic: Traffic = Traffic()
    bots: Bots = Bots()
    followups: Followups | None = None  # absent: no follow-up events
    top_k: int = Field(default=10, ge=1, le=100)  # results a user sees

    @model_validator(mode="after")
    def _groups_known(self) -> World:
        groups = self.catalog.category_groups
        for name, spec in self.intents.enabled().items():
            for group in spec.multipliers.group:
                if group not in groups:
                    valid = ", ".join(groups) or "(none defined)"
                    raise ValueError(
                        f"intents.{name}.multipliers.group: unknown group {group!r}; "
                        f"define it under catalog.category_groups (defined: {valid})"
                    )
        return self


# -- loading -----------------------------------------------------------------------------------


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model class that owns the last key of `loc` (to list its valid keys)."""
    model: Any = World
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = next(
            (
                a
                for a in (field.annotation, *typing.get_args(field.annotation))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def parse_world(data: Any, source: str = "<world>") -> World:
    """Validate a parsed YAML mapping; errors name `source` and the key path at fault."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with at least the key 'intents'")
    try:
        return World.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                owner = _model_at(err["loc"])
                valid = ", ".join(owner.model_fields) if owner else ""
                msg = f"unknown key {err['loc'][-1]!r}" + (
                    f"; valid keys: {valid}" if valid else ""
                )
            elif err["type"] == "literal_error" and "[key]" in err["loc"]:
                msg = f"unknown name {err['input']!r}; {msg.lower()}"
            lines.append(f"{source}: {_loc(tuple(p for p in err['loc'] if p != '[key]'))}: {msg}")
        raise ConfigError("invalid world file\n  " + "\n  ".join(lines)) from None


def default_world_path() -> Path:
    return Path(str(resources.files("revision.sim").joinpath(DEFAULT_WORLD)))


def load_world(path: str | Path | None = None) -> World:
    """Load and validate a world file (default: the shipped `default_world.yaml`)."""
    text, source = read_config_text(
        path, package="revision.sim", default=DEFAULT_WORLD, kind="world"
    )
    return parse_world(parse_yaml(text, source), source)
