"""The ground-truth table: each simulated request's hidden intent, and whether it was served.

`sim/truth` is for evaluation only. Mining, clustering, tools and the planner must find intents
from the logs alone; `tests/test_truth_isolation.py` fails if their code names this table or
imports `revision.sim`.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from revision.warehouse import Warehouse

TRUTH = "sim/truth"

TRUTH_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("variant", pa.string()),  # the pipeline that served the request
        pa.field("is_bot", pa.bool_(), nullable=False),
        pa.field("intent", pa.string()),  # null for bots
        pa.field("target_product_id", pa.string()),  # the photographed product
        pa.field(
            "photo_kind", pa.string()
        ),  # mild/medium/hard, dark/blurred/tiny/off_topic, catalog
        pa.field("preferred", pa.string()),  # the hidden value the intent is about, if any
        pa.field("satisfied", pa.bool_()),  # the response served the intent (null for bots)
        pa.field("clicked", pa.bool_(), nullable=False),  # any click, however late
        pa.field("ordered", pa.bool_(), nullable=False),
    ]
)


def read_truth(warehouse: Warehouse, variant: str | None = None) -> pd.DataFrame:
    """The truth rows (all days; one variant when given), `dt` as a string column."""
    frame = warehouse.read_pandas(TRUTH)
    if variant is not None:
        frame = frame[frame["variant"] == variant].reset_index(drop=True)
    return frame
