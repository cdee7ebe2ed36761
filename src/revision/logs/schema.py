"""Search-log tables: the contract between a team's logs (or the simulator) and mining.

All live in the warehouse partitioned by UTC day, `logs/<name>/dt=YYYY-MM-DD/part.parquet`;
timestamps are UTC (`timestamp[ms, tz=UTC]`).
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("ms", tz="UTC")

REQUESTS = "logs/requests"
IMPRESSIONS = "logs/impressions"
CLICKS = "logs/clicks"
ORDERS = "logs/orders"
NO_CLICK = "logs/no_click"

SCHEMAS: dict[str, pa.Schema] = {
    REQUESTS: pa.schema([
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("image", pa.string(), nullable=False),  # path or URI of the query photo
        pa.field("image_hash", pa.string()),  # sha256 of the photo bytes (embedding cache key)
        pa.field("relevance", pa.float64()),  # the engine's relevance score for the request
        pa.field("variant", pa.string()),  # A/B arm or pipeline name ("baseline" by default)
    ]),
    IMPRESSIONS: pa.schema([
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),  # 1-based
        pa.field("score", pa.float64()),
    ]),
    CLICKS: pa.schema([
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("dwell_s", pa.float64()),
    ]),
    ORDERS: pa.schema([
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("ts", TS, nullable=False),
        pa.field("price", pa.float64()),
    ]),
    NO_CLICK: pa.schema([
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("kept", pa.bool_(), nullable=False),
        pa.field("drop_reason", pa.string()),  # null when kept: "bot", "low_quality", …
    ]),
}
