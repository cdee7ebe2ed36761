"""The tool list: fine-grained groups (ontology subcategories) as numbered tools.

Planner training data writes a plan as tool indices, `(1) (3) (5)` (paper §III-C(a)), so an
index must mean the same tool forever: an existing tool keeps its index, a new one is appended
after the highest index ever used, and a tool whose group disappears is kept as `retired` with
its index reserved (it comes back under the same index if the group returns). A group's
identity is the optional `key:` of its subcategory in the ontology, else "main/sub" in lower
case, so renaming a subcategory without a `key:` makes a new tool.

Stored through `revision.toollist` (the file, with its digest and version, the source of truth)
and mirrored into table `clustering/toollist`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import pyarrow as pa

from revision import toollist
from revision.clustering.ontology import Ontology
from revision.tables import TOOLLIST
from revision.toollist import ToolListDoc, ToolSpec
from revision.warehouse import Warehouse


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


def save_tool_list(warehouse: Warehouse, tools: Sequence[ToolSpec]) -> ToolListDoc:
    """Write the tool list file (`revision.toollist`) and mirror it into `clustering/toollist`."""
    doc = toollist.save(warehouse, tools)
    warehouse.write(
        TOOLLIST,
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
    return doc


def load_tool_list(
    warehouse: Warehouse | None = None, *, missing_ok: bool = False
) -> list[ToolSpec]:
    """The stored tool list (every tool, retired ones included), ordered by index."""
    doc = toollist.load(warehouse if warehouse is not None else Warehouse(), missing_ok=missing_ok)
    return list(doc.tools) if doc else []
