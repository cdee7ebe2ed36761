"""What the routes share: the loaded service, the settings, API keys, rate limits, errors."""

from __future__ import annotations

import gc
import hmac
import logging
import math
import threading
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from revision.errors import RevisionError
from revision.serve.metrics import Metrics
from revision.serve.service import RevisionService
from revision.settings import Settings

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered as `{"error": {"status", "field", "message"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class ServiceHolder:
    """Loads the service off the event loop (so `/healthz` answers and `/readyz` says
    "loading" meanwhile) and closes what it loaded at shutdown."""

    def __init__(self, settings: Settings, metrics: Metrics, service: RevisionService | None):
        self.settings, self.metrics = settings, metrics
        self._service = service
        self._owned = service is None
        self.error: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._service is not None or self._thread is not None:
            return

        def load() -> None:
            try:
                service = RevisionService.open(
                    self.settings.home, self.settings, observer=self.metrics
                )
                # what was just loaded (catalog, index maps, histories) lives as long as the
                # process: keep the collector from walking it on every full collection
                gc.collect()
                gc.freeze()
                self._service = service
            except RevisionError as exc:
                self.error = str(exc)
                log.error("the service could not load: %s", exc)
            except Exception as exc:  # reported by /readyz rather than lost in a thread
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("the service could not load")

        self._thread = threading.Thread(target=load, name="revision-load", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self._service is not None

    @property
    def ready(self) -> bool:
        return self._service is not None

    @property
    def service(self) -> RevisionService:
        if self._service is None:
            if self.error:
                raise ApiError(503, f"the service failed to load: {self.error}")
            raise ApiError(503, "the service is loading models and the index", retry_after=1)
        return self._service

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=120)
        if self._owned and self._service is not None:
            self._service.close()


def get_holder(request: Request) -> ServiceHolder:
    return request.app.state.holder


def get_service(request: Request) -> RevisionService:
    return request.app.state.holder.service


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="when keys are set")


def require_api_key(
    request: Request, key: Annotated[str | None, Depends(_key_header)] = None
) -> None:
    """With `api_keys` set, every `/v1` call needs one of them in `X-API-Key`."""
    keys = request.app.state.settings.api_keys
    if not keys:
        return
    if key is None or not any(hmac.compare_digest(key, k) for k in keys):
        raise ApiError(401, "X-API-Key: missing or not accepted", "X-API-Key")


def limit_user(service: RevisionService, metrics: Metrics, user_id: str) -> None:
    try:
        allowed, retry = service.state.user_limiter.allow(f"user:{user_id}")
    except Exception as exc:  # the limiter's store is down: fail open, loudly
        log.error("per-user rate limit unavailable: %s", exc)
        return
    if not allowed:
        metrics.shed.labels("rate_user").inc()
        raise ApiError(429, f"user_id {user_id!r}: too many requests", "user_id", retry)


ServiceDep = Annotated[RevisionService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
