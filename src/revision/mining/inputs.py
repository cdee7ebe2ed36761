"""Mining input: which requests to mine, and each one's query photo and result products.

The input table (normally `logs/no_click`) names the requests; only rows with `kept` true are
mined when it has that column. The order is by request_id, so `--limit N` always takes the same
N requests whatever the table's file layout. The query photo comes from the input table's
`image` column when it has one, else from `logs/requests`; the results are the request's
impressions (`logs/impressions`, first K by rank) joined to the catalog.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from revision.catalog.schema import load_products
from revision.errors import InputError
from revision.logs.context import build_context
from revision.mining._base import Analysis, K, MiningInput, Product
from revision.tables import IMPRESSIONS, REQUESTS
from revision.warehouse import Warehouse

_PRODUCT_FIELDS = (
    "title",
    "price",
    "description",
    "category",
    "colour",
    "pattern",
    "department",
    "index_group",
    "variant_group",
    "image_path",
)


def plan_requests(
    warehouse: Warehouse,
    table: str,
    limit: int | None = None,
    days: tuple[str | None, str | None] = (None, None),
) -> list[str]:
    """The request ids to mine, deduplicated and in a stable order (first `limit` of them);
    `days` = (first, last) `dt` partitions to take, inclusive (None: unbounded)."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    data = warehouse.read(table)
    if "request_id" not in data.column_names:
        raise InputError(f"table {table} has no request_id column: {', '.join(data.column_names)}")
    if "kept" in data.column_names:
        data = data.filter(pc.fill_null(data.column("kept"), False))
    first, last = days
    if (first or last) and "dt" not in data.column_names:
        raise InputError(f"table {table} has no dt partitions to select days from")
    if first:
        data = data.filter(pc.greater_equal(data.column("dt"), first))
    if last:
        data = data.filter(pc.less_equal(data.column("dt"), last))
    ids = sorted({r for r in data.column("request_id").to_pylist() if r})
    return ids[:limit] if limit else ids


class InputAssembler:
    """Builds `MiningInput`s for request ids; loads the logs and the catalog once."""

    def __init__(self, warehouse: Warehouse, table: str, request_ids: list[str], k: int = K):
        self.warehouse = warehouse
        self.k = k
        wanted = pa.array(sorted(set(request_ids)), pa.string())
        self.images = self._images(table, wanted)
        self.impressions = self._impressions(wanted)
        self.contexts = build_context(warehouse, sorted(set(request_ids)))
        products = load_products(warehouse)
        columns = {f: products[f].tolist() for f in _PRODUCT_FIELDS if f in products.columns}
        self.products = {
            pid: {f: _clean(values[i]) for f, values in columns.items()}
            for i, pid in enumerate(products["product_id"].tolist())
        }

    def _images(self, table: str, wanted: pa.Array) -> dict[str, tuple[str, str | None]]:
        source = table
        names = self.warehouse.dataset(table).schema.names
        if "image" not in names:
            source, names = REQUESTS, self.warehouse.dataset(REQUESTS).schema.names
        columns = ["request_id", "image"] + (["image_hash"] if "image_hash" in names else [])
        data = self.warehouse.read(source, columns=columns)
        data = data.filter(pc.is_in(data.column("request_id"), value_set=wanted))
        hashes = data.column("image_hash").to_pylist() if "image_hash" in columns else None
        out = {}
        for i, (rid, image) in enumerate(
            zip(
                data.column("request_id").to_pylist(), data.column("image").to_pylist(), strict=True
            )
        ):
            if image:
                out[rid] = (self._resolve(image), hashes[i] if hashes else None)
        return out

    def _resolve(self, image: str) -> str:
        """Relative photo paths are relative to the warehouse (where the simulator puts them)."""
        path = self.warehouse.resolve(image)
        return str(path) if path.exists() else image

    def _impressions(self, wanted: pa.Array) -> dict[str, list[tuple[int, str, float]]]:
        data = self.warehouse.read(
            IMPRESSIONS, columns=["request_id", "product_id", "rank", "score"]
        )
        data = data.filter(pc.is_in(data.column("request_id"), value_set=wanted))
        out: dict[str, list[tuple[int, str, float]]] = {}
        for rid, pid, rank, score in zip(
            *(data.column(c).to_pylist() for c in ("request_id", "product_id", "rank", "score")),
            strict=True,
        ):
            out.setdefault(rid, []).append((int(rank), pid, float(score or 0.0)))
        for rows in out.values():
            rows.sort()
        return out

    def build(self, request_ids: list[str]) -> tuple[list[MiningInput], list[Analysis]]:
        """Inputs for the requests that have a photo and results; the others as failures."""
        inputs, failed = [], []
        for rid in request_ids:
            if rid not in self.images:
                failed.append(Analysis.failed(rid, "input", "no query photo logged"))
                continue
            rows = self.impressions.get(rid)
            if not rows:
                failed.append(Analysis.failed(rid, "input", "no impressions logged"))
                continue
            image, image_hash = self.images[rid]
            results = tuple(
                Product(product_id=pid, rank=rank, score=score, **self.products.get(pid, {}))
                for rank, pid, score in rows[: self.k]
            )
            inputs.append(MiningInput(rid, image, image_hash, results, self.contexts.get(rid)))
        return inputs, failed


def _clean(value):
    """pandas NaN / None → None; everything else unchanged."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value
