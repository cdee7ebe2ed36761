"""The tool list: fine-grained groups (ontology subcategories) as numbered tools.

Planner training data writes a plan as tool indices, `(1) (3) (5)` (paper §III-C(a)), so an
index must mean the same tool forever: an existing tool keeps its index, a new one is appended
after the highest index ever used, and a tool whose group disappears is kept as `retired` with
its index reserved (it comes back under the same index if the group returns). A group's
identity is the optional `key:` of its subcategory in the ontology, else "main/sub" in lower
case, so renaming a subcategory without a `key:` makes a new tool.

Stored as `artifacts/tools/toollist.json` (the source of truth) and table `clustering/toollist`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import pyarrow as pa

from revision.clustering.ontology import Ontology
from revision.errors import InputError, MissingArtifactError
from revision.warehouse import Warehouse

TABLE = "clustering/toollist"
ARTIFACT = ("tools", "toollist.json")


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


def tool_key(main: str, sub: str) -> str:
    return f"{main.strip().lower()}/{sub.strip().lower()}"


def _describe(main, sub) -> str:
    if sub.description:
        return " ".join(sub.description.split())
    comp = f" Executed by the `{sub.tool}` component." if sub.tool else ""
    return f"{sub.name} ({main.name}): for actions such as {', '.join(sub.keywords[:5])}.{comp}"


def build_tool_list(
    ontology: Ontology,
    previous: Sequence[ToolSpec] = (),
    *,
    support: Mapping[str, int] | None = None,
    min_support: int = 0,
) -> list[ToolSpec]:
    """Merge the ontology's groups into `previous`: keep indices, append new, retire gone.

    `support` maps tool keys to how many actions the latest run assigned there; with
    `min_support` > 0 a group needs at least that many to be an active tool.
    """
    groups = {}
    for main, sub in ontology.leaves():
        extra = sub.model_extra or {}
        key = str(extra.get("key") or tool_key(main.name, sub.name))
        n = int((support or {}).get(key, 0))
        if support is not None and min_support > 0 and n < min_support:
            continue
        groups[key] = ToolSpec(
            index=0,
            title=sub.name,
            description=_describe(main, sub),
            component=sub.tool,
            key=key,
            main=main.name,
            support=n,
            keywords=list(sub.keywords),
        )
    out: list[ToolSpec] = []
    seen: set[str] = set()
    for old in previous:
        if old.key in groups:
            out.append(replace(groups[old.key], index=old.index))
        else:
            out.append(replace(old, retired=True, support=0))
        seen.add(old.key)
    next_index = max((t.index for t in previous), default=0) + 1
    for key, spec in groups.items():
        if key not in seen:
            out.append(replace(spec, index=next_index))
            next_index += 1
    return sorted(out, key=lambda t: t.index)


def active_tools(tools: Sequence[ToolSpec]) -> list[ToolSpec]:
    return [t for t in tools if not t.retired]


def format_tool_list(tools: Sequence[ToolSpec]) -> str:
    """The planner's view: one line per active tool, `(index) title: description`."""
    return "\n".join(f"({t.index}) {t.title}: {t.description}" for t in active_tools(tools))


def save_tool_list(warehouse: Warehouse, tools: Sequence[ToolSpec]) -> None:
    path = warehouse.artifact(*ARTIFACT)
    doc = {
        "version": 1,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tools": [t.to_dict() for t in tools],
    }
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=2))
    tmp.replace(path)
    warehouse.write(
        TABLE,
        pa.table(
            {
                "index": pa.array([t.index for t in tools], pa.int32()),
                "title": pa.array([t.title for t in tools], pa.string()),
                "description": pa.array([t.description for t in tools], pa.string()),
                "component": pa.array([t.component for t in tools], pa.string()),
                "retired": pa.array([t.retired for t in tools], pa.bool_()),
                "key": pa.array([t.key for t in tools], pa.string()),
                "main": pa.array([t.main for t in tools], pa.string()),
                "support": pa.array([t.support for t in tools], pa.int64()),
            }
        ),
    )


def load_tool_list(
    warehouse: Warehouse | None = None, *, missing_ok: bool = False
) -> list[ToolSpec]:
    """The stored tool list (every tool, retired ones included), ordered by index."""
    warehouse = warehouse if warehouse is not None else Warehouse()
    path = warehouse.root.joinpath("artifacts", *ARTIFACT)
    if not path.is_file():
        if missing_ok:
            return []
        raise MissingArtifactError(
            f"no tool list at {path} (run `revision cluster tools` to build it)"
        )
    try:
        doc = json.loads(path.read_text("utf-8"))
        tools = [ToolSpec(**t) for t in doc["tools"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a tool list ({exc})") from None
    return sorted(tools, key=lambda t: t.index)
