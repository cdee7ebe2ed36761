"""`POST /v1/search`: a photo in, the served search out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request

from revision.search._base import SearchRequest
from revision.serve.deps import ApiError, ServiceDep, SettingsDep, limit_user
from revision.serve.schemas import ErrorOut, SearchForm, SearchOut

router = APIRouter(tags=["search"])
ERRORS = {
    status: {"model": ErrorOut, "description": why}
    for status, why in (
        (401, "missing or wrong X-API-Key"),
        (413, "photo too large (bytes or pixels)"),
        (415, "photo is not a JPEG, PNG or WebP image"),
        (422, "a field is missing, unknown or out of its limits; the photo is unreadable"),
        (429, "rate limit (per user or per IP); see Retry-After"),
        (503, "loading, or overloaded; see Retry-After"),
    )
}


@router.post("/v1/search", response_model=SearchOut, responses=ERRORS)
async def search(
    form: Annotated[SearchForm, Form(media_type="multipart/form-data")],
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
) -> SearchOut:
    """Search with a photo. The baseline always comes back; when its relevance is low and the
    user is under the daily cap, the planner's tools run beside it within the latency budget
    (`decision` says what happened, `fallback` why the baseline was served instead)."""
    limit_user(service, request.app.state.metrics, form.user_id)
    if form.ts_ms is not None and not settings.trust_client_time:
        raise ApiError(
            422, "ts_ms: this server keeps its own clock (REVISION_TRUST_CLIENT_TIME)", "ts_ms"
        )
    data = await form.photo.read(settings.max_upload_bytes + 1)
    served = await service.aserve(
        SearchRequest(
            image=data,
            top_k=form.top_k,
            request_id=form.request_id,
            user_id=form.user_id,
            ts_ms=form.ts_ms,
            utc_offset_min=form.utc_offset_min,
        )
    )
    return SearchOut.of(served)
