"""The service's logs: the same warehouse tables the simulator writes, in batched atomic files.

Rows are buffered in memory and written every `batch_rows` requests or `flush_s` seconds,
whichever comes first, by a background thread (never on a request's path), and on shutdown.
Each flush writes one new file per table and day, `<table>/dt=DAY/part-serve-<writer>-<n>.parquet`,
through `Warehouse.write` (a temporary file renamed into place): a crash loses at most the rows
not yet flushed and never leaves a half-written file, and several workers never write the same
file. Clicks, orders and follow-up events go to their request's day, as the simulator does, so
each day's tables join on their own.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime

import pyarrow as pa

from revision.tables import CLICKS, EVENTS, IMPRESSIONS, ORDERS, REQUESTS, Table
from revision.warehouse import Warehouse

log = logging.getLogger(__name__)
TABLES = (REQUESTS, IMPRESSIONS, CLICKS, ORDERS, EVENTS)
MAX_BUFFERED = 200_000  # rows kept across failed flushes before the oldest are dropped


def day_of(ts_ms: int) -> str:
    """The UTC day of a timestamp, the `dt=` partition.

    >>> day_of(0)
    '1970-01-01'
    """
    return datetime.fromtimestamp(ts_ms / 1000, UTC).date().isoformat()


class LogWriter:
    """Buffered, batched writer of the log tables; `start()` the flusher, `close()` at exit."""

    def __init__(self, warehouse: Warehouse, *, batch_rows: int = 512, flush_s: float = 5.0):
        self.warehouse = warehouse
        self.batch_rows = batch_rows
        self.flush_s = flush_s
        self.writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._rows: dict[Table, dict[str, list[dict]]] = {
            t: defaultdict(list) for t in TABLES
        }  # table -> dt -> rows
        self._requests = 0
        self._seq = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.flushed_rows = 0
        self.failures = 0

    # -- rows --------------------------------------------------------------------------------------
    def add(self, table: Table, dt: str, rows: list[dict]) -> None:
        if not rows:
            return
        with self._lock:
            self._rows[table][dt].extend(rows)
            if table == REQUESTS:
                self._requests += len(rows)
                if self._requests >= self.batch_rows:
                    self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return sum(len(r) for by_day in self._rows.values() for r in by_day.values())

    # -- flushing ----------------------------------------------------------------------------------
    def flush(self) -> int:
        """Write every buffered row now; returns how many rows were written. Rows of a failed
        write go back to the buffer for the next flush."""
        with self._flush_lock:
            with self._lock:
                taken, self._rows = self._rows, {t: defaultdict(list) for t in TABLES}
                self._requests = 0
                self._seq += 1
                seq = self._seq
            written = 0
            for table, by_day in taken.items():
                for dt, rows in by_day.items():
                    if not rows:
                        continue
                    try:
                        self.warehouse.write(
                            table,
                            _table(table, rows),
                            {"dt": dt},
                            file=f"part-serve-{self.writer}-{seq:06d}.parquet",
                        )
                        written += len(rows)
                    except Exception:  # keep serving; the rows wait for the next flush
                        self.failures += 1
                        log.exception("writing %d rows of %s (dt=%s) failed", len(rows), table, dt)
                        self._requeue(table, dt, rows)
            self.flushed_rows += written
            return written

    def _requeue(self, table: Table, dt: str, rows: list[dict]) -> None:
        with self._lock:
            held = self._rows[table][dt]
            held[:0] = rows
            if len(held) > MAX_BUFFERED:
                del held[: len(held) - MAX_BUFFERED]

    def start(self) -> LogWriter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="revision-logs", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            if self.pending():
                self.flush()

    def close(self) -> None:
        """Stop the flusher and write what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.flush()


def _table(table: Table, rows: list[dict]) -> pa.Table:
    schema = table.full_schema
    names = set().union(*rows)
    fields = [f for f in schema if f.name in names or f.name in table.required]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def now_ms() -> int:
    return int(time.time() * 1000)
