"""`/healthz` (the process answers), `/readyz` (models, index and planner loaded), `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """Liveness: the process is up (it may still be loading)."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 once the index, the encoder and the planner are loaded (with what was
    loaded: planner version, tool list, threshold, budgets), else 503."""
    holder = request.app.state.holder
    if holder.ready:
        service = holder.service
        body = {"status": "ready", **service.describe()}
        if request.app.state.settings.planner != "none" and service.planner_version is None:
            body["status"] = "no planner"
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse(body)
    if holder.error:
        return JSONResponse({"status": "failed", "error": holder.error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)
