"""Offline reflective mining (paper §III-B(a)): no-click requests -> thinking + signals.

Stage 1 (the VLM's role) turns a query photo and its results into facts; stage 2 (the LLM's
role) reasons over them with the product metadata top 10 and expert rules into an ordered list
of `Action -> Info` signals. Analysts (`embedded`, `openai`) share one interface; the runner
mines a table in resumable batches into `mining/signals` and `mining/errors`.
"""

from revision.mining._base import (
    CANONICAL_ACTIONS,
    Analysis,
    Analyst,
    MiningInput,
    Product,
    Signal,
    analysts,
    get_analyst,
)
from revision.mining.runner import RunSummary, read_analyses, run_mining

__all__ = [
    "CANONICAL_ACTIONS",
    "Analysis",
    "Analyst",
    "MiningInput",
    "Product",
    "RunSummary",
    "Signal",
    "analysts",
    "get_analyst",
    "read_analyses",
    "run_mining",
]
