"""The HTTP API's request and response models: limits on every field, examples for OpenAPI.

Identifiers (users, requests, products) are short tokens of letters, digits and `_.:@-`: they
go into logs, Redis keys and the page, never into a path. Unknown fields are refused (422 naming
the field) rather than ignored, so a client's typo does not pass silently.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field

from revision.search._base import Cue, Decision, Hit, SearchResponse, TraceEntry
from revision.serve.service import EVENTS_ACCEPTED, Served

ID = r"^[A-Za-z0-9_.:@-]{1,64}$"
USER = Field(
    min_length=1,
    max_length=64,
    pattern=ID,
    description="who searches (a stable, pseudonymous id)",
    examples=["u42"],
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchForm(_Strict):
    """`POST /v1/search` (multipart/form-data)."""

    photo: UploadFile = Field(description="the query photo: JPEG, PNG or WebP")
    user_id: str = USER
    top_k: int = Field(10, ge=1, le=50, description="results to return")
    request_id: str | None = Field(
        None, pattern=ID, description="the client's id for the request (default: a new one)"
    )
    utc_offset_min: int = Field(
        0, ge=-840, le=840, description="the user's time zone (the daily cap's day boundary)"
    )
    ts_ms: int | None = Field(
        None,
        ge=0,
        le=10**14,
        description="client clock, ms since the epoch (simulations; only when the server "
        "trusts client time)",
    )


class HitOut(BaseModel):
    product_id: str = Field(examples=["0108775015"])
    score: float
    rank: int
    title: str = Field(examples=["Strap top"])
    price: float | None = None
    source: str = Field("visual", description="'visual' or the tool's component")
    tool: int | None = Field(None, description="the tool-list index of the tool that placed it")
    badges: list[str] = []

    @classmethod
    def of(cls, hit: Hit) -> HitOut:
        return cls(**hit.as_dict())


class SearchOut(BaseModel):
    """A served search: the results the user sees and, when triggered, the plan, the tools
    applied, cues and trace; `baseline` is the plain visual search beside it."""

    request_id: str
    results: list[HitOut]
    relevance: float = Field(description="relevance of the baseline (the trigger's input)")
    latency_ms: float
    triggered: bool = False
    cache: Literal["hit", "miss"] | None = None
    fallback: str | None = Field(None, examples=["timeout"])
    plan: str | None = Field(None, examples=["<think>dark photo; ask</think> (8)"])
    applied: list[int] = []
    cues: list[Cue] = []
    trace: list[TraceEntry] = []
    decision: Decision | None = None
    baseline: list[HitOut] = []
    dag: dict[str, Any] | None = Field(None, description="the plan's DAG: nodes, edges, waves")

    @classmethod
    def of(cls, served: Served) -> SearchOut:
        r, d = served.response, served.decision
        return cls.of_response(r, d, baseline=served.baseline, dag=served.dag)

    @classmethod
    def of_response(
        cls,
        r: SearchResponse,
        d: Decision | None,
        *,
        baseline: SearchResponse | None = None,
        dag: dict | None = None,
    ) -> SearchOut:
        return cls(
            request_id=r.request_id or "",
            results=[HitOut.of(h) for h in r.results],
            relevance=round(d.relevance if d else r.relevance, 6),
            latency_ms=round(r.latency_ms, 3),
            triggered=bool(d and d.triggered),
            cache=d.cache if d else None,
            fallback=d.fallback if d else None,
            plan=d.plan if d else None,
            applied=list(r.applied),
            cues=list(r.cues),
            trace=list(r.trace),
            decision=d,
            baseline=[HitOut.of(h) for h in baseline.results] if baseline else [],
            dag=dag,
        )


class EventIn(_Strict):
    """`POST /v1/events`: what the user did after a response."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"request_id": "r-1", "kind": "click", "product_id": "0108775015"},
                {"request_id": "r-1", "kind": "question_answer", "value": "Black"},
                {"request_id": "r-1", "kind": "sort_price", "value": "asc"},
            ]
        },
    )

    request_id: str = Field(pattern=ID, description="the request the event follows")
    kind: Literal[EVENTS_ACCEPTED] = Field(description="click, order or a follow-up kind")
    product_id: str | None = Field(None, pattern=ID, description="clicks and orders")
    value: str | None = Field(
        None, max_length=200, description="the option chosen, the sort order, the text typed…"
    )
    user_id: str | None = Field(None, min_length=1, max_length=64, pattern=ID)
    dwell_s: float | None = Field(None, ge=0, le=86_400, description="clicks: seconds on the page")
    ts_ms: int | None = Field(None, ge=0, le=10**14, description="client clock (if trusted)")


class EventOut(BaseModel):
    accepted: bool = True
    request_id: str
    kind: str
    refined: SearchOut | None = Field(
        None, description="question_answer: the search re-run refined by the chosen option"
    )


class ErrorBody(BaseModel):
    status: int
    field: str | None = Field(None, examples=["photo"])
    message: str = Field(examples=["photo: not a JPEG, PNG or WebP image (a PDF document)"])


class ErrorOut(BaseModel):
    error: ErrorBody


class Sample(BaseModel):
    id: str
    title: str
