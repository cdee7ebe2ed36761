"""The tool list file: the numbered tools a plan's `(n)` refers to, with a digest and a version.

Written by the clustering stage, read by the tools, the planner and the service: this module is
the one declaration they share (file format, digest, version), so none of them imports another
stage to read it. An index must mean the same tool forever (the clustering stage keeps indices
stable); the **digest** is a content hash of what the indices mean (index, title, description,
component, retired), and the **version** counts the changes of that digest. Anything derived from
a tool list (planner data, checkpoints, the service's decision cache) records the digest it was
built for, and `check_digest` turns a mismatch into a clear error instead of a silent misread.

Stored as `artifacts/tools/toollist.json`; the clustering stage also mirrors it into the table
`clustering/toollist` for SQL.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from revision.errors import InputError, MissingArtifactError
from revision.warehouse import Warehouse

ARTIFACT = ("tools", "toollist.json")
FORMAT = 2  # version 1 files (no digest) are read and given one


@dataclass(frozen=True)
class ToolSpec:
    """One tool: `index` (1-based, stable), `title`, `description`, bound `component`."""

    index: int
    title: str
    description: str
    component: str | None = None
    retired: bool = False
    key: str = ""
    main: str = ""
    support: int = 0  # actions assigned to the group in the run the list was built from
    keywords: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def digest(tools: Sequence[ToolSpec]) -> str:
    """Content hash of what the indices mean (support and keywords may change freely).

    >>> a = ToolSpec(1, "Price", "cheaper")
    >>> digest([a]) == digest([ToolSpec(1, "Price", "cheaper", support=9)])
    True
    >>> digest([ToolSpec(1, "Price", "cheaper")]) == digest([ToolSpec(2, "Price", "cheaper")])
    False
    """
    meaning = [
        [t.index, t.title, " ".join(t.description.split()), t.component, t.retired]
        for t in sorted(tools, key=lambda t: t.index)
    ]
    return hashlib.sha256(json.dumps(meaning, ensure_ascii=False).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ToolListDoc:
    """A stored tool list: the tools, their digest, the version and when it changed."""

    tools: tuple[ToolSpec, ...]
    digest: str
    version: int
    updated: str = ""

    def active(self) -> list[ToolSpec]:
        return [t for t in self.tools if not t.retired]

    def live_indices(self) -> list[int]:
        return [t.index for t in self.active() if t.component]


def path(warehouse: Warehouse) -> Path:
    return warehouse.root.joinpath("artifacts", *ARTIFACT)


def save(warehouse: Warehouse, tools: Sequence[ToolSpec]) -> ToolListDoc:
    """Write the list atomically; the version goes up when the digest changes."""
    previous = load(warehouse, missing_ok=True)
    new_digest = digest(tools)
    version = (previous.version + (previous.digest != new_digest)) if previous else 1
    doc = ToolListDoc(
        tuple(sorted(tools, key=lambda t: t.index)),
        new_digest,
        version,
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    target = warehouse.artifact(*ARTIFACT)
    body = {
        "format": FORMAT,
        "version": doc.version,
        "digest": doc.digest,
        "updated": doc.updated,
        "tools": [t.to_dict() for t in doc.tools],
    }
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(body, ensure_ascii=False, indent=2), encoding="utf-8")
    tmp.replace(target)
    return doc


def load(warehouse: Warehouse, *, missing_ok: bool = False) -> ToolListDoc | None:
    """The stored tool list (retired tools included), or None when missing and `missing_ok`."""
    file = path(warehouse)
    if not file.is_file():
        if missing_ok:
            return None
        raise MissingArtifactError(
            f"no tool list at {file} (run `revision cluster tools` to build it)"
        )
    try:
        body = json.loads(file.read_text("utf-8"))
        tools = tuple(sorted((ToolSpec(**t) for t in body["tools"]), key=lambda t: t.index))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{file}: not a tool list ({exc})") from None
    stored = body.get("digest")
    actual = digest(tools)
    if stored is not None and stored != actual:
        raise InputError(
            f"{file}: its digest {stored} does not match its tools ({actual}); it was edited by "
            "hand: rebuild it with `revision cluster tools`"
        )
    version = int(body.get("version", 1)) if body.get("format") == FORMAT else 1
    return ToolListDoc(tools, actual, version, str(body.get("updated", "")))


def check_digest(expected: str, actual: str, what: str) -> None:
    """Raise when an artefact built for one tool list meets another."""
    if expected and actual and expected != actual:
        raise InputError(
            f"{what} was built for tool list {expected}, but the current tool list is {actual}: "
            "its tool indices would be misread; rebuild it from the current tool list"
        )
