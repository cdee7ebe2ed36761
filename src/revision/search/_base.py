"""Typed search objects and the hook contract that tools plug into.

A request flows through five named stages, query -> recall -> filter -> rank -> display. Each
stage does its default work and then runs the hooks registered for it, in order; a hook reads
and edits the `SearchContext` (candidates, query facts, cues). That is the whole plug-in surface
for tools: they never reach into the engine's internals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np


class Stage(StrEnum):
    QUERY = "query"  # query understanding: encode the photo, read attributes and text
    RECALL = "recall"  # candidate generation from the index
    FILTER = "filter"  # drop candidates
    RANK = "rank"  # order candidates
    DISPLAY = "display"  # cut to top-k, decorate (badges, summaries, questions)


STAGES = tuple(Stage)


@dataclass
class Hit:
    product_id: str
    score: float  # cosine similarity to the query, or a tool's blended score
    rank: int = 0  # 1-based, set at display
    title: str = ""
    price: float | None = None
    source: str = "visual"  # which stage or tool put it here
    badges: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Query:
    source: str  # the path or name the caller gave
    vector: np.ndarray | None = None  # raw embedding in; the search-space vector after QUERY
    image: Any = None  # PIL image when the request came with a photo
    top_k: int = 10
    request_id: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # filled by query understanding


@dataclass
class SearchContext:
    query: Query
    candidates: list[Hit] = field(default_factory=list)
    results: list[Hit] = field(default_factory=list)
    cues: list[dict[str, Any]] = field(default_factory=list)  # labels, summaries, questions
    applied: list[int] = field(default_factory=list)  # tool indices that ran
    trace: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SearchResponse:
    query: str
    results: list[Hit]
    relevance: float
    latency_ms: float
    cues: list[dict[str, Any]] = field(default_factory=list)
    applied: list[int] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, extended: bool = False) -> dict[str, Any]:
        out = {
            "query": self.query,
            "results": [
                {
                    "product_id": h.product_id,
                    "score": round(h.score, 6),
                    "rank": h.rank,
                    "title": h.title,
                    "price": h.price,
                }
                for h in self.results
            ],
            "relevance": round(self.relevance, 6),
            "latency_ms": round(self.latency_ms, 3),
        }
        if extended:
            out.update(applied=self.applied, cues=self.cues, trace=self.trace)
        return out


class Hook(Protocol):
    """A stage plug-in: edits the context in place."""

    def __call__(self, ctx: SearchContext) -> None: ...
