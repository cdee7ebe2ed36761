"""Reading the ground-truth table: each simulated request's hidden intent, whether it was served.

The table (declared in `revision.tables`) is for evaluation only. Mining, clustering, tools,
the planner and the service must find intents from the logs alone;
`tests/test_truth_isolation.py` fails if their code names it, imports `revision.sim`, or reads
anything under `sim/` while they run.
"""

from __future__ import annotations

import pandas as pd

from revision.tables import TRUTH
from revision.warehouse import Warehouse


def read_truth(warehouse: Warehouse, variant: str | None = None) -> pd.DataFrame:
    """The truth rows (all days; one variant when given), `dt` as a string column."""
    frame = warehouse.read_pandas(TRUTH)
    if variant is not None:
        frame = frame[frame["variant"] == variant].reset_index(drop=True)
    return frame
