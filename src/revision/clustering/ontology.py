"""The two-level ontology: executable main categories, their subcategories, keyword lists.

Loaded from YAML and validated with pydantic; every error names the file and the key path
(`main_categories[2].subcategories[0].keywords`). Unknown keys are kept, not rejected, so the
format can grow (the issue's shape is a contract, "more keys may be added").
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from revision.config import parse_yaml, read_config_text
from revision.errors import ConfigError

DEFAULT_ONTOLOGY = "default_ontology.yaml"

OTHER = "other"  # the Level-2 bucket for actions below tau2; reserved as a subcategory name


def _clean_keywords(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        if not isinstance(v, str):
            raise ValueError(f"keyword {v!r} is not a string (quote numbers: '42')")
        kw = " ".join(v.split()).lower()
        if not kw:
            raise ValueError("empty keyword")
        if kw not in out:
            out.append(kw)
    if not out:
        raise ValueError("needs at least one keyword")
    return out


class _Node(BaseModel):
    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=120)
    keywords: list[str]
    description: str | None = None

    @field_validator("keywords", mode="before")
    @classmethod
    def _keywords_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError("must be a list of keywords, e.g. [price, cheaper]")
        return v

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, v: list[str]) -> list[str]:
        return _clean_keywords(v)


class Subcategory(_Node):
    tool: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]*$")

    @field_validator("name")
    @classmethod
    def _not_other(cls, v: str) -> str:
        if v.strip().lower() == OTHER:
            raise ValueError(f"'{OTHER}' is reserved for the bucket of unmatched actions")
        return v


class MainCategory(_Node):
    subcategories: list[Subcategory] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_subs(self) -> MainCategory:
        seen: set[str] = set()
        for i, sub in enumerate(self.subcategories):
            key = sub.name.lower()
            if key in seen:
                raise ValueError(f"subcategories[{i}]: duplicate name {sub.name!r}")
            seen.add(key)
        return self


class Ontology(BaseModel):
    """`main_categories` (each with `keywords` and `subcategories`), optional `stopwords`."""

    model_config = ConfigDict(extra="allow")

    main_categories: list[MainCategory] = Field(min_length=1)
    stopwords: list[str] = Field(default_factory=list)
    status: str | None = None  # "proposed" for drafts written by `revision cluster propose`

    @field_validator("stopwords")
    @classmethod
    def _stopwords(cls, v: list[str]) -> list[str]:
        return [" ".join(w.split()).lower() for w in v if w.strip()]

    @model_validator(mode="after")
    def _unique_mains(self) -> Ontology:
        seen: set[str] = set()
        for i, main in enumerate(self.main_categories):
            key = main.name.lower()
            if key in seen:
                raise ValueError(f"main_categories[{i}]: duplicate name {main.name!r}")
            seen.add(key)
        return self

    # -- views ---------------------------------------------------------------------------------
    def main_names(self) -> list[str]:
        return [m.name for m in self.main_categories]

    def leaves(self) -> list[tuple[MainCategory, Subcategory]]:
        """(main, sub) pairs in file order: the fine-grained groups."""
        return [(m, s) for m in self.main_categories for s in m.subcategories]

    def sha256(self) -> str:
        """Fingerprint of what affects assignments (names, keywords, stopwords)."""
        core = [
            [m.name, m.keywords, [[s.name, s.keywords] for s in m.subcategories]]
            for m in self.main_categories
        ]
        blob = json.dumps([core, self.stopwords], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_yaml(self) -> str:
        """YAML with `status` and `stopwords` first and keyword lists on one line each."""
        data = self.model_dump(exclude_none=True)
        ordered = {k: data.pop(k) for k in ("status", "stopwords") if data.get(k)}
        data.pop("stopwords", None)
        ordered |= data
        return yaml.safe_dump(
            ordered, allow_unicode=True, sort_keys=False, width=100, default_flow_style=None
        )


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_ontology(data: Any, source: str = "<ontology>") -> Ontology:
    """Validate a parsed YAML/JSON mapping; `source` names the file in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with key 'main_categories'")
    try:
        return Ontology.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {_loc(err['loc'])}: {msg}")
        raise ConfigError("invalid ontology\n  " + "\n  ".join(lines)) from None


def load_ontology(path: str | Path | None = None) -> Ontology:
    """Load and validate an ontology YAML file (default: the shipped `default_ontology.yaml`)."""
    text, source = read_config_text(
        path, package="revision.clustering", default=DEFAULT_ONTOLOGY, kind="ontology"
    )
    return parse_ontology(parse_yaml(text, source), source)


def default_ontology_text() -> str:
    return resources.files("revision.clustering").joinpath(DEFAULT_ONTOLOGY).read_text("utf-8")


def default_ontology_path() -> Path:
    return Path(str(resources.files("revision.clustering").joinpath(DEFAULT_ONTOLOGY)))
