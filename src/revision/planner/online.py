"""The planner as the online service calls it: one request in, a checked plan out, never raising.

`OnlinePlanner.plan(request)` assembles the request's features the way the training data did
(`revision.planner.features`), with the user's history from a `HistoryStore`, and asks a
backend: the embedded model in-process, or a model behind an OpenAI-compatible endpoint
(vLLM or SGLang serving the TRL model; llama.cpp in tests), prompted as the TRL path trains it
and constrained to the plan grammar. Whatever comes back is parsed with the strict grammar; a
malformed, empty-handed or failed answer becomes a `PlanOutcome` with the reason, so the
service falls back to the baseline instead of erring.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from revision.logs.context import HistoryStore
from revision.planner._base import PlannerFeatures
from revision.planner.embedded import EmbeddedPlanner
from revision.planner.features import ProductFeatures, request_features
from revision.tools.grammar import Completion, PlanError, parse_completion
from revision.warehouse import Warehouse


@dataclass
class PlanRequest:
    """What the service knows when it asks for a plan."""

    embedding: np.ndarray  # the query photo's raw encoder embedding
    results: Sequence[tuple[str, float, int]]  # (product_id, score, rank) of the baseline
    user_id: str | None = None
    now_ms: int | None = None
    request_id: str | None = None
    image: Any = None  # the photo (path or bytes), for a remote multimodal planner
    titles: Sequence[str] = ()  # the results' titles (untrusted), for a remote planner
    prices: Sequence[float | None] = ()
    result_images: Sequence[str] = ()  # the results' photos, for a remote multimodal planner


@dataclass
class PlanOutcome:
    completion: Completion | None
    ms: float
    error: str | None = None  # why there is no plan: "timeout", "malformed: …", "failed: …"
    features: PlannerFeatures | None = field(default=None, repr=False)


class OnlinePlanner:
    """A published planner with its product features and the users' histories."""

    def __init__(
        self,
        backend,
        products: ProductFeatures,
        histories: HistoryStore | None = None,
        live: Collection[int] = (),
    ):
        self.backend = backend
        self.products = products
        self.histories = histories
        self.live = set(live)
        self.version = backend.version
        self.toollist_digest = backend.toollist_digest

    @classmethod
    def load(
        cls,
        warehouse: Warehouse,
        checkpoint: str | Path,
        features: str | Path | None = None,
        *,
        live: Collection[int],
        toollist_digest: str | None = None,
        histories: HistoryStore | None = None,
    ) -> OnlinePlanner:
        backend = EmbeddedPlanner.load(checkpoint, expected_toollist_digest=toollist_digest)
        products = ProductFeatures.load(warehouse, folder=features)
        return cls(backend, products, histories, live)

    def features(self, request: PlanRequest) -> PlannerFeatures:
        ctx = None
        if self.histories is not None and request.user_id:
            now = request.now_ms if request.now_ms is not None else int(time.time() * 1000)
            ctx = self.histories.snapshot(request.user_id, now)
        return request_features(self.products, request.embedding, request.results, ctx)

    def plan(self, request: PlanRequest) -> PlanOutcome:
        started = time.perf_counter()
        features = None
        try:
            if hasattr(self.backend, "plan_request"):  # a remote model reads the request
                completion = self.backend.plan_request(request, self.live)
            else:
                features = self.features(request)
                completion = self.backend.plan(features, self.live)
        except PlanError as exc:
            return PlanOutcome(None, _ms(started), f"malformed: {exc}", features)
        except Exception as exc:  # the service must always get an answer
            kind = (
                "timeout"
                if "timed out" in str(exc) or "Timeout" in type(exc).__name__
                else "failed"
            )
            return PlanOutcome(None, _ms(started), f"{kind}: {type(exc).__name__}: {exc}", features)
        try:  # whatever a backend returns is checked against the live tool list
            completion = parse_completion(str(completion), self.live)
        except PlanError as exc:
            return PlanOutcome(None, _ms(started), f"malformed: {exc}", features)
        return PlanOutcome(completion, _ms(started), None, features)


def open_planner(
    warehouse: Warehouse, checkpoint: str | Path | None = None, *, histories: bool = True
) -> OnlinePlanner:
    """The published planner (or `checkpoint`, with the warehouse's product features), for the
    warehouse's current tool list, with the users' histories from its logs."""
    from revision import toollist
    from revision.logs.context import HistoryStore
    from revision.planner.publish import load_publication

    doc = toollist.load(warehouse)
    features = None
    if checkpoint is None:
        publication = load_publication(warehouse)
        checkpoint, features = warehouse.resolve(publication.checkpoint), publication.features
    else:
        from revision.planner.checkpoint import final_checkpoint

        path = Path(checkpoint)
        if (path / "final.json").is_file():
            checkpoint = final_checkpoint(path)
    store = HistoryStore.from_logs(warehouse) if histories else None
    return OnlinePlanner.load(
        warehouse,
        checkpoint,
        features,
        live=doc.live_indices(),
        toollist_digest=doc.digest,
        histories=store,
    )


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
