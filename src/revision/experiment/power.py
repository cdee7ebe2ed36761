"""How many requests an A/B test needs to see a lift of a given size (two proportions)."""

from __future__ import annotations

import math

from scipy.stats import norm


def sample_size(
    p0: float, relative_lift: float, *, alpha: float = 0.05, power: float = 0.8, design: float = 1.0
) -> int:
    """Requests per arm to detect `p0` moving by `relative_lift` (e.g. -0.139 for the paper's
    no-click change) with a two-sided test at `alpha` and `power`; `design` inflates it for
    requests clustered by user (the design effect, >= 1).

    >>> sample_size(0.6, -0.139)
    553
    """
    if not 0 < p0 < 1:
        raise ValueError(f"p0={p0}: a proportion strictly between 0 and 1")
    p1 = p0 * (1 + relative_lift)
    if not 0 < p1 < 1 or p1 == p0:
        raise ValueError(f"the lift moves p0={p0} to {p1}: not a proportion, or no change")
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    n = z**2 * (p0 * (1 - p0) + p1 * (1 - p1)) / (p0 - p1) ** 2
    return math.ceil(n * design)
