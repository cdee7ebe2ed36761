"""The component registry and the tool list that numbers its entries for the planner.

One mechanism for everyone: a package exposes an entry point in the group `revision.tools`
whose object is a callable `register_tools(register)`; it calls `register(ComponentClass)` for
each component it provides. The built-ins are registered by `revision.tools.builtin` through the
very same entry point (declared in this project's pyproject.toml), like simonw/llm's default
plugins. Tests and notebooks call `registry().register(...)` directly, the same callback.

The tool list maps the planner's `(n)` to a component: the clustering stage's list (read
through its declaration, `revision.toollist`) when the warehouse has one, else the eight
built-ins as 1..8. Either way it carries the digest that derived artefacts are checked against.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from revision import toollist
from revision.errors import ConfigError, InputError
from revision.tools._base import Component, ToolStage
from revision.tools.grammar import format_tool_list
from revision.warehouse import Warehouse

ENTRY_POINT_GROUP = "revision.tools"
BUILTIN_ENTRY_POINT = "revision.tools.builtin:register_tools"

# Built-in components in their default tool-list order: (1) .. (8).
DEFAULT_TOOLS = (
    "search_refinement",
    "price_segmentation",
    "variant_expansion",
    "text_search",
    "result_summary",
    "product_labeling",
    "metadata_display",
    "preference_question",
)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class UnknownToolError(InputError):
    """A plan or a lookup names a tool or component that does not exist."""


class Registry:
    """Component classes by name."""

    def __init__(self) -> None:
        self._components: dict[str, type[Component]] = {}
        self._loaded = False
        self._lock = threading.RLock()
        self.plugin_errors: dict[str, str] = {}  # entry point -> why it failed to load

    # -- registration ---------------------------------------------------------------------------
    def register(self, component: type[Component], *, replace: bool = False) -> type[Component]:
        """Add a component class (usable as a decorator). Its schema is derived now, so a
        malformed `run` fails at registration, naming the class."""
        if not (isinstance(component, type) and issubclass(component, Component)):
            raise TypeError(f"{component!r} is not a Component subclass")
        name = component.name
        if not _NAME.match(name or ""):
            raise ValueError(
                f"{component.__name__}.name {name!r}: use lower-case letters, digits and '_'"
            )
        for attr in ("title", "description"):
            if not str(getattr(component, attr, "")).strip():
                raise ValueError(f"component {name!r} needs a non-empty {attr}")
        if not isinstance(component.stage, ToolStage):
            raise ValueError(
                f"component {name!r}: stage {component.stage!r} is not one of "
                f"{', '.join(ToolStage)}"
            )
        component.input_model()  # derive the schema now: errors surface at registration
        with self._lock:
            known = self._components.get(name)
            if known is not None and known is not component and not replace:
                raise ValueError(
                    f"component {name!r} is already registered "
                    f"({known.__module__}); pass replace=True to override"
                )
            self._components[name] = component
        return component

    def unregister(self, name: str) -> None:
        with self._lock:
            self._components.pop(name, None)

    # -- plug-ins -------------------------------------------------------------------------------
    def load_plugins(self) -> None:
        """Call every `revision.tools` entry point once with `self.register`."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            eps = list(entry_points(group=ENTRY_POINT_GROUP))
            if not any(ep.value == BUILTIN_ENTRY_POINT for ep in eps):
                # an install made before the entry point was declared: same path, same callable
                eps.insert(0, EntryPoint("builtin", BUILTIN_ENTRY_POINT, ENTRY_POINT_GROUP))
            for ep in eps:
                try:
                    hook = ep.load()
                    hook(self.register)
                except Exception as exc:  # a broken plug-in must not take search down
                    if ep.value == BUILTIN_ENTRY_POINT:
                        raise
                    self.plugin_errors[ep.value] = f"{type(exc).__name__}: {exc}"
                    warnings.warn(
                        f"tool plug-in {ep.name} ({ep.value}) failed to load: {exc}",
                        stacklevel=2,
                    )

    # -- lookup ---------------------------------------------------------------------------------
    def get(self, name: str) -> type[Component]:
        self.load_plugins()
        try:
            return self._components[name]
        except KeyError:
            raise UnknownToolError(
                f"unknown tool component {name!r}; registered: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        self.load_plugins()
        return list(self._components)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._components

    def __iter__(self) -> Iterator[type[Component]]:
        self.load_plugins()
        return iter(list(self._components.values()))


_REGISTRY = Registry()


def registry() -> Registry:
    """The process-wide registry, with every installed plug-in loaded."""
    _REGISTRY.load_plugins()
    return _REGISTRY


def register(component: type[Component], *, replace: bool = False) -> type[Component]:
    """Register a component class in the process-wide registry (also a decorator)."""
    return _REGISTRY.register(component, replace=replace)


def get_component(name: str) -> type[Component]:
    return registry().get(name)


RegisterFn = Callable[[type[Component]], type[Component]]


# -- the tool list ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolEntry:
    """One numbered tool as the planner sees it, bound to a component (or not)."""

    index: int
    title: str
    description: str
    component: str | None
    retired: bool = False
    keywords: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)  # inputs implied by the entry

    def component_class(self, reg: Registry | None = None) -> type[Component]:
        """The bound component class; a clear error for retired or unbound entries."""
        label = f"tool ({self.index}) {self.title!r}"
        if self.retired:
            raise UnknownToolError(f"{label} is retired: its group no longer appears in the logs")
        if not self.component:
            raise UnknownToolError(
                f"{label} has no component bound to it (set `tool:` for its subcategory in the "
                "ontology and rebuild the tool list)"
            )
        reg = reg or registry()
        if self.component not in reg:
            raise UnknownToolError(
                f"{label} is bound to component {self.component!r}, which is not registered; "
                f"registered: {', '.join(reg.names())}"
            )
        return reg.get(self.component)

    def as_dict(self, reg: Registry | None = None) -> dict[str, Any]:
        stage = None
        if self.component and not self.retired and self.component in (reg or registry()):
            stage = str((reg or registry()).get(self.component).stage)
        return {
            "index": self.index,
            "title": self.title,
            "description": self.description,
            "stage": stage,
            "component": self.component,
        }


class ToolList:
    """The numbered tools a plan's `(n)` refers to, with the digest and version of the list."""

    def __init__(self, entries: list[ToolEntry], source: str, version: int = 1):
        self.entries = sorted(entries, key=lambda e: e.index)
        self.source = source  # "default" or the tool-list file
        self.version = version
        self._by_index = {e.index: e for e in self.entries}
        self.digest = toollist.digest(
            [
                toollist.ToolSpec(e.index, e.title, e.description, e.component, e.retired)
                for e in self.entries
            ]
        )

    def __iter__(self) -> Iterator[ToolEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def active(self) -> list[ToolEntry]:
        return [e for e in self.entries if not e.retired and e.component]

    def live_indices(self) -> list[int]:
        """Indices a plan may use now (active and bound to a component)."""
        return [e.index for e in self.active()]

    def get(self, index: int) -> ToolEntry:
        if index not in self._by_index:
            valid = ", ".join(f"({e.index}) {e.title}" for e in self.active())
            raise UnknownToolError(f"unknown tool index ({index}); valid: {valid}")
        return self._by_index[index]

    def index_of(self, component: str) -> int:
        """The first active entry bound to `component`."""
        for e in self.active():
            if e.component == component:
                return e.index
        raise UnknownToolError(
            f"no tool in the {self.source} tool list is bound to component {component!r}; "
            f"bound: {', '.join(sorted({e.component for e in self.active() if e.component}))}"
        )

    def format(self) -> str:
        """The planner's view: `(index) title: description`, one active tool a line."""
        return format_tool_list((e.index, e.title, e.description) for e in self.active())


def default_tool_list(reg: Registry | None = None) -> ToolList:
    reg = reg or registry()
    entries = []
    for i, name in enumerate(DEFAULT_TOOLS, start=1):
        cls = reg.get(name)
        entries.append(ToolEntry(i, cls.title, cls.description, name))
    return ToolList(entries, "default")


def load_tools(warehouse: Warehouse | None = None, reg: Registry | None = None) -> ToolList:
    """The clustering stage's tool list when the warehouse has one, else the default 1..8."""
    reg = reg or registry()
    if warehouse is None:
        return default_tool_list(reg)
    doc = toollist.load(warehouse, missing_ok=True)
    if doc is None or not doc.tools:
        return default_tool_list(reg)
    entries = []
    for s in doc.tools:
        defaults: dict[str, Any] = {}
        if s.component and not s.retired and s.component in reg:
            defaults = reg.get(s.component).defaults_for(s.title, tuple(s.keywords))
        entries.append(
            ToolEntry(
                s.index,
                s.title,
                s.description,
                s.component,
                s.retired,
                tuple(s.keywords),
                defaults,
            )
        )
    return ToolList(entries, str(toollist.path(warehouse)), doc.version)


def check_entries(tools: ToolList) -> None:
    """Raise if an active entry is bound to a component that is not registered."""
    for e in tools.active():
        if e.component not in registry():
            raise ConfigError(
                f"{tools.source}: tool ({e.index}) {e.title!r} is bound to unknown component "
                f"{e.component!r}; registered: {', '.join(registry().names())}"
            )
