"""`revision serve`: the online service (API, metrics, demo page) under uvicorn."""

from __future__ import annotations

import tempfile
from typing import Annotated

import typer

from revision.cli._common import WarehouseOpt, console


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes. Above 1, set REVISION_REDIS_URL so that daily caps, rate "
            "limits and requests awaiting events are shared.",
            min=1,
            max=64,
        ),
    ] = 1,
    warehouse: WarehouseOpt = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve visual search with the published planner: POST /v1/search, POST /v1/events,
    GET /healthz, /readyz, /metrics, the OpenAPI docs at /docs and a demo page at /.

    Settings come from REVISION_* variables (REVISION_DAILY_CAP, REVISION_TRIGGER_THRESHOLD,
    REVISION_PLANNER_TIMEOUT_MS, REVISION_API_KEYS, …; see revision.settings). /readyz turns
    200 once the index, the encoder and the planner are loaded.

    Example: revision serve --port 8000
             REVISION_REDIS_URL=redis://127.0.0.1:6379/0 revision serve --workers 2
    """
    import uvicorn

    from revision.settings import export_env, get_settings
    from revision.warehouse import Warehouse

    env = {"REVISION_HOME": str(Warehouse(warehouse).root)}
    settings = get_settings()
    if workers > 1:
        if not settings.redis_url:
            console.print(
                "[yellow]warning:[/] several workers without REVISION_REDIS_URL: each keeps its "
                "own daily caps and rate limits, and an event must reach the worker that served "
                "its request"
            )
        if settings.metrics_dir is None:  # prometheus-client's multiprocess mode
            folder = tempfile.mkdtemp(prefix="revision-metrics-")
            env.update(REVISION_METRICS_DIR=folder, PROMETHEUS_MULTIPROC_DIR=folder)
    export_env(**env)
    uvicorn.run(
        "revision.serve.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        timeout_graceful_shutdown=30,
    )
