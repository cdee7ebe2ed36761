"""The HTTP app: FastAPI over `RevisionService`, one route module per resource.

`create_app()` is the factory `revision serve` runs under uvicorn (`--workers N` starts N
processes, each with its own app; caps and rate limits are shared through Redis when
`redis_url` is set). The service loads in a background thread, so `/healthz` answers at once
and `/readyz` turns 200 when the index, the encoder and the planner are in.

Around every `/v1` call, before the body is read: load shedding (503 with Retry-After beyond
`max_in_flight` requests in progress), the per-IP rate limit (429 with Retry-After) and the
upload size limit (413, from Content-Length or while the body streams). Every error is JSON,
`{"error": {"status", "field", "message"}}`, naming the field at fault; nothing a client sends
reaches a file path; CORS is off unless `cors_origins` is set; the page is served with a
content security policy that allows no inline script.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from revision.errors import InputError
from revision.serve.deps import ApiError, ServiceHolder, require_api_key
from revision.serve.metrics import Metrics
from revision.serve.routes import events, health, page, search
from revision.serve.service import EventError, RevisionService, UnknownRequestError
from revision.serve.uploads import UploadError
from revision.settings import Settings, get_settings

log = logging.getLogger(__name__)
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the small fields beside the photo
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
CSP = (
    b"content-security-policy",
    b"default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
    b"style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
)
DOCS = ("/docs", "/redoc", "/docs/oauth2-redirect")  # FastAPI's docs load their assets from a CDN
_WORKER = str(os.getpid()).encode()


def create_app(settings: Settings | None = None, service: RevisionService | None = None) -> FastAPI:
    """The app over `service` (tests pass one), else over the service `settings` describe,
    loaded in the background at start-up."""
    s = settings or get_settings()
    metrics = Metrics(s.metrics_dir)
    holder = ServiceHolder(s, metrics, service)
    if service is not None:
        service.observer = metrics

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        holder.start()
        yield
        holder.close()  # flushes the logs

    app = FastAPI(
        title="REVISION visual search",
        version="1",
        description=(
            "Visual search with reflective tool planning (REVISION): the baseline search, "
            "and for low-relevance queries the planner's tools within a latency budget."
        ),
        lifespan=lifespan,
    )
    app.state.settings, app.state.metrics, app.state.holder = s, metrics, holder
    keyed = [Depends(require_api_key)]  # a no-op unless api_keys are set
    app.include_router(search.router, dependencies=keyed)
    app.include_router(events.router, dependencies=keyed)
    app.include_router(health.router)
    app.include_router(page.router)
    _errors(app)
    app.add_middleware(Guard, settings=s, metrics=metrics, holder=holder)
    if s.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=s.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Content-Type"],
        )
    return app


# -- errors ----------------------------------------------------------------------------------------


def error_response(
    status: int, message: str, field: str | None = None, headers: dict | None = None, **extra
) -> JSONResponse:
    body = {"error": {"status": status, "field": field, "message": message}, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or None


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # the offending input is not echoed back: it may be 10 kB, or markup
        problems = [{"field": _field(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        first = problems[0] if problems else {"field": None, "message": "invalid request"}
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        return error_response(422, message, first["field"], errors=problems)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.field, exc.headers())

    @app.exception_handler(UploadError)
    async def upload_error(_request: Request, exc: UploadError) -> JSONResponse:
        return error_response(exc.status, str(exc), exc.field)

    @app.exception_handler(UnknownRequestError)
    async def unknown_request(_request: Request, exc: UnknownRequestError) -> JSONResponse:
        return error_response(404, str(exc), "request_id")

    @app.exception_handler(EventError)
    async def event_error(_request: Request, exc: EventError) -> JSONResponse:
        return error_response(422, str(exc), exc.field)

    @app.exception_handler(InputError)
    async def input_error(_request: Request, exc: InputError) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, "internal error (logged on the server)")


# -- the guard: shedding, per-IP rate limit, upload size, headers, HTTP metrics -----------------


class _TooLarge(Exception):
    pass


class Guard:
    """Pure ASGI middleware (no per-request task or body copy)."""

    def __init__(self, app, *, settings: Settings, metrics: Metrics, holder: ServiceHolder):
        self.app, self.settings, self.metrics, self.holder = app, settings, metrics, holder
        self.in_flight = 0
        self.max_body = settings.max_upload_bytes + FORM_OVERHEAD

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path: str = scope["path"]
        route = _route(path)
        started = time.perf_counter()
        status = [500]
        started_response = [False]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started_response[0] = True
                headers = list(message.get("headers", []))
                headers += [*SECURITY_HEADERS, (b"x-revision-worker", _WORKER)]
                if path not in DOCS:
                    headers.append(CSP)
                message = {**message, "headers": headers}
            await send(message)

        try:
            if not path.startswith("/v1/"):
                return await self.app(scope, receive, send_with_headers)
            refused = self._refuse(scope)
            if refused is not None:
                return await refused(scope, receive, send_with_headers)
            self.in_flight += 1
            self.metrics.in_flight.inc()
            try:
                await self.app(scope, self._limited(receive), send_with_headers)
            except _TooLarge:
                if not started_response[0]:
                    await _too_large(self.settings)(scope, receive, send_with_headers)
            finally:
                self.in_flight -= 1
                self.metrics.in_flight.dec()
        finally:
            self.metrics.http.labels(route, str(status[0])).inc()
            self.metrics.http_seconds.labels(route).observe(time.perf_counter() - started)

    def _refuse(self, scope) -> JSONResponse | None:
        s = self.settings
        if self.in_flight >= s.max_in_flight:
            self.metrics.shed.labels("overload").inc()
            return error_response(
                503,
                f"overloaded: {self.in_flight} requests in progress; retry shortly",
                headers={"Retry-After": "1"},
            )
        length = _content_length(scope)
        if length is not None and length > self.max_body:
            return _too_large(s)
        if self.holder.ready:
            client = scope.get("client") or ("unknown", 0)
            try:
                allowed, retry = self.holder.service.state.ip_limiter.allow(f"ip:{client[0]}")
            except Exception as exc:  # the limiter's store is down: fail open, loudly
                log.error("per-IP rate limit unavailable: %s", exc)
                allowed, retry = True, 0.0
            if not allowed:
                self.metrics.shed.labels("rate_ip").inc()
                err = ApiError(429, "too many requests from this address", None, retry)
                return error_response(429, err.message, headers=err.headers())
        return None

    def _limited(self, receive):
        seen = [0]

        async def wrapped():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_body:
                    raise _TooLarge()
            return message

        return wrapped


def _too_large(s: Settings) -> JSONResponse:
    return error_response(
        413, f"photo: upload above the {s.max_upload_bytes:,}-byte limit", "photo"
    )


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _route(path: str) -> str:
    """A bounded label for metrics (ids in paths are not labels)."""
    for prefix in ("/v1/search", "/v1/events", "/v1/samples", "/v1/products"):
        if path.startswith(prefix):
            return prefix
    return path if path in ("/", "/healthz", "/readyz", "/metrics") else "other"
