"""Typed search objects, the hook contract that tools plug into, and the `Searcher` protocol.

A request flows through five named stages, query -> recall -> filter -> rank -> display. Each
stage does its default work and then runs the hooks registered for it, in order; a hook reads
and edits the `SearchContext` (candidates, query facts, cues). That is the whole plug-in surface
for tools: they never reach into the engine's internals.

What a response carries beyond results is typed: cues (labels, metadata, questions, summaries)
and trace entries are pydantic models with a `type` discriminator, serialised the same way by
the CLI, the service and the logs (`as_dict`). Anything that answers a `SearchRequest` with a
`SearchResponse` is a `Searcher`: the plain pipeline, a plan-executing pipeline, the online
service in-process, or a client of the HTTP service; the simulator drives any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Stage(StrEnum):
    QUERY = "query"  # query understanding: encode the photo, read attributes and text
    RECALL = "recall"  # candidate generation from the index
    FILTER = "filter"  # drop candidates
    RANK = "rank"  # order candidates
    DISPLAY = "display"  # cut to top-k, decorate (badges, summaries, questions)


STAGES = tuple(Stage)


VISUAL = "visual"  # the source of a result placed by plain visual matching


@dataclass
class Hit:
    product_id: str
    score: float  # cosine similarity to the query, or a tool's blended score
    rank: int = 0  # 1-based, set at display
    title: str = ""
    price: float | None = None
    source: str = VISUAL  # which stage or tool (component name) put it here
    badges: list[str] = field(default_factory=list)
    tool: int | None = None  # the tool-list index of the tool that placed it

    def as_dict(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "score": round(self.score, 6),
            "rank": self.rank,
            "title": self.title,
            "price": self.price,
            "source": self.source,
            "tool": self.tool,
            "badges": list(self.badges),
        }


# -- cues: what a response shows besides results ---------------------------------------------


class _Typed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelCue(_Typed):
    """A badge on a result card ("same colour", "cheaper")."""

    type: Literal["label"] = "label"
    product_id: str
    badge: str


class MetadataCue(_Typed):
    """Details of a product a photo cannot show (material, care, specifications)."""

    type: Literal["metadata"] = "metadata"
    product_id: str
    fields: dict[str, str]
    care_source: str | None = None  # "description", or "material" when care is inferred


class QuestionCue(_Typed):
    """A preference question whose options re-run the search when answered."""

    type: Literal["question"] = "question"
    attribute: str
    text: str
    options: list[str]
    counts: list[int] = []


class SummaryGroup(_Typed):
    value: str
    count: int
    product_ids: list[str]


class SummaryCue(_Typed):
    """A one-line digest of the results (by the most informative attribute, prices)."""

    type: Literal["summary"] = "summary"
    attribute: str
    groups: list[SummaryGroup]
    price_range: list[float] | None = None
    text: str


Cue = Annotated[LabelCue | MetadataCue | QuestionCue | SummaryCue, Field(discriminator="type")]
CUES = TypeAdapter(list[Cue])


# -- trace entries: what ran, how long, and what went wrong ----------------------------------


class ToolTrace(_Typed):
    type: Literal["tool"] = "tool"
    index: int  # the tool's number in the plan
    name: str  # the component
    stage: str
    status: Literal["ok", "failed", "timeout"]
    ms: float = 0.0
    error: str | None = None
    start_ms: float = 0.0  # since the request started
    inputs: dict[str, Any] | None = None
    notes: dict[str, Any] | None = None


class StepTrace(_Typed):
    """A step of the online service around the tools (trigger, cache, planner)."""

    type: Literal["step"] = "step"
    name: str
    status: Literal["ok", "failed", "timeout", "skipped"]
    ms: float = 0.0
    detail: str | None = None


TraceEntry = Annotated[ToolTrace | StepTrace, Field(discriminator="type")]
TRACE = TypeAdapter(list[TraceEntry])


# -- the online service's decision around a response ------------------------------------------

FALLBACKS = ("timeout", "error", "malformed", "overload", "unavailable")


class Decision(_Typed):
    """What the online service decided for one request, serialised the same way by the CLI,
    the HTTP API and the logs (`log_row` gives the `logs/requests` decision columns).

    `triggered` is the trigger rule's verdict (relevance below `threshold` and the user under
    the daily cap) whether or not the arm acted on it (`act`): the baseline arm computes it by
    the same rule, so the trigger subset is the same set in every arm. `shown` says whether the
    tools' output reached the user; `fallback` why the baseline was served instead.
    """

    arm: str = "revision"
    act: bool = True
    triggered: bool = False
    capped: bool = False  # below the threshold, but the user's daily cap was spent
    threshold: float | None = None
    relevance: float = 0.0
    cache: Literal["hit", "miss"] | None = None  # None: not looked up (not triggered)
    plan: str | None = None  # the planner's completion, "<think>…</think> (2) (6)"
    tools: list[int] = []  # the plan's tool indices
    applied: list[int] = []  # of those, the tools whose output was committed
    shown: bool = False
    fallback: Literal["timeout", "error", "malformed", "overload", "unavailable"] | None = None
    fallback_detail: str | None = None
    planner_version: str | None = None
    toollist_digest: str | None = None
    stages: dict[str, float] = {}  # ms per stage: search, planner, tools, total

    def log_row(self) -> dict[str, Any]:
        """The decision columns of `logs/requests` (see `revision.tables.REQUESTS.optional`)."""
        return {
            "triggered": self.triggered,
            "capped": self.capped,
            "threshold": self.threshold,
            "shown": self.shown,
            "plan": self.plan,
            "applied": list(self.applied),
            "cache": self.cache,
            "fallback": self.fallback,
            "planner_version": self.planner_version,
            "toollist_digest": self.toollist_digest,
            "latency_ms": self.stages.get("total"),
            "search_ms": self.stages.get("search"),
            "planner_ms": self.stages.get("planner"),
            "tools_ms": self.stages.get("tools"),
        }


@dataclass
class Query:
    source: str  # the path or name the caller gave
    vector: np.ndarray | None = None  # raw embedding in; the search-space vector after QUERY
    image: Any = None  # PIL image when the request came with a photo
    top_k: int = 10
    request_id: str | None = None
    user_id: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # filled by query understanding


@dataclass
class SearchContext:
    query: Query
    candidates: list[Hit] = field(default_factory=list)
    results: list[Hit] = field(default_factory=list)
    cues: list[Cue] = field(default_factory=list)  # labels, summaries, questions
    applied: list[int] = field(default_factory=list)  # tool indices that ran
    trace: list[TraceEntry] = field(default_factory=list)


@dataclass
class SearchResponse:
    query: str
    results: list[Hit]
    relevance: float
    latency_ms: float
    cues: list[Cue] = field(default_factory=list)
    applied: list[int] = field(default_factory=list)
    trace: list[TraceEntry] = field(default_factory=list)
    request_id: str | None = None
    decision: Decision | None = None  # set by the online service

    def as_dict(self, extended: bool = False) -> dict[str, Any]:
        """The JSON shape the CLI prints, the service returns and the logs keep."""
        basic = ("product_id", "score", "rank", "title", "price")
        results = [h.as_dict() for h in self.results]
        out: dict[str, Any] = {
            "query": self.query,
            "results": results if extended else [{k: r[k] for k in basic} for r in results],
            "relevance": round(self.relevance, 6),
            "latency_ms": round(self.latency_ms, 3),
        }
        if extended:
            out.update(
                applied=list(self.applied),
                cues=CUES.dump_python(self.cues, mode="json"),
                trace=TRACE.dump_python(self.trace, mode="json"),
            )
            if self.decision is not None:
                out["decision"] = self.decision.model_dump(mode="json")
        return out


@dataclass
class SearchRequest:
    """One visual search request, as any `Searcher` takes it: a photo (path, bytes or PIL
    image) and/or its raw encoder embedding (the simulator's fast path), who asked, how many."""

    image: Any = None
    embedding: np.ndarray | None = None
    top_k: int = 10
    request_id: str | None = None
    user_id: str | None = None
    source: str | None = None  # a name for the photo in logs and errors
    ts_ms: int | None = None  # when it was made (ms since the epoch; None: now): a simulated
    # clock for experiments, which the online service's daily cap and histories follow
    utc_offset_min: int | None = None  # the user's time zone: the daily cap's day boundary


@runtime_checkable
class Searcher(Protocol):
    """Answers search requests. `deterministic` says whether the same photo always gets the
    same response (whoever asks), which lets a caller such as the simulator reuse responses."""

    deterministic: bool

    def respond(self, request: SearchRequest) -> SearchResponse: ...


class Hook(Protocol):
    """A stage plug-in: edits the context in place."""

    def __call__(self, ctx: SearchContext) -> None: ...
