"""A `Searcher` over HTTP: the simulator and the experiment harness drive a running service.

`ServiceClient(base_url).respond(request)` posts the request's photo (a path, bytes or a PIL
image; an embedding alone cannot travel: the service encodes what users upload) and returns the
`SearchResponse` the service served, with its `decision`; `record_event` posts a click, an order
or a follow-up and returns the refined response of an answer. A 429 or 503 is retried after
its Retry-After (a bounded number of times); any other error is raised as `ServiceError` with
the service's message and the field it names.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

import httpx

from revision.errors import RevisionError
from revision.search._base import (
    CUES,
    TRACE,
    Decision,
    Hit,
    SearchRequest,
    SearchResponse,
)


class ServiceError(RevisionError):
    """The service refused a call: `status`, the `field` at fault, its message."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.field = status, field


class ServiceClient:
    """Implements `revision.search.Searcher` against `revision serve` at `base_url`."""

    deterministic = False

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 3,
        send_time: bool = False,
    ):
        """`send_time` sends the request's `ts_ms` (a simulated clock; the server must be
        started with REVISION_TRUST_CLIENT_TIME=1)."""
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.send_time = send_time
        headers = {"X-API-Key": api_key} if api_key else {}
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, limits=limits
        )

    # -- the Searcher protocol ---------------------------------------------------------------------
    def respond(self, request: SearchRequest) -> SearchResponse:
        data = {"user_id": request.user_id or "anonymous", "top_k": str(request.top_k)}
        if request.request_id:
            data["request_id"] = request.request_id
        if request.utc_offset_min is not None:
            data["utc_offset_min"] = str(request.utc_offset_min)
        if self.send_time and request.ts_ms is not None:
            data["ts_ms"] = str(request.ts_ms)
        files = {"photo": ("photo", _photo_bytes(request), "application/octet-stream")}
        body = self._post("/v1/search", data=data, files=files)
        return response_from_json(body, query=request.source or "<upload>")

    def record_event(
        self,
        request_id: str,
        kind: str,
        *,
        product_id: str | None = None,
        value: str | None = None,
        user_id: str | None = None,
        dwell_s: float | None = None,
        ts_ms: int | None = None,
    ) -> SearchResponse | None:
        """Post an event; for `question_answer`, the refined response."""
        event: dict[str, Any] = {"request_id": request_id, "kind": kind}
        for key, v in (
            ("product_id", product_id),
            ("value", value),
            ("user_id", user_id),
            ("dwell_s", dwell_s),
            ("ts_ms", ts_ms if self.send_time else None),
        ):
            if v is not None:
                event[key] = v
        body = self._post("/v1/events", json=event)
        refined = body.get("refined")
        return response_from_json(refined, query=request_id) if refined else None

    def ready(self) -> dict:
        """`/readyz` (raises `ServiceError` while the service is not ready)."""
        r = self._http.get("/readyz")
        if r.status_code != 200:
            raise ServiceError(r.status_code, r.json().get("status", r.text))
        return r.json()

    def wait_ready(self, timeout_s: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.ready()
            except (ServiceError, httpx.TransportError) as exc:
                if time.monotonic() > deadline:
                    raise ServiceError(503, f"not ready after {timeout_s:g} s: {exc}") from None
                time.sleep(0.2)

    # -- plumbing ----------------------------------------------------------------------------------
    def _post(self, path: str, **kwargs) -> dict:
        for attempt in range(self.retries + 1):
            r = self._http.post(path, **kwargs)
            if r.status_code in (429, 503) and attempt < self.retries:
                time.sleep(float(r.headers.get("Retry-After", "1")))
                continue
            if r.status_code >= 400:
                try:
                    err = r.json()["error"]
                    raise ServiceError(r.status_code, err["message"], err.get("field"))
                except (ValueError, KeyError, TypeError):
                    raise ServiceError(r.status_code, r.text[:500]) from None
            return r.json()
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def _photo_bytes(request: SearchRequest) -> bytes:
    image = request.image
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        with open(image, "rb") as fh:
            return fh.read()
    if image is not None and hasattr(image, "save"):  # a PIL image
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=92)
        return out.getvalue()
    raise ServiceError(
        422, "photo: the HTTP service needs the photo itself, not only its embedding", "photo"
    )


def response_from_json(body: dict, query: str = "") -> SearchResponse:
    """A `SearchOut` JSON body back into a `SearchResponse` (with its `decision`)."""
    hits = [
        Hit(
            product_id=h["product_id"],
            score=float(h["score"]),
            rank=int(h["rank"]),
            title=h.get("title", ""),
            price=h.get("price"),
            source=h.get("source", "visual"),
            badges=list(h.get("badges", [])),
            tool=h.get("tool"),
        )
        for h in body["results"]
    ]
    decision = body.get("decision")
    return SearchResponse(
        query=query,
        results=hits,
        relevance=float(body["relevance"]),
        latency_ms=float(body["latency_ms"]),
        cues=CUES.validate_python(body.get("cues", [])),
        applied=list(body.get("applied", [])),
        trace=TRACE.validate_python(body.get("trace", [])),
        request_id=body.get("request_id"),
        decision=Decision.model_validate(decision) if decision else None,
    )
