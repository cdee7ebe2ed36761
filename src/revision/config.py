"""Reading YAML config files (world, ontology, rules, plans) with errors that name the spot.

Each stage validates the parsed data with its own pydantic models; this module only turns a
path (or the shipped default) into data, so every config file fails the same clear way.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from revision.errors import ConfigError


def read_config_text(
    path: str | Path | None, *, package: str, default: str, kind: str
) -> tuple[str, str]:
    """(text, source name) of a config file, or of the package's shipped `default`."""
    if path is None:
        return resources.files(package).joinpath(default).read_text("utf-8"), default
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{kind} file {p} not found")
    try:
        return p.read_text("utf-8"), str(p)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML; a syntax error names the file, line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise ConfigError(f"{source}:{where} not valid YAML: {exc}") from None
