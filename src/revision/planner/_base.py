"""What a planner reads and writes, and the interface every planner backend implements.

A planner reads one request as the service sees it *before* anything is shown (the query
photo's embedding, the top-K results, the user's context) and writes a `Completion`:
`<think>…</think> (i) (j)`. The features are plain numpy arrays so that the embedded model,
the data builder and the service share one layout; the TRL path renders the same request as
images and text instead.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from revision.tools.grammar import Completion

K = 12  # results per request the planner reads (paper §III-C(b): up to 12 product images)
# Per-result scalar features, in this order (see `revision.planner.data`):
RESULT_SCALARS = ("score", "rank", "log_price_ratio", "price_known")


@dataclass
class PlannerFeatures:
    """One request as numbers. Shapes: query (D,), result_images (K, D), result_titles (K, T),
    result_scalars (K, len(RESULT_SCALARS)), result_mask (K,) True where a result exists,
    context (C,) user/session features (zeros when unknown)."""

    query: np.ndarray
    result_images: np.ndarray
    result_titles: np.ndarray
    result_scalars: np.ndarray
    result_mask: np.ndarray
    context: np.ndarray

    def __post_init__(self) -> None:
        k = len(self.result_mask)
        for name in ("result_images", "result_titles", "result_scalars"):
            if len(getattr(self, name)) != k:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, result_mask {k}")


@dataclass
class PlannerSample:
    """A training or evaluation example: features, the reference thinking and answer."""

    request_id: str
    features: PlannerFeatures
    thinking: str
    answer: list[int]
    live: list[int]  # the live tool indices when the sample was built
    category: str = ""  # the query's main category, for balancing and per-category metrics
    meta: dict = field(default_factory=dict)


@runtime_checkable
class Planner(Protocol):
    """Anything that turns a request's features into a plan (in-process or remote)."""

    version: str  # content hash of the checkpoint (or the remote model's name)
    toollist_digest: str  # the tool list it was trained for

    def plan(self, features: PlannerFeatures, live: Collection[int]) -> Completion: ...
