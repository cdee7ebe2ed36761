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
    REQUESTS: pa.schema(
        [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("ts", TS, nullable=False),
            pa.field("image", pa.string(), nullable=False),  # path or URI of the query photo
            pa.field("image_hash", pa.string()),  # sha256 of the photo bytes (embedding cache key)
            pa.field("relevance", pa.float64()),  # the engine's relevance score for the request
            pa.field("variant", pa.string()),  # A/B arm or pipeline name ("baseline" by default)
        ]
    ),
    IMPRESSIONS: pa.schema(
        [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("product_id", pa.string(), nullable=False),
            pa.field("rank", pa.int32(), nullable=False),  # 1-based
            pa.field("score", pa.float64()),
        ]
    ),
    CLICKS: pa.schema(
        [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("product_id", pa.string(), nullable=False),
            pa.field("ts", TS, nullable=False),
            pa.field("dwell_s", pa.float64()),
        ]
    ),
    ORDERS: pa.schema(
        [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("product_id", pa.string(), nullable=False),
            pa.field("ts", TS, nullable=False),
            pa.field("price", pa.float64()),
        ]
    ),
    NO_CLICK: pa.schema(
        [
            pa.field("request_id", pa.string(), nullable=False),
            pa.field("kept", pa.bool_(), nullable=False),
            pa.field("drop_reason", pa.string()),  # null when kept: "bot", "low_quality", …
            # Extra columns written by `revision logs no-click` (docs/logs.md):
            pa.field("user_id", pa.string()),
            pa.field("ts", TS),
            pa.field("image", pa.string()),
            pa.field("image_hash", pa.string()),
            pa.field("bot_score", pa.float64()),  # the user's; null with --bot-filter none
            pa.field("quality", pa.string()),  # low-quality reasons joined by ",", "" = passes
            pa.field("late_clicks", pa.int32()),  # clicks after the window (do not count)
        ]
    ),
}

# Tables the logs stage writes besides NO_CLICK (schemas in docs/logs.md).
REJECTS = "logs/rejects"  # rows `revision logs import` skipped or kept with a warning
IMAGE_QUALITY = "logs/image_quality"  # quality figures per distinct query photo (a cache)
BOT_SCORES = "logs/bot_scores"  # per user: bot score and verdict of the last no-click run

SCHEMAS[REJECTS] = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),  # file the row came from
        pa.field("line", pa.int64(), nullable=False),  # 1-based line (JSONL) or row (Parquet)
        pa.field("table", pa.string()),  # target table, e.g. "logs/clicks"
        pa.field("field", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("action", pa.string(), nullable=False),  # "skipped" or "kept"
    ]
)
SCHEMAS[IMAGE_QUALITY] = pa.schema(
    [
        pa.field("image_key", pa.string(), nullable=False),  # image_hash, else the image path
        pa.field("image", pa.string()),
        pa.field("blur", pa.float64()),
        pa.field("brightness", pa.float64()),
        pa.field("dark_fraction", pa.float64()),
        pa.field("bright_fraction", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("nsfw", pa.float64()),  # null when not measured
    ]
)
SCHEMAS[BOT_SCORES] = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("n_requests", pa.int64()),
        pa.field("bot_score", pa.float64()),  # model probability, or 0/1 for rules
        pa.field("is_bot", pa.bool_()),
        pa.field("method", pa.string()),  # "model" or "rules"
    ]
)
