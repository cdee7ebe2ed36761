"""Prometheus metrics of the service: traffic, latency per stage, trigger, cache, fallbacks.

Rates are left to PromQL, from counters that add up across workers:

    trigger rate     rate(revision_triggered_total[5m]) / rate(revision_searches_total[5m])
    cache hit rate   rate(revision_cache_lookups_total{result="hit"}[5m])
                     / rate(revision_cache_lookups_total[5m])
    fallback rate    sum by (reason) (rate(revision_fallbacks_total[5m]))

With several worker processes (`revision serve --workers N`) each writes its values under
`metrics_dir` (prometheus-client's multiprocess mode) and `/metrics` merges them.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from revision.search._base import Decision

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1)


class Metrics:
    """Implements the service's `Observer`; `render()` is the `/metrics` body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, multiprocess_dir: Path | None = None):
        self.multiprocess_dir = multiprocess_dir
        # one registry per app (tests build several); in multiprocess mode values live in
        # files and a collector merges them at scrape time
        self.registry = CollectorRegistry()
        reg = None if multiprocess_dir else self.registry
        self.http = Counter(
            "revision_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=reg,
        )
        self.http_seconds = Histogram(
            "revision_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=STAGE_BUCKETS,
            registry=reg,
        )
        self.stage_seconds = Histogram(
            "revision_stage_seconds",
            "search latency per stage (search, planner, tools, total)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=reg,
        )
        self.searches = Counter("revision_searches", "searches served", ["arm"], registry=reg)
        self.triggered = Counter(
            "revision_triggered", "searches the trigger rule selected", ["arm"], registry=reg
        )
        self.capped = Counter(
            "revision_capped", "low-relevance searches over the user's daily cap", registry=reg
        )
        self.shown = Counter("revision_tools_shown", "responses with tools shown", registry=reg)
        self.cache = Counter(
            "revision_cache_lookups", "decision cache lookups", ["result"], registry=reg
        )
        self.fallbacks = Counter(
            "revision_fallbacks", "baseline served instead of tools", ["reason"], registry=reg
        )
        self.shed = Counter(
            "revision_shed", "requests refused: rate limits, overload", ["reason"], registry=reg
        )
        self.events = Counter("revision_events", "events recorded", ["kind"], registry=reg)
        self.in_flight = Gauge(
            "revision_in_flight",
            "requests in progress",
            registry=reg,
            multiprocess_mode="livesum",
        )

    # -- the service's Observer --------------------------------------------------------------------
    def searched(self, d: Decision) -> None:
        self.searches.labels(d.arm).inc()
        if d.triggered:
            self.triggered.labels(d.arm).inc()
        if d.capped:
            self.capped.inc()
        if d.shown:
            self.shown.inc()
        if d.cache:
            self.cache.labels(d.cache).inc()
        if d.fallback:
            self.fallbacks.labels(d.fallback).inc()
        for stage, ms in d.stages.items():
            self.stage_seconds.labels(stage).observe(ms / 1000)

    def event(self, kind: str) -> None:
        self.events.labels(kind).inc()

    # -- exposition --------------------------------------------------------------------------------
    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        return generate_latest(registry)
