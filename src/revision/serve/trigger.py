"""The trigger threshold: relevance below it sends a request to the planner.

Paper §IV-A(c): optimised results are shown "only for queries with low relevance scores", and
about 17% of the traffic fell within the triggered subset. Without a threshold from the
settings or the published planner, the service takes it from its own logs by that rule: the
`TRIGGER_SHARE` quantile of the baseline relevance of logged requests, so that about that share
of the traffic is considered (the daily cap then removes some). Relevance is the mean cosine
similarity of the first four results (`revision.search.pipeline.relevance`), which depends on
the encoder and the catalog, so a fixed number would not carry from one warehouse to another;
a quantile does. With too few logged requests the rule has nothing to stand on and the service
uses `DEFAULT_THRESHOLD`, saying so in `/readyz`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow.compute as pc

from revision.tables import REQUESTS
from revision.warehouse import Warehouse

TRIGGER_SHARE = 0.17  # paper §IV-A(c): ~17% of total traffic was in the triggered subset
MIN_REQUESTS = 200  # logged requests below which the quantile is not trusted
# The 17% quantile measured on simulated default-world traffic over the full H&M catalog
# (bench/bench_serve.py prints it); only used before a warehouse has logs of its own.
DEFAULT_THRESHOLD = 0.675

Source = Literal["settings", "publication", "logs", "default"]


@dataclass(frozen=True)
class Threshold:
    value: float
    source: Source
    detail: str = ""

    def as_dict(self) -> dict:
        return {"value": round(self.value, 6), "source": self.source, "detail": self.detail}


def threshold_from_logs(
    warehouse: Warehouse, share: float = TRIGGER_SHARE, *, min_requests: int = MIN_REQUESTS
) -> Threshold | None:
    """The `share` quantile of the logged requests' relevance, or None with too few logs.

    Every logged request counts once, whatever arm served it: the column holds the baseline
    relevance (the service logs the relevance before any tool ran).
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    if not warehouse.exists(REQUESTS):
        return None
    column = warehouse.read(REQUESTS, columns=["relevance"]).column("relevance")
    values = pc.drop_null(column).to_numpy(zero_copy_only=False).astype(np.float64)
    values = values[np.isfinite(values)]
    if len(values) < min_requests:
        return None
    value = float(np.quantile(values, share))
    return Threshold(
        value, "logs", f"{share:.0%} quantile of the relevance of {len(values)} logged requests"
    )


def choose_threshold(
    warehouse: Warehouse, configured: float | None, published: float | None
) -> Threshold:
    """The settings' threshold, else the published planner's, else the logs' rule, else the
    documented default."""
    if configured is not None:
        return Threshold(float(configured), "settings", "REVISION_TRIGGER_THRESHOLD")
    if published is not None and math.isfinite(published):
        return Threshold(float(published), "publication", "the published planner's manifest")
    found = threshold_from_logs(warehouse)
    if found is not None:
        return found
    return Threshold(
        DEFAULT_THRESHOLD,
        "default",
        f"fewer than {MIN_REQUESTS} logged requests; the default-world measurement",
    )
