"""No-click extraction (paper §IV-A(b)): requests with no click within the window, filtered.

Trade-off: one DuckDB pass over the partitioned Parquet (native reader, both cores) joins every
request to its clicks, the bot filter scores users once and the quality filter measures each
distinct photo once (cached); only the per-user and per-photo verdicts touch Python. The whole
log of the run is processed at once, which keeps a click after midnight with its request and
gives the bot filter every request of a user; a million requests take a few seconds.

Rules (docs/logs.md): a click counts when 0 <= click.ts - request.ts <= window; a click up to
`skew_tolerance` seconds *before* its request counts as at 0 s (clocks of two services
disagree); an earlier one is clock skew, reported and ignored. Duplicate request ids: the
earliest row wins. Drop reasons, in precedence order: bot > unreadable_image > low_quality.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from revision.errors import InputError, MissingArtifactError
from revision.logs.bots import BotFilter, check_bot_filter, load_bot_filter, user_features
from revision.logs.quality_filter import assess_images
from revision.tables import BOT_SCORES, CLICKS, NO_CLICK, REQUESTS
from revision.vision.quality import QualityThresholds
from revision.warehouse import Warehouse

DEFAULT_WINDOW = 30.0
DEFAULT_SKEW_TOLERANCE = 2.0
DROP_REASONS = ("bot", "unreadable_image", "low_quality")  # in precedence order


def scan(warehouse: Warehouse, name: str) -> str:
    """SQL for DuckDB's native Parquet reader over a table; partition values stay strings."""
    files = ", ".join("'" + str(f).replace("'", "''") + "'" for f in warehouse.files(name))
    return (
        f"read_parquet([{files}], hive_partitioning = true, "
        "hive_types_autocast = false, union_by_name = true)"
    )


def open_logs(
    warehouse: Warehouse,
    *,
    window: float = DEFAULT_WINDOW,
    skew_tolerance: float = DEFAULT_SKEW_TOLERANCE,
    threads: int | None = None,
):
    """A DuckDB connection holding `reqc`: one row per distinct request (the earliest row of a
    repeated id) with `u` (a 64-bit hash of user_id), `t` (UTC wall time), `day` (its date),
    `clicked`, `n_clicks`, `late_clicks`, `skewed_clicks`; and a dict of what the rules
    dropped or ignored.
    """
    import duckdb

    if window <= 0:
        raise InputError(f"--window {window:g}: the click window must be positive (seconds)")
    if skew_tolerance < 0:
        raise InputError(f"--skew-tolerance {skew_tolerance:g}: must be 0 or more seconds")
    if not warehouse.exists(REQUESTS):
        raise MissingArtifactError(
            f"no table {REQUESTS} in {warehouse.root}: run `revision simulate` or "
            "`revision logs import PATH` first"
        )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    requests = scan(warehouse, REQUESTS)
    image_hash = (
        "image_hash"
        if "image_hash" in _columns(con, warehouse, REQUESTS)
        else "NULL::VARCHAR AS image_hash"
    )
    valid = "request_id IS NOT NULL AND user_id IS NOT NULL AND ts IS NOT NULL"
    # Distinct 64-bit hashes are cheaper to count than strings; a collision can only send us
    # down the exact path below, never hide a duplicate.
    rows, invalid, distinct = (
        int(x)
        for x in con.sql(f"""
        SELECT count(*), count(*) FILTER (NOT ({valid})),
               count(DISTINCT hash(request_id)) FILTER ({valid})
        FROM {requests}""").fetchall()[0]
    )
    base = (
        f"SELECT request_id, user_id, CAST(ts AS TIMESTAMPTZ) AS ts, image, {image_hash} "
        f"FROM {requests} WHERE {valid}"
    )
    if rows - invalid > distinct:  # duplicate ids: the earliest row wins (a rare, slower path)
        sql = f"SELECT count(DISTINCT request_id) FROM {requests} WHERE {valid}"
        distinct = int(con.sql(sql).fetchall()[0][0])
        base += (
            " QUALIFY row_number() OVER (PARTITION BY request_id "
            "ORDER BY ts, user_id, image NULLS LAST) = 1"
        )
    con.execute(f"CREATE TEMP VIEW rq AS {base}")

    lo_ms, hi_ms = -skew_tolerance * 1000.0, window * 1000.0
    if warehouse.exists(CLICKS):
        # One pass over the clicks: per request, the clicks inside the window, after it and
        # before it (skew); clicks of unknown requests end in groups flagged `orphan`.
        con.execute(f"""
            CREATE TEMP TABLE clk AS
            WITH c AS (
                SELECT c.request_id, r.ts IS NULL AS orphan,
                       epoch_ms(CAST(c.ts AS TIMESTAMPTZ)) - epoch_ms(r.ts) AS d
                FROM {scan(warehouse, CLICKS)} c LEFT JOIN rq r USING (request_id)
            )
            SELECT request_id, bool_or(orphan) AS orphan, count(*) AS n_all,
                   count(*) FILTER (d >= {lo_ms} AND d <= {hi_ms}) AS n_clicks,
                   count(*) FILTER (d > {hi_ms}) AS late_clicks,
                   count(*) FILTER (d < {lo_ms}) AS skewed_clicks
            FROM c GROUP BY request_id
        """)
    else:
        con.execute(
            "CREATE TEMP TABLE clk (request_id VARCHAR, orphan BOOLEAN, n_all BIGINT, "
            "n_clicks BIGINT, late_clicks BIGINT, skewed_clicks BIGINT)"
        )
    con.execute("""
        CREATE TEMP TABLE reqc AS
        SELECT r.*, hash(r.user_id) AS u, make_timestamp(epoch_us(r.ts)) AS t,
               CAST(make_timestamp(epoch_us(r.ts)) AS DATE) AS day,
               coalesce(c.n_clicks, 0) AS n_clicks, coalesce(c.n_clicks, 0) > 0 AS clicked,
               coalesce(c.late_clicks, 0) AS late_clicks,
               coalesce(c.skewed_clicks, 0) AS skewed_clicks
        FROM rq r LEFT JOIN clk c USING (request_id)
    """)
    clicks, orphans, late, skewed = (
        int(x)
        for x in con.sql("""
        SELECT coalesce(sum(n_all), 0), coalesce(sum(n_all) FILTER (orphan), 0),
               coalesce(sum(late_clicks) FILTER (NOT orphan), 0),
               coalesce(sum(skewed_clicks) FILTER (NOT orphan), 0)
        FROM clk""").fetchall()[0]
    )
    con.execute("DROP TABLE clk")
    facts = {
        "request_rows": rows,
        "invalid_request_rows": invalid,
        "requests": distinct,
        "duplicate_request_rows": rows - invalid - distinct,
        "clicks": clicks,
        "orphan_clicks": orphans,
        "late_clicks": late,
        "skewed_clicks": skewed,
        "has_clicks": warehouse.exists(CLICKS),
    }
    return con, facts


def _columns(con, warehouse: Warehouse, name: str) -> list[str]:
    return [r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {scan(warehouse, name)}").fetchall()]


@dataclass
class NoClickReport:
    window_s: float
    requests: int = 0  # distinct request ids
    no_click: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    bot_filter: str = "model"
    bot_users: int = 0
    users: int = 0
    photos: int = 0  # distinct photos of no-click requests
    photos_measured: int = 0  # newly measured (not in the cache)
    photos_unreadable: int = 0
    unreadable_examples: list[str] = field(default_factory=list)
    days: list[str] = field(default_factory=list)
    empty_days: list[str] = field(default_factory=list)  # no request that day (gaps)
    rules: dict = field(default_factory=dict)  # counts of what the bad-input rules handled
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)  # seconds per stage

    @property
    def no_click_ratio(self) -> float | None:
        return self.no_click / self.requests if self.requests else None

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["no_click_ratio"] = self.no_click_ratio
        return out


BAD_INPUT_RULES = (
    "invalid_request_rows",
    "duplicate_request_rows",
    "skewed_clicks",
    "late_clicks",
    "orphan_clicks",
)


def bad_input_counts(facts: dict) -> dict:
    """How often each documented bad-input rule fired (see docs/logs.md)."""
    return {k: facts[k] for k in BAD_INPUT_RULES}


def extract_no_click(
    warehouse: Warehouse,
    *,
    window: float = DEFAULT_WINDOW,
    bot_filter: str | BotFilter = "model",
    skew_tolerance: float = DEFAULT_SKEW_TOLERANCE,
    nsfw: bool = True,
    thresholds: QualityThresholds | None = None,
    images_root: str | os.PathLike | None = None,
    threads: int | None = None,
) -> NoClickReport:
    """Write `logs/no_click` (one row per no-click request, partitioned by dt) and
    `logs/bot_scores`; rerunning replaces both."""
    started = clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 3)
        clock = now

    if not isinstance(bot_filter, BotFilter):
        check_bot_filter(warehouse, bot_filter)
    with ThreadPoolExecutor(1) as pool:
        # Unpickling the model imports scikit-learn (a second or more): done in a thread
        # while DuckDB, which releases the GIL, reads the logs.
        loading = (
            None
            if isinstance(bot_filter, BotFilter)
            else pool.submit(load_bot_filter, warehouse, bot_filter)
        )
        con, facts = open_logs(
            warehouse, window=window, skew_tolerance=skew_tolerance, threads=threads
        )
        lap("read_and_join")
        features = user_features(con)
        lap("bot_features")
        flt = loading.result() if loading else bot_filter
    report = NoClickReport(window_s=window, requests=facts["requests"], bot_filter=flt.name)

    # Bot verdicts, one per user.
    scores = flt.score(features)
    bots = flt.is_bot(scores)
    lap("bot_model")
    report.users, report.bot_users = len(features), int(bots.sum())
    verdicts = pa.table(
        {
            "user_id": pa.array(features["user_id"], pa.string()),
            "n_requests": pa.array(features["n_requests"].astype("int64")),
            "bot_score": pa.array(scores, pa.float64(), from_pandas=True),
            "is_bot": pa.array(bots, pa.bool_()),
            "method": pa.array([flt.name] * len(features), pa.string()),
        },
        schema=BOT_SCORES.schema,
    )
    con.register("bot_verdicts", verdicts)

    # Quality verdicts, one per distinct photo of a no-click request.
    photos = con.sql("""
        SELECT coalesce(image_hash, image, '') AS k, any_value(image) AS image
        FROM reqc WHERE NOT clicked GROUP BY k ORDER BY k
    """).fetchall()
    found, measured = assess_images(
        warehouse,
        {k: image for k, image in photos},
        nsfw=nsfw,
        thresholds=thresholds,
        images_root=images_root,
    )
    report.photos, report.photos_measured = len(photos), measured
    unreadable = [v.error for v in found.values() if v.unreadable]
    report.unreadable_examples = unreadable[:5]
    report.photos_unreadable = len(unreadable)
    if (
        photos
        and len(unreadable) == len(photos)
        and not any(v.startswith("request has no image") for v in unreadable)
    ):
        raise InputError(
            f"none of the {len(photos)} query photos could be read (first: {unreadable[0]}); "
            "pass --images DIR, the folder that relative image paths start from"
        )
    lap("photo_quality")
    keys = list(found)
    con.register(
        "photo_verdicts",
        pa.table(
            {
                "k": pa.array(keys, pa.string()),
                "quality": pa.array([found[k].quality for k in keys], pa.string()),
                "unreadable": pa.array([found[k].unreadable for k in keys], pa.bool_()),
            }
        ),
    )

    out = con.sql("""
        SELECT r.request_id,
               NOT (coalesce(b.is_bot, false) OR coalesce(q.unreadable, false)
                    OR coalesce(q.quality, '') <> '') AS kept,
               CASE WHEN coalesce(b.is_bot, false) THEN 'bot'
                    WHEN coalesce(q.unreadable, false) THEN 'unreadable_image'
                    WHEN coalesce(q.quality, '') <> '' THEN 'low_quality' END AS drop_reason,
               r.user_id, r.ts, r.image, r.image_hash, b.bot_score, q.quality,
               CAST(r.late_clicks AS INTEGER) AS late_clicks, CAST(r.day AS VARCHAR) AS dt
        FROM reqc r
        LEFT JOIN bot_verdicts b USING (user_id)
        LEFT JOIN photo_verdicts q ON q.k = coalesce(r.image_hash, r.image, '')
        WHERE NOT r.clicked
        ORDER BY r.day, r.ts, r.request_id
    """).to_arrow_table()
    days = con.sql("SELECT DISTINCT CAST(day AS VARCHAR) FROM reqc ORDER BY 1").fetchall()
    report.days = [d[0] for d in days]
    # Gaps between the first and last day, and day partitions that hold no request rows.
    partitions = {
        seg[3:] for f in warehouse.files(REQUESTS) for seg in f.parts if seg.startswith("dt=")
    }
    report.empty_days = sorted(set(_gaps(report.days)) | (partitions - set(report.days)))
    con.close()
    lap("select_no_click")

    report.no_click = out.num_rows
    reasons = pc.value_counts(out["drop_reason"]).to_pylist() if out.num_rows else []
    report.dropped = {r["values"]: int(r["counts"]) for r in reasons if r["values"] is not None}
    report.kept = report.no_click - sum(report.dropped.values())
    report.rules = bad_input_counts(facts)
    report.rules["no_clicks_table"] = not facts["has_clicks"]

    _write(warehouse, out, report.days)
    warehouse.write(BOT_SCORES, verdicts)
    lap("write")
    report.timings = timings
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _write(warehouse: Warehouse, out: pa.Table, days: list[str]) -> None:
    """One file per day with requests (possibly empty: every request clicked); stale days of an
    earlier run are removed after the new ones are in place."""
    schema = NO_CLICK.schema
    dts = np.array(out["dt"].to_pylist(), dtype=str)
    body = out.drop_columns(["dt"]).cast(schema)
    # Rows are sorted by dt: slice instead of filtering once per day.
    bounds = np.searchsorted(dts, [*days, "\uffff"]) if len(days) else []
    for i, day in enumerate(days):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        warehouse.write(NO_CLICK, body.slice(lo, hi - lo), {"dt": day})
    folder = warehouse.table_dir(NO_CLICK)
    if folder.exists():
        for part in folder.iterdir():
            if part.is_dir() and part.name.startswith("dt=") and part.name[3:] not in days:
                warehouse.drop(NO_CLICK, {"dt": part.name[3:]})


def _gaps(days: list[str]) -> list[str]:
    """Days between the first and the last day that have no request at all."""
    if len(days) < 2:
        return []
    import datetime as dt

    first, last = dt.date.fromisoformat(days[0]), dt.date.fromisoformat(days[-1])
    have = set(days)
    span = (last - first).days
    return [
        d for d in ((first + dt.timedelta(n)).isoformat() for n in range(span + 1)) if d not in have
    ]
