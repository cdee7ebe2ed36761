"""Component tools, their registry, plan DAGs and the executor (paper §III-B(c), §III-C).

from revision.tools import PlanExecutor
executor = PlanExecutor(SearchPipeline(SearchEngine.open(warehouse)))
response = executor.search("photo.jpg", "(2) (6)")   # response.applied / cues / trace
"""

from revision.tools._base import (
    ALLOWED_EDITS,
    Component,
    ToolContext,
    ToolStage,
    ToolTimeout,
    parse_docstring,
)
from revision.tools.dag import Plan, PlanError, PlanStep, ToolDag, load_plan, parse_plan_indices
from revision.tools.executor import PlanExecutor, diff_context, fork_context
from revision.tools.info import Info, QueryInfo, parse_info, parse_signal
from revision.tools.registry import (
    DEFAULT_TOOLS,
    ENTRY_POINT_GROUP,
    Registry,
    ToolEntry,
    ToolList,
    UnknownToolError,
    default_tool_list,
    get_component,
    load_tools,
    register,
    registry,
)

__all__ = [
    "ALLOWED_EDITS",
    "DEFAULT_TOOLS",
    "ENTRY_POINT_GROUP",
    "Component",
    "Info",
    "Plan",
    "PlanError",
    "PlanExecutor",
    "PlanStep",
    "QueryInfo",
    "Registry",
    "ToolContext",
    "ToolDag",
    "ToolEntry",
    "ToolList",
    "ToolStage",
    "ToolTimeout",
    "UnknownToolError",
    "default_tool_list",
    "diff_context",
    "fork_context",
    "get_component",
    "load_plan",
    "load_tools",
    "parse_docstring",
    "parse_info",
    "parse_plan_indices",
    "parse_signal",
    "register",
    "registry",
]
