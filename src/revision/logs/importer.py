"""`revision logs import`: a team's own search logs (JSONL or Parquet) into the warehouse.

Every row is validated on its own and a bad one is skipped and reported as `FILE:LINE: field X:
reason` (also kept in `logs/rejects`), never repaired: a naive timestamp is rejected unless the
user says `--assume-utc`, a negative price or a rank below 1 is rejected. Trade-off: validation
runs row by row in Python (about a second per 100k rows) instead of vectorised, so that each
message can name its line and field. Imports are idempotent: rows are deduplicated on each
table's key against the warehouse, and the first import of a key wins (docs/logs.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from revision.errors import InputError
from revision.tables import (
    CLICKS,
    EVENT_KINDS,
    EVENTS,
    IMPRESSIONS,
    LOG_REJECTS,
    ORDERS,
    PRODUCTS,
    REQUESTS,
    Table,
)
from revision.warehouse import Warehouse

TABLES = {
    "requests": REQUESTS,
    "impressions": IMPRESSIONS,
    "clicks": CLICKS,
    "orders": ORDERS,
    "events": EVENTS,
}
# requests first: impressions look up their day, events their request's time
ORDER = (REQUESTS, IMPRESSIONS, CLICKS, ORDERS, EVENTS)
KEYS: dict[str, tuple[str, ...]] = {
    REQUESTS: ("request_id",),
    IMPRESSIONS: ("request_id", "rank"),
    CLICKS: ("request_id", "product_id", "ts"),
    ORDERS: ("request_id", "product_id", "ts"),
    EVENTS: ("request_id", "ts", "kind", "value"),
}
MAX_EVENT_VALUE = 500  # characters: a text query longer than this is not a query
PRODUCT_TABLES = (IMPRESSIONS, CLICKS, ORDERS)
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
EPOCH_MS_ABOVE = 1e11  # an epoch number at or above this is milliseconds, below it seconds
TS_MIN = datetime(1990, 1, 1, tzinfo=UTC)  # outside [1990, 2100) a timestamp is a unit mistake
TS_MAX = datetime(2100, 1, 1, tzinfo=UTC)
IMPORT_FILE = "part-import.parquet"  # the file of each partition that imports write


class _Bad(Exception):
    """One field of one row is unusable; the message is the reason."""


@dataclass
class ImportReport:
    files: list[str] = field(default_factory=list)
    imported: dict[str, int] = field(default_factory=dict)  # new rows written per table
    already_present: dict[str, int] = field(default_factory=dict)  # identical rows skipped
    rejects: list[dict] = field(default_factory=list)  # skipped rows and kept-with-warning rows
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    days: list[str] = field(default_factory=list)  # partitions written

    @property
    def rejected(self) -> int:
        return sum(r["action"] == "skipped" for r in self.rejects)

    @property
    def warnings(self) -> int:
        return sum(r["action"] == "kept" for r in self.rejects)

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "imported": self.imported,
            "already_present": self.already_present,
            "rejected": self.rejected,
            "warnings": self.warnings,
            "rejects": [dict(r, message=message(r)) for r in self.rejects[:50]],
            "ignored_columns": self.ignored_columns,
            "days": self.days,
        }


def message(reject: dict) -> str:
    """`FILE:LINE: field X: reason` (the field part is left out when the whole row is bad)."""
    where = f"{reject['source']}:{reject['line']}"
    fld = f" field {reject['field']}:" if reject.get("field") else ""
    return f"{where}:{fld} {reject['reason']}"


# -- field validators: value -> stored value, or raise _Bad ---------------------------------
def _string(value: Any) -> str:
    if isinstance(value, bool):
        raise _Bad(f"expected a string, got {value!r}")
    if isinstance(value, int):  # numeric ids are common and convert losslessly
        return str(value)
    if not isinstance(value, str):
        raise _Bad(f"expected a string, got {type(value).__name__} {value!r}"[:120])
    value = value.strip()
    if not value:
        raise _Bad("empty string")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"expected a number, got {type(value).__name__} {value!r}"[:120])
    value = float(value)
    if not math.isfinite(value):
        raise _Bad(f"not a finite number: {value!r}")
    return value


def _non_negative(value: Any) -> float:
    value = _number(value)
    if value < 0:
        raise _Bad(f"negative value {value:g}")
    return value


def _kind(value: Any) -> str:
    kind = _string(value)
    if kind not in EVENT_KINDS:
        raise _Bad(f"unknown event kind {kind!r}; valid: {', '.join(EVENT_KINDS)}"[:200])
    return kind


def _event_value(value: Any) -> str:
    """Free text from users: bounded, printable (no control characters)."""
    text = _string(value)
    if len(text) > MAX_EVENT_VALUE:
        raise _Bad(f"value of {len(text)} characters (at most {MAX_EVENT_VALUE})")
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co")), None)
    if bad is not None:
        raise _Bad(f"value holds the control character U+{ord(bad):04X}")
    return text


def _rank(value: Any) -> int:
    number = _number(value)
    if not number.is_integer():
        raise _Bad(f"expected an integer, got {value!r}")
    if number < 1:
        raise _Bad(f"rank {int(number)} is below 1 (ranks are 1-based)")
    if number >= 2**31:
        raise _Bad(f"rank {int(number)} is too large")
    return int(number)


def _timestamp(assume_utc: bool) -> Callable[[Any], int]:
    """ISO-8601 text with a zone, epoch seconds or milliseconds, or a datetime -> UTC epoch ms."""

    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise _Bad(f"expected a timestamp, got {value!r}")
        if isinstance(value, int | float):
            if not math.isfinite(value):
                raise _Bad(f"not a finite number: {value!r}")
            seconds = value / 1000 if abs(value) >= EPOCH_MS_ABOVE else value
            try:
                moment = datetime.fromtimestamp(seconds, tz=UTC)
            except (OverflowError, OSError, ValueError):
                raise _Bad(
                    f"epoch value {value!r} is out of range (wrong unit? use seconds "
                    "or milliseconds)"
                ) from None
        elif isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.strip())
            except ValueError:
                raise _Bad(f"not an ISO-8601 timestamp: {value!r}"[:120]) from None
        elif isinstance(value, datetime):
            moment = value
        else:
            raise _Bad(f"expected a timestamp, got {type(value).__name__}")
        if moment.tzinfo is None or moment.utcoffset() is None:
            if not assume_utc:
                raise _Bad(
                    f"timestamp {str(value)!r} has no time zone (add 'Z' or '+HH:MM', "
                    "or pass --assume-utc if the file is in UTC)"
                )
            moment = moment.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC)
        if not TS_MIN <= moment < TS_MAX:
            raise _Bad(f"timestamp {moment.isoformat()} is outside 1990-2100 (wrong unit?)")
        return round(moment.timestamp() * 1000)

    return parse


def _day(value: Any) -> str:
    text = _string(value)
    try:
        return datetime.strptime(text, "%Y-%m-%d").strftime("%Y-%m-%d")
    except ValueError:
        raise _Bad(f"expected YYYY-MM-DD, got {text!r}") from None


def _fields(table: Table, assume_utc: bool) -> dict[str, tuple[bool, Callable]]:
    """field -> (required, validator) for one table."""
    ts = _timestamp(assume_utc)
    out: dict[str, tuple[bool, Callable]] = {}
    for f in table.schema:
        if f.name == "ts":
            check = ts
        elif f.name == "rank":
            check = _rank
        elif f.name in ("price", "dwell_s"):
            check = _non_negative
        elif table == EVENTS and f.name in ("kind", "value"):
            check = _kind if f.name == "kind" else _event_value
        elif pa.types.is_floating(f.type):
            check = _number
        else:
            check = _string
        out[f.name] = (not f.nullable, check)
    if table == IMPRESSIONS:  # optional: which day the impression belongs to
        out["dt"] = (False, _day)
    return out


# -- reading -----------------------------------------------------------------------------------
def list_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise InputError(f"{path}: no .jsonl or .parquet files in this folder")
        return files
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"{path}: unknown file type; use .jsonl (JSON lines) or .parquet")
    return [path]


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, record) pairs; a record that is not a JSON object is yielded as an _Bad."""
    if SUFFIXES[path.suffix.lower()] == "parquet":
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: cannot read Parquet file: {exc}") from None
        # A timestamp column without a zone comes back as naive datetimes: rejected per row
        # below, like a naive ISO string, unless --assume-utc.
        for line, record in enumerate(table.to_pylist(), start=1):
            yield line, record
        return
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    with handle:
        try:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue  # blank lines (a trailing newline) are not rows
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield line, _Bad(f"not valid JSON ({exc.msg} at column {exc.colno})")
                    continue
                if not isinstance(record, dict):
                    yield line, _Bad(f"expected a JSON object, got {type(record).__name__}")
                    continue
                yield line, record
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text ({exc})") from None


def _first_columns(path: Path) -> set[str]:
    if SUFFIXES[path.suffix.lower()] == "parquet":
        try:
            return set(pq.read_schema(path).names)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: cannot read Parquet file: {exc}") from None
    for _, record in _records(path):
        if isinstance(record, dict):
            return set(record)
    return set()


def detect_table(path: Path) -> Table:
    """The table a file holds: a table name in its file or folder names, else its columns."""
    words = [path.stem.lower(), *(p.lower() for p in path.parent.parts[-3:])]
    for word in words:
        hits = [t for name, t in TABLES.items() if name in word]
        if len(hits) == 1:
            return hits[0]
    cols = _first_columns(path)
    if "kind" in cols:
        return EVENTS
    if "image" in cols or "user_id" in cols:
        return REQUESTS
    if "rank" in cols:
        return IMPRESSIONS
    if "price" in cols:
        return ORDERS
    if "dwell_s" in cols:
        return CLICKS
    raise InputError(
        f"{path}: cannot tell which table this file holds (columns: {', '.join(sorted(cols))}); "
        "name it after the table (requests, impressions, clicks, orders, events) or pass --table"
    )


# -- the import --------------------------------------------------------------------------------
@dataclass
class _Rows:
    """Validated rows of one table, column-wise, with where each came from."""

    columns: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    source: list[str] = field(default_factory=list)
    line: list[int] = field(default_factory=list)


def import_logs(
    path: str | Path,
    warehouse: Warehouse,
    table: str = "auto",
    *,
    assume_utc: bool = False,
    unknown_products: str = "keep",
) -> ImportReport:
    """Validate and import one file or a folder of files into the `logs/*` tables.

    `table`: requests, impressions, clicks, orders, or auto (from the file name, else from its
    columns). `unknown_products`: what to do with a product id that is not in
    `catalog/products` (when a catalog exists): "keep" the row with a warning, or "drop" it.
    """
    if table != "auto" and table not in TABLES:
        raise InputError(f"--table {table!r}: valid tables are auto, {', '.join(TABLES)}")
    if unknown_products not in ("keep", "drop"):
        raise InputError(f"--unknown-products {unknown_products!r}: valid values are keep, drop")
    files = list_files(path)
    targets = {f: TABLES[table] if table != "auto" else detect_table(f) for f in files}
    files.sort(key=lambda f: ORDER.index(targets[f]))
    report = ImportReport(files=[str(f) for f in files])
    rejects_by_file: dict[str, list[dict]] = defaultdict(list)

    def reject(
        source: str, line: int, tbl: str, fld: str | None, reason: str, action: str = "skipped"
    ) -> None:
        rejects_by_file[source].append(
            {
                "source": source,
                "line": line,
                "table": tbl,
                "field": fld,
                "reason": reason,
                "action": action,
            }
        )

    rows: dict[str, _Rows] = {t: _Rows() for t in ORDER}
    for f in files:
        tbl = targets[f]
        spec = _fields(tbl, assume_utc)
        ignored: set[str] = set()
        out = rows[tbl]
        for line, record in _records(f):
            if isinstance(record, _Bad):
                reject(str(f), line, tbl, None, str(record))
                continue
            ignored.update(k for k in record if k not in spec)
            clean: dict[str, Any] = {}
            for name, (required, check) in spec.items():
                value = record.get(name)
                if value is None or (isinstance(value, str) and not value.strip()):
                    if required:
                        reject(str(f), line, tbl, name, "missing required value")
                        break
                    clean[name] = None
                    continue
                try:
                    clean[name] = check(value)
                except _Bad as exc:
                    reject(str(f), line, tbl, name, str(exc))
                    break
            else:
                for name, value in clean.items():
                    out.columns[name].append(value)
                out.source.append(str(f))
                out.line.append(line)
        if ignored:
            report.ignored_columns[str(f)] = sorted(ignored)

    products = _catalog_ids(warehouse)
    request_days = _request_days(warehouse)  # the warehouse's days first: first import wins
    written_days: set[str] = set()
    for tbl in ORDER:
        if tbl not in targets.values():
            continue
        new = _dedupe_within(tbl, _arrow(tbl, rows[tbl], request_days, reject), reject)
        if tbl == REQUESTS:  # for the impressions' day look-up and the orphan check
            for rid, day in zip(new["request_id"].to_pylist(), new["dt"].to_pylist(), strict=True):
                request_days.setdefault(rid, day)
        if tbl in PRODUCT_TABLES:
            new = _check_references(tbl, new, products, unknown_products, request_days, reject)
        if tbl == EVENTS:
            new = _check_events(new, _request_times(warehouse, rows[REQUESTS]), reject)
        written, present, days = _merge_write(warehouse, tbl, new, reject)
        report.imported[tbl] = written
        report.already_present[tbl] = present
        written_days.update(days)

    for f in files:
        items = rejects_by_file.get(str(f), [])
        _write_rejects(warehouse, str(f), items)
        report.rejects.extend(items)
    report.days = sorted(written_days)
    return report


def _arrow(tbl: Table, rows: _Rows, request_days: dict[str, str], reject) -> pa.Table:
    """Validated rows as an Arrow table in the table's schema, plus dt, _source, _line."""
    schema = tbl.schema
    n = len(rows.line)
    arrays = {}
    for f in schema:
        values = rows.columns.get(f.name, [None] * n)
        if f.name == "ts":
            arrays[f.name] = pa.array(values, pa.int64()).cast(f.type)
        else:
            arrays[f.name] = pa.array(values, f.type)
    table = pa.table(arrays, schema=schema.remove_metadata()) if n else schema.empty_table()
    if "ts" in schema.names:
        days = pc.strftime(table["ts"], format="%Y-%m-%d") if n else pa.array([], pa.string())
    else:  # impressions: their own dt, else their request's day
        own = rows.columns.get("dt", [None] * n)
        days = [
            d or request_days.get(r)
            for d, r in zip(own, rows.columns.get("request_id", []), strict=True)
        ]
    table = table.append_column("dt", pa.array(days, pa.string()))
    table = table.append_column("_source", pa.array(rows.source, pa.string()))
    table = table.append_column("_line", pa.array(rows.line, pa.int64()))
    if tbl == IMPRESSIONS:
        missing = pc.is_null(table["dt"]).to_pylist()
        for src, line, bad in zip(rows.source, rows.line, missing, strict=True):
            if bad:
                reject(
                    src,
                    line,
                    tbl,
                    "request_id",
                    "unknown request, so its day is unknown (import its requests first, "
                    "or add a dt column)",
                )
        table = table.filter(pc.invert(pc.is_null(table["dt"])))
    return table


def _dedupe_within(tbl: Table, new: pa.Table, reject) -> pa.Table:
    """Rows repeating a key already seen in this import: keep the first, report the rest."""
    keys = KEYS[tbl]
    seen: dict[tuple, tuple[str, int]] = {}
    keep = []
    cols = [new[k].to_pylist() for k in keys]
    for i, (src, line) in enumerate(
        zip(new["_source"].to_pylist(), new["_line"].to_pylist(), strict=True)
    ):
        key = tuple(c[i] for c in cols)
        first = seen.setdefault(key, (src, line))
        if first != (src, line):
            reject(
                src,
                line,
                tbl,
                ",".join(keys),
                f"duplicate key (first at {first[0]}:{first[1]}); skipped",
            )
        keep.append(first == (src, line))
    return new.filter(pa.array(keep, pa.bool_()))


def _catalog_ids(warehouse: Warehouse) -> set[str] | None:
    if not warehouse.exists(PRODUCTS):
        return None
    return set(warehouse.read(PRODUCTS, columns=["product_id"])["product_id"].to_pylist())


def _request_days(warehouse: Warehouse) -> dict[str, str]:
    if not warehouse.exists(REQUESTS):
        return {}
    t = warehouse.read(REQUESTS, columns=["request_id", "ts"])
    days = pc.strftime(t["ts"], format="%Y-%m-%d").to_pylist()
    return dict(zip(t["request_id"].to_pylist(), days, strict=True))


def _check_references(tbl, new, products, unknown_products, request_days, reject):
    """Unknown product ids: kept with a warning (or dropped); orphan rows: kept, warned."""
    keep = []
    for pid, rid, src, line in zip(
        new["product_id"].to_pylist(),
        new["request_id"].to_pylist(),
        new["_source"].to_pylist(),
        new["_line"].to_pylist(),
        strict=True,
    ):
        ok = True
        if products is not None and pid not in products:
            action = "kept" if unknown_products == "keep" else "skipped"
            reject(
                src,
                line,
                tbl,
                "product_id",
                f"unknown product id {pid!r} (not in catalog/products)",
                action,
            )
            ok = unknown_products == "keep"
        if ok and request_days and tbl != IMPRESSIONS and rid not in request_days:
            reject(
                src,
                line,
                tbl,
                "request_id",
                f"no request {rid!r} in logs/requests (kept; ignored by no-click)",
                "kept",
            )
        keep.append(ok)
    return new.filter(pa.array(keep, pa.bool_()))


def _request_times(warehouse: Warehouse, fresh: _Rows) -> dict[str, int]:
    """Request id -> epoch ms: the warehouse's requests, then this import's."""
    out: dict[str, int] = {}
    if warehouse.exists(REQUESTS):
        t = warehouse.read(REQUESTS, columns=["request_id", "ts"])
        ms = pc.cast(t["ts"], pa.int64()).to_pylist()
        out.update(zip(t["request_id"].to_pylist(), ms, strict=True))
    for rid, ts in zip(
        fresh.columns.get("request_id", []), fresh.columns.get("ts", []), strict=True
    ):
        out.setdefault(rid, ts)
    return out


def _check_events(new: pa.Table, request_ts: dict[str, int], reject) -> pa.Table:
    """An event needs its request (earlier or in this import) and cannot precede it."""
    keep = []
    for rid, ts, src, line in zip(
        new["request_id"].to_pylist(),
        pc.cast(new["ts"], pa.int64()).to_pylist(),
        new["_source"].to_pylist(),
        new["_line"].to_pylist(),
        strict=True,
    ):
        asked = request_ts.get(rid)
        if asked is None:
            reject(src, line, EVENTS, "request_id", f"unknown request {rid!r}; skipped")
        elif ts < asked:
            reject(src, line, EVENTS, "ts", f"event {(asked - ts) / 1000:g} s before its request")
        keep.append(asked is not None and ts >= asked)
    return new.filter(pa.array(keep, pa.bool_()))


def _read_folder(folder: Path) -> tuple[pa.Table | None, list[Path]]:
    files = sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        return None, []
    tables = [pq.read_table(p, partitioning=None) for p in files]
    return pa.concat_tables(tables, promote_options="permissive"), files


def _merge_write(warehouse: Warehouse, tbl: Table, new: pa.Table, reject):
    """Add the rows whose key is not in the warehouse yet, one file rewrite per day.

    Returns (rows written, identical rows already present, days written).
    """
    keys = KEYS[tbl]
    schema = tbl.schema
    existing_keys: dict[tuple, dict] = {}
    if tbl == REQUESTS and warehouse.exists(REQUESTS):  # a request id is unique across days
        have = warehouse.dataset(REQUESTS).schema.names
        old = warehouse.read(REQUESTS, columns=[c for c in schema.names if c in have])
        for rec in old.to_pylist():
            existing_keys[(rec["request_id"],)] = rec
    written = present = 0
    days = []
    for day in sorted(set(new["dt"].to_pylist())):
        part = new.filter(pc.equal(new["dt"], day))
        folder = warehouse.table_dir(tbl) / f"dt={day}"
        old, old_files = _read_folder(folder)
        known = dict(existing_keys)
        if old is not None and tbl != REQUESTS:
            cols = [c for c in schema.names if c in old.column_names]
            for rec in old.select(cols).to_pylist():
                known[tuple(rec.get(k) for k in keys)] = rec
        keep = []
        for rec in part.to_pylist():
            key = tuple(rec[k] for k in keys)
            if key not in known:
                keep.append(True)
                continue
            keep.append(False)
            if _same(rec, known[key], schema):
                present += 1
            else:
                reject(
                    rec["_source"],
                    rec["_line"],
                    tbl,
                    ",".join(keys),
                    "key already in the warehouse with different values "
                    "(the first import wins); skipped",
                )
        add = part.filter(pa.array(keep, pa.bool_())).select(schema.names)
        if not add.num_rows:
            continue
        # Imported rows live in their own file of the partition: files that other stages
        # wrote (the simulator's part-<variant>.parquet) are read for the key check above but
        # never rewritten, so a rerun of that stage cannot duplicate or lose imported rows.
        mine = folder / IMPORT_FILE
        merged = add
        if mine in old_files:
            before = pq.read_table(mine, partitioning=None).select(schema.names).cast(schema)
            merged = pa.concat_tables([before, add])
        merged = merged.sort_by([(k, "ascending") for k in keys])
        warehouse.write(tbl, merged, {"dt": day}, file=IMPORT_FILE)
        written += add.num_rows
        days.append(day)
    return written, present, days


def _same(new: dict, old: dict, schema: pa.Schema) -> bool:
    for name in schema.names:
        a, b = new.get(name), old.get(name)
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
            continue
        if a != b:
            return False
    return True


def _write_rejects(warehouse: Warehouse, source: str, items: list[dict]) -> None:
    """One file per source file, so re-importing a file replaces its rejects."""
    digest = hashlib.sha1(str(Path(source).absolute()).encode()).hexdigest()[:16]
    if not items:
        (warehouse.table_dir(LOG_REJECTS) / f"part-{digest}.parquet").unlink(missing_ok=True)
        return
    table = pa.Table.from_pylist(items, schema=LOG_REJECTS.schema)
    warehouse.write(LOG_REJECTS, table, file=f"part-{digest}.parquet")
