"""The component contract: a tool is a small class with one `run(ctx, **inputs)` method.

A component names itself (`name`, `title`, `description`) and the pipeline stage it plugs into;
its input schema is derived from the signature and docstring of `run`, never written twice
(like simonw/llm's `Tool.function`). `run` edits the request's `SearchContext` in place, but
only the part its stage owns (`ALLOWED_EDITS`): the executor hands each tool a private fork of
the context and commits the fork only when the tool finished in time and stayed in its lane,
so a failing tool leaves the baseline untouched. Slow, candidate-independent work (embedding a
text query) goes in `prefetch`, which the executor starts alongside the main search.
"""

from __future__ import annotations

import inspect
import re
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from revision.errors import InputError
from revision.search._base import Hit, SearchContext

if TYPE_CHECKING:
    from revision.search.engine import SearchEngine
    from revision.search.pipeline import SearchPipeline
    from revision.tools.catalog import CatalogArrays
    from revision.tools.info import Info, QueryInfo


class ToolStage(StrEnum):
    """Where a tool plugs in: the five search stages, then interaction with the user."""

    QUERY = "query"
    RECALL = "recall"
    FILTER = "filter"
    RANK = "rank"
    DISPLAY = "display"
    INTERACTION = "interaction"


STAGE_ORDER = {s: i for i, s in enumerate(ToolStage)}

# Stages whose tools rewrite the candidate list: two of them cannot run on the same list at
# once, so within such a stage tools run one after another, in plan order.
EXCLUSIVE_STAGES = frozenset({ToolStage.RECALL, ToolStage.FILTER, ToolStage.RANK})

# What a tool at each stage may change in the context (see `diff_context`).
ALLOWED_EDITS: dict[ToolStage, frozenset[str]] = {
    ToolStage.QUERY: frozenset({"facts"}),
    ToolStage.RECALL: frozenset({"facts", "candidates"}),
    ToolStage.FILTER: frozenset({"facts", "candidates"}),
    ToolStage.RANK: frozenset({"facts", "candidates"}),
    ToolStage.DISPLAY: frozenset({"facts", "results", "badges", "cues"}),
    ToolStage.INTERACTION: frozenset({"facts", "cues"}),
}


SUBSET_ROWS = 2000  # below this, scoring the rows beats scoring the catalog once


class ToolTimeout(Exception):
    """Raised by `ToolContext.check()` once the tool's deadline has passed."""


@dataclass
class ToolContext:
    """What a component sees while it runs: its fork of the request, the engine, the catalog.

    `search` is a private copy of the request's `SearchContext`; edit it in place.
    """

    search: SearchContext
    engine: SearchEngine
    pipeline: SearchPipeline
    catalog: CatalogArrays
    query_info: QueryInfo
    index: int = 0  # the tool's number in the plan, `(n)`
    prefetched: Any = None  # what the component's `prefetch` returned
    deadline: float | None = None  # time.perf_counter() value after which the tool is dropped
    notes: dict[str, Any] = field(default_factory=dict)  # goes into the trace entry

    @property
    def query_vector(self) -> np.ndarray:
        """The query embedding (waits for the main search to encode the photo if need be)."""
        return self.query_info.vector()

    @property
    def facts(self) -> dict[str, Any]:
        return self.search.query.facts

    @property
    def top_k(self) -> int:
        return self.search.query.top_k

    def hit(self, product_id: str, score: float, source: str) -> Hit:
        """A result this tool places (its `source` and `tool` index say so in the logs)."""
        return self.pipeline.hit(product_id, score, source, tool=self.index)

    def nearest(self, rows: np.ndarray, k: int, exclude=()) -> tuple[np.ndarray, np.ndarray]:
        """The `k` of catalog `rows` most similar to the query: (rows, scores), best first.
        A few rows are scored directly; many use the request's similarity to every product
        (computed once, shared by all tools)."""
        many = len(rows) > SUBSET_ROWS
        scores = self.query_info.similarities() if many else None
        return self.catalog.nearest(self.query_vector, rows, k, exclude, scores=scores)

    def check(self) -> None:
        """Cooperative cancellation: call between steps of long work."""
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise ToolTimeout("deadline passed")


class Component:
    """Base class of every tool. Subclasses set the class attributes and implement `run`.

    `run(self, ctx, **inputs)` must name its inputs as keyword parameters with type hints and
    defaults (no default = required) and describe each under `Args:` in its docstring.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""  # what it does, its inputs and outputs (the planner's view)
    stage: ClassVar[ToolStage] = ToolStage.DISPLAY
    keywords: ClassVar[tuple[str, ...]] = ()  # words of the actions it executes (signals)
    after: ClassVar[tuple[str, ...]] = ()  # components that must run first when both are planned
    extractable: ClassVar[frozenset[str]] = frozenset()  # inputs `from_query` can fill in
    timeout_ms: ClassVar[float | None] = None  # overrides the executor's per-tool default

    def run(self, ctx: ToolContext, **inputs: Any) -> None:
        raise NotImplementedError

    def prefetch(self, ctx: ToolContext, **inputs: Any) -> Any:
        """Candidate-independent work started alongside the main search (default: none).

        Sees the query (vector, facts) but not the candidates; its return value arrives in
        `ctx.prefetched` when `run` is called.
        """
        return None

    def from_info(self, info: Info) -> dict[str, Any]:
        """Inputs read from a signal's Info (default: Info values whose names are inputs)."""
        fields = self.input_model().model_fields
        return {k: v for k, v in info.values().items() if k in fields}

    def from_query(self, ctx: ToolContext, inputs: dict[str, Any]) -> dict[str, Any]:
        """Inputs extracted from the query (photo, attributes, OCR) that `inputs` (what the plan,
        the Info and the tool-list entry gave) leaves open; runs alongside the main search."""
        return {}

    def warm_up(self, catalog: CatalogArrays) -> None:
        """One-time setup outside any request's deadline (build or load an artifact)."""

    @classmethod
    def defaults_for(cls, title: str, keywords: typing.Sequence[str] = ()) -> dict[str, Any]:
        """Inputs implied by a tool-list entry bound to this component (e.g. 'Colour
        refinement' fixes the attribute); default none."""
        return {}

    # -- schema ---------------------------------------------------------------------------------
    @classmethod
    def input_model(cls) -> type[BaseModel]:
        return _input_model(cls)

    @classmethod
    def input_schema(cls) -> dict[str, Any]:
        """JSON schema of the inputs, descriptions from the docstring of `run`."""
        return cls.input_model().model_json_schema()

    @classmethod
    def required_inputs(cls) -> set[str]:
        return {k for k, f in cls.input_model().model_fields.items() if f.is_required()}

    @classmethod
    def validate_inputs(cls, inputs: dict[str, Any], where: str = "") -> dict[str, Any]:
        """Coerce and check inputs against the schema; unknown or ill-typed ones are errors.

        Returns only the inputs that were given (defaults are left to `run`).
        """
        model = cls.input_model()
        unknown = sorted(set(inputs) - set(model.model_fields))
        prefix = f"{where}{cls.name}"
        if unknown:
            raise InputError(
                f"{prefix}: unknown input(s) {', '.join(unknown)}; "
                f"valid: {', '.join(model.model_fields) or '(none)'}"
            )
        try:
            # validate the given keys only: required ones may still come from the query
            fields = {k: (f.annotation, f) for k, f in model.model_fields.items() if k in inputs}
            partial = create_model(f"{model.__name__}Partial", **fields)  # type: ignore[call-overload]
            checked = partial.model_validate(inputs)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise InputError(f"{prefix}: bad input ({problems})") from None
        return {k: getattr(checked, k) for k in inputs}

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "name": cls.name,
            "title": cls.title,
            "description": cls.description,
            "stage": str(cls.stage),
            "inputs": cls.input_schema(),
        }


# -- schema derivation -----------------------------------------------------------------------

_ARG_LINE = re.compile(r"^\s{2,}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(summary, {argument: description}) from a Google-style docstring.

    >>> parse_docstring('''Do it.
    ...
    ...     Args:
    ...         colour: the colour to keep,
    ...             as a catalog name.
    ...     ''')
    ('Do it.', {'colour': 'the colour to keep, as a catalog name.'})
    """
    doc = inspect.cleandoc(doc or "")
    summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    args: dict[str, str] = {}
    section = re.search(r"^Args:\s*\n((?:[ \t]+.*\n?|\s*\n)*)", doc, re.MULTILINE)
    if section:
        current: str | None = None
        arg_indent = 0
        for line in section.group(1).splitlines():
            m = _ARG_LINE.match(line)
            indent = len(line) - len(line.lstrip())
            if m and (current is None or indent <= arg_indent):
                current, arg_indent = m.group(1), indent
                args[current] = m.group(2).strip()
            elif current and line.strip():
                args[current] = f"{args[current]} {line.strip()}".strip()
    return summary, args


@cache
def _input_model(cls: type[Component]) -> type[BaseModel]:
    run = cls.run
    if run is Component.run:
        raise TypeError(f"component {cls.__name__} does not implement run(ctx, **inputs)")
    hints = typing.get_type_hints(run)
    _, docs = parse_docstring(run.__doc__)
    fields: dict[str, Any] = {}
    params = list(inspect.signature(run).parameters.values())[2:]  # skip self, ctx
    for p in params:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            raise TypeError(f"{cls.__name__}.run: inputs must be named (no *args / **kwargs)")
        if p.name not in hints:
            raise TypeError(f"{cls.__name__}.run: input {p.name!r} needs a type hint")
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (hints[p.name], Field(default, description=docs.get(p.name)))
    return create_model(
        f"{_camel(cls.name or cls.__name__)}Inputs",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
        __doc__=parse_docstring(run.__doc__)[0] or None,
        **fields,
    )


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[_\W]+", name) if part)


ComponentFactory = Callable[[], Component]
