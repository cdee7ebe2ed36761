"""Component tools, their registry, plan DAGs and the executor (paper §III-B(c), §III-C).

from revision.tools import PlanExecutor
executor = PlanExecutor(SearchPipeline(SearchEngine.open(warehouse)))
response = executor.search("photo.jpg", "(2) (6)")   # response.applied / cues / trace

Names are loaded lazily, so `import revision.tools.grammar` (the plan grammar the planner and
the service read on every request) never pulls in networkx, the registry or the models.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ALLOWED_EDITS": "_base",
    "Component": "_base",
    "ToolContext": "_base",
    "ToolStage": "_base",
    "ToolTimeout": "_base",
    "parse_docstring": "_base",
    "Plan": "dag",
    "PlanStep": "dag",
    "ToolDag": "dag",
    "load_plan": "dag",
    "load_plan_file": "dag",
    "PlanError": "grammar",
    "parse_indices": "grammar",
    "parse_completion": "grammar",
    "format_completion": "grammar",
    "PlanExecutor": "executor",
    "PlannedPipeline": "executor",
    "diff_context": "executor",
    "fork_context": "executor",
    "Info": "info",
    "parse_info": "info",
    "parse_signal": "info",
    "DEFAULT_TOOLS": "_registry",
    "ENTRY_POINT_GROUP": "_registry",
    "Registry": "_registry",
    "ToolEntry": "_registry",
    "ToolList": "_registry",
    "UnknownToolError": "_registry",
    "default_tool_list": "_registry",
    "get_component": "_registry",
    "load_tools": "_registry",
    "register": "_registry",
    "registry": "_registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'revision.tools' has no attribute {name!r}")
    return getattr(importlib.import_module(f"revision.tools.{_EXPORTS[name]}"), name)
