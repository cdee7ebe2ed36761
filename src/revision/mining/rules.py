"""Expert rules: conditions over stage-1 facts that suggest an `Action -> Info` signal.

The paper's domain experts encode the visual search system's biases as rules ("if result prices
concentrate in a low range, supplement similar premium products"). Here a rule file is YAML,
validated on load with errors that name the file, the rule and the key; a rule can only test
facts that perception produces (`revision.mining.perception.FACTS`), so a typo fails at load,
not silently at mining time. Conditions are data (fact, operator, value), never code.

    version: 1
    max_signals: 5
    rules:
      - name: premium_gap
        description: Result prices concentrate in the low range.
        when:
          - {fact: price.known, op: ">=", value: 3}
          - {fact: price.low_share, op: ">=", value: 0.6}
        action: Supplement premium products
        info: "price above {price.q75:.3g}"
        confidence: 0.7
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from revision.config import parse_yaml
from revision.errors import ConfigError
from revision.mining import evidence, perception
from revision.mining._base import MAX_SIGNALS, Signal

DEFAULT_RULES = "default_rules.yaml"
# The facts a rule may name: perception's (the photo and its results) and the evidence's
# (follow-ups, the user's history and session, outcomes).
FACTS: dict[str, tuple[str, str]] = {**perception.FACTS, **evidence.FACTS}
NUMERIC_OPS = ("<", "<=", ">", ">=")
Op = Literal["<", "<=", ">", ">=", "==", "!=", "in", "not in", "exists", "missing"]
# {fact}, {fact|lower}, {fact:.3g}: the only template syntax (no attribute or index access).
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_.]*)(\|(?:lower|upper|title))?(?::([^{}]*))?\}")


def _check_fact(name: str) -> str:
    if name not in FACTS:
        near = [f for f in FACTS if f.split(".")[0] == name.split(".")[0]] or list(FACTS)
        raise ValueError(f"unknown fact {name!r}; valid: {', '.join(sorted(near))}")
    return name


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fact: str
    op: Op
    value: float | bool | str | list[str] | None = None

    @field_validator("fact")
    @classmethod
    def _known_fact(cls, name: str) -> str:
        return _check_fact(name)

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        kind = FACTS[self.fact][0]
        if self.op in ("exists", "missing"):
            if self.value is not None:
                raise ValueError(f"op {self.op!r} takes no value")
        elif self.value is None:
            raise ValueError(f"op {self.op!r} needs a value")
        elif self.op in NUMERIC_OPS and (
            kind != "num" or isinstance(self.value, bool | str | list)
        ):
            raise ValueError(
                f"op {self.op!r} needs a numeric fact and value ({self.fact} is {kind})"
            )
        elif self.op in ("in", "not in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list value")
        return self

    def holds(self, facts: dict[str, Any]) -> bool:
        actual = facts.get(self.fact)
        if self.op == "exists":
            return actual is not None and actual != ""
        if self.op == "missing":
            return actual is None or actual == ""
        if actual is None:
            return False  # an unknown fact never satisfies a comparison
        v = self.value
        match self.op:
            case "<":
                return actual < v
            case "<=":
                return actual <= v
            case ">":
                return actual > v
            case ">=":
                return actual >= v
            case "==":
                return actual == v
            case "!=":
                return actual != v
            case "in":
                return actual in v
            case _:
                return actual not in v


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str = ""
    when: list[Condition] = Field(min_length=1)  # all must hold
    any: list[Condition] = []  # and at least one of these, when given
    action: str = Field(min_length=1, max_length=80)
    info: str = Field(min_length=1, max_length=120)  # a template over facts
    confidence: float = Field(gt=0.0, le=1.0)
    scale_by: str | None = None  # a numeric fact in [0, 1] that multiplies the confidence

    @field_validator("info")
    @classmethod
    def _placeholders(cls, info: str) -> str:
        stripped = _PLACEHOLDER.sub("", info)
        if "{" in stripped or "}" in stripped:
            raise ValueError(
                "bad placeholder: use {fact}, {fact|lower} or {fact:.3g} with a fact name"
            )
        for match in _PLACEHOLDER.finditer(info):
            _check_fact(match.group(1))
        return info

    @field_validator("scale_by")
    @classmethod
    def _scale_fact(cls, name: str | None) -> str | None:
        if name is not None and FACTS[_check_fact(name)][0] != "num":
            raise ValueError(f"scale_by needs a numeric fact, {name} is {FACTS[name][0]}")
        return name

    @property
    def evidence(self) -> bool:
        """An evidence rule reads a follow-up (`events.*`): when it fires, the user said what
        they wanted, and its action settles the request's intent."""
        return any(c.fact.startswith("events.") for c in (*self.when, *self.any))

    def fire(self, facts: dict[str, Any]) -> Signal | None:
        if not all(c.holds(facts) for c in self.when):
            return None
        if self.any and not any(c.holds(facts) for c in self.any):
            return None
        info = render(self.info, facts)
        if info is None:
            return None
        confidence = self.confidence
        if self.scale_by is not None:
            confidence *= min(1.0, max(0.0, float(facts.get(self.scale_by) or 0.0)))
        return Signal(self.action, info, round(confidence, 4))


def render(template: str, facts: dict[str, Any]) -> str | None:
    """Fill a rule's info template; None when a named fact is unknown for this request."""
    missing = False

    def fill(match: re.Match) -> str:
        nonlocal missing
        value = facts.get(match.group(1))
        if value is None or value == "":
            missing = True
            return ""
        text = format(value, match.group(3)) if match.group(3) else str(value)
        case = match.group(2)
        return getattr(text, case[1:])() if case else text

    out = _PLACEHOLDER.sub(fill, template)
    return None if missing else out


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    max_signals: int = Field(default=MAX_SIGNALS, ge=1, le=12)
    min_confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        seen = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"duplicate rule name {rule.name!r}")
            seen.add(rule.name)
        return self

    def apply(self, facts: dict[str, Any], limit: int | None = -1) -> list[tuple[Rule, Signal]]:
        """Fired rules with their signals, by confidence (ties: file order), at most
        `max_signals` (or `limit`; None: all). One signal per action, or per action and info
        key where the info is `key: value` (a colour and a pattern refinement are two signals,
        two cheaper price bounds are one)."""
        fired = []
        for order, rule in enumerate(self.rules):
            signal = rule.fire(facts)
            if signal is not None and signal.confidence >= self.min_confidence:
                fired.append((-signal.confidence, order, rule, signal))
        fired.sort(key=lambda f: (f[0], f[1]))
        out, seen = [], set()
        for _, _, rule, signal in fired:
            key = (signal.action, signal.info.split(":")[0] if ":" in signal.info else "")
            if key not in seen:
                seen.add(key)
                out.append((rule, signal))
        if limit is None:
            return out
        return out[: self.max_signals if limit == -1 else limit]


@dataclass(frozen=True)
class LoadedRules:
    rules: RuleSet
    source: str
    digest: str  # sha256 of the file, part of a mining run's fingerprint


def load_rules(path: str | Path | None = None) -> LoadedRules:
    """Load and validate a rules file (default: the shipped `default_rules.yaml`)."""
    if path is None:
        text = files("revision.mining").joinpath(DEFAULT_RULES).read_text(encoding="utf-8")
        source = f"<shipped {DEFAULT_RULES}>"
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such rules file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read rules file ({exc})") from None
    return LoadedRules(parse_rules(text, source), source, hashlib.sha256(text.encode()).hexdigest())


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    raw = parse_yaml(text, source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'rules' list at the top")
    try:
        return RuleSet.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, raw, source)) from None


def _explain(exc: ValidationError, raw: dict, source: str) -> str:
    """Pydantic's errors as lines naming the rule (by name and index) and the key."""
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            index = loc[1]
            rules = raw.get("rules") or []
            item = rules[index] if index < len(rules) else None
            name = item.get("name") if isinstance(item, dict) else None
            where = f"rule {name!r} (rules[{index}])" if name else f"rules[{index}]"
            loc = loc[2:]
        key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{', '.join(x for x in (where, key) if x) or 'top level'}: {message}")
    return f"{source}: invalid rules:\n  " + "\n  ".join(lines)
