"""`POST /v1/events`: clicks, orders, answers to a question, follow-ups."""

from __future__ import annotations

from fastapi import APIRouter, Request

from revision.serve.deps import ApiError, ServiceDep, SettingsDep, limit_user
from revision.serve.schemas import ErrorOut, EventIn, EventOut, SearchOut
from revision.serve.service import Event

router = APIRouter(tags=["events"])
ERRORS = {
    404: {"model": ErrorOut, "description": "no such request (or too old)"},
    422: {"model": ErrorOut, "description": "a field is missing, unknown or does not fit"},
    429: {"model": ErrorOut, "description": "rate limit; see Retry-After"},
}


@router.post("/v1/events", response_model=EventOut, responses=ERRORS)
async def record_event(
    body: EventIn, request: Request, service: ServiceDep, settings: SettingsDep
) -> EventOut:
    """Record what the user did after a response. `question_answer` (value: one of the
    question's options) re-runs the search refined by the answer and returns it."""
    if body.user_id is not None:
        limit_user(service, request.app.state.metrics, body.user_id)
    if body.ts_ms is not None and not settings.trust_client_time:
        raise ApiError(422, "ts_ms: this server keeps its own clock", "ts_ms")
    refined = await service.arecord_event(
        Event(
            request_id=body.request_id,
            kind=body.kind,
            product_id=body.product_id,
            value=body.value,
            user_id=body.user_id,
            dwell_s=body.dwell_s,
            ts_ms=body.ts_ms,
        )
    )
    out = EventOut(request_id=body.request_id, kind=body.kind)
    if refined is not None:
        out.refined = SearchOut.of_response(refined, None)
    return out
