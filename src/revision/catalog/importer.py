"""Catalog import: H&M's layout, or any CSV/Parquet with a column map.

Rows are validated one by one: a bad row (missing id or title, duplicate id, unreadable image)
goes to `catalog/rejects` with its file, row and field, and the good rows still import.
Imports upsert by product_id and the table is rewritten sorted, so importing the same data
twice leaves the warehouse byte-for-byte equivalent.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from revision.errors import InputError
from revision.progress import progress
from revision.tables import CATALOG_REJECTS, PRODUCTS
from revision.vision.images import load_image
from revision.warehouse import Warehouse

REQUIRED_FIELDS = ("id", "title", "image")
# Fields a column map may name besides the required ones.
OPTIONAL_FIELDS = (
    "description",
    "category",
    "colour",
    "pattern",
    "department",
    "index_group",
    "price",
    "variant_group",
)
HM_COLUMNS = {
    "id": "article_id",
    "title": "prod_name",
    "description": "detail_desc",
    "category": "product_type_name",
    "colour": "colour_group_name",
    "pattern": "graphical_appearance_name",
    "department": "department_name",
    "index_group": "index_group_name",
    "variant_group": "product_code",
}


@dataclass
class ImportReport:
    source: str
    imported: int = 0
    rejected: int = 0
    total: int = 0  # products in the catalog after the import
    rejects: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "imported": self.imported,
            "rejected": self.rejected,
            "catalog_size": self.total,
            "rejects": self.rejects[:50],
        }


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file with every column as a string (ids keep leading zeros)."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            return frame.astype({c: "string" for c in frame.columns})
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: cannot read table: {exc}") from exc


def parse_column_map(items: list[str]) -> dict[str, str]:
    """`["id=article", "title=name"]` -> {"id": "article", "title": "name"}."""
    known = (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)
    mapping: dict[str, str] = {}
    for item in items:
        key, sep, column = item.partition("=")
        if not sep or not column:
            raise InputError(f"--map {item!r}: expected FIELD=COLUMN")
        if key not in known:
            raise InputError(f"--map {item!r}: unknown field {key!r}; valid: {', '.join(known)}")
        mapping[key] = column
    return mapping


def import_hm(path: str | Path, warehouse: Warehouse) -> ImportReport:
    """Import the H&M layout: articles.csv, transactions.csv (prices), images/<id[:3]>/<id>.jpg.

    Price is the median purchase price from transactions; articles never bought have none.
    """
    root = Path(path)
    articles = root / "articles.csv"
    frame = read_table(articles)
    transactions = root / "transactions.csv"
    if transactions.exists():
        sales = read_table(transactions)
        _require_columns(sales, ["article_id", "price"], transactions)
        prices = pd.to_numeric(sales["price"], errors="coerce")
        median = prices.groupby(sales["article_id"]).median()
        frame["__price"] = frame.get("article_id").map(median)
    else:
        frame["__price"] = np.nan
    if "article_id" in frame:
        ids = frame["article_id"].fillna("")
        frame["__image"] = [f"images/{i[:3]}/{i}.jpg" for i in ids]
    mapping = dict(HM_COLUMNS, price="__price", image="__image")
    return _import(frame, mapping, str(articles), warehouse, image_root=root)


def import_table(
    path: str | Path,
    mapping: Mapping[str, str],
    warehouse: Warehouse,
    images: str | Path | None = None,
) -> ImportReport:
    """Import any CSV/Parquet; `mapping` maps our fields to its columns.

    Image paths are taken relative to `images` when given, else to the table's folder.
    """
    path = Path(path)
    missing = [f for f in REQUIRED_FIELDS if f not in mapping]
    if missing:
        raise InputError(
            f"{path}: the column map lacks required field(s) {', '.join(missing)} "
            f"(pass --map {missing[0]}=COLUMN)"
        )
    frame = read_table(path)
    image_root = Path(images) if images else path.parent
    return _import(frame, dict(mapping), str(path), warehouse, image_root=image_root)


def _require_columns(frame: pd.DataFrame, columns, source) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(
            f"{source}: missing column(s) {', '.join(missing)}; "
            f"the file has: {', '.join(map(str, frame.columns))}"
        )


def _import(
    frame: pd.DataFrame, mapping: dict, source: str, warehouse: Warehouse, image_root: Path
) -> ImportReport:
    _require_columns(frame, list(mapping.values()), source)
    if frame.empty:
        raise InputError(f"{source}: the catalog is empty (no data rows)")
    out = pd.DataFrame({"product_id": frame[mapping["id"]].str.strip()})
    out["title"] = frame[mapping["title"]].str.strip()
    for name in OPTIONAL_FIELDS:
        out[name] = frame[mapping[name]] if name in mapping else None
    out["price"] = pd.to_numeric(out["price"], errors="coerce") if "price" in mapping else np.nan
    images = frame[mapping["image"]].fillna("").astype(str)
    out["image_path"] = [_resolve(image_root, p) if p else "" for p in images]
    out["src_row"] = np.arange(1, len(out) + 1)

    rejects: list[dict] = []

    def reject(rows: pd.DataFrame, fld: str, reason) -> None:
        for row in rows.itertuples():
            text = reason(row) if callable(reason) else reason
            rejects.append(
                {
                    "source": source,
                    "row": int(row.src_row),
                    "product_id": row.product_id,
                    "field": fld,
                    "reason": text,
                }
            )

    bad = out["product_id"].isna() | (out["product_id"] == "")
    reject(out[bad], "id", "empty product id")
    out = out[~bad]
    bad = out["title"].isna() | (out["title"] == "")
    reject(out[bad], "title", "empty title")
    out = out[~bad]
    if "price" in mapping:
        raw = frame.loc[out.index, mapping["price"]]
        bad = raw.notna() & out["price"].isna() & (mapping["price"] != "__price")
        reject(out[bad], "price", lambda r: f"not a number: {raw[r.Index]!r}")
        out = out[~bad]
    dup = out["product_id"].duplicated(keep="first")
    first_row = out.drop_duplicates("product_id").set_index("product_id")["src_row"]
    reject(out[dup], "id", lambda r: f"duplicate id (first at row {first_row[r.product_id]})")
    out = out[~dup]

    problems = _check_images(out["image_path"].tolist())
    bad = pd.Series([p is not None for p in problems], index=out.index)
    reject(out[bad], "image", lambda r: problems[out.index.get_loc(r.Index)])
    out = out[~bad].drop(columns="src_row")

    merged = out
    if warehouse.exists(PRODUCTS):
        old = warehouse.read_pandas(PRODUCTS)
        merged = pd.concat([old[~old["product_id"].isin(out["product_id"])], out])
    merged = merged.sort_values("product_id").reset_index(drop=True)
    warehouse.write(
        PRODUCTS, pa.Table.from_pandas(merged, schema=PRODUCTS.schema, preserve_index=False)
    )
    _write_rejects(warehouse, source, rejects)
    return ImportReport(
        source, imported=len(out), rejected=len(rejects), total=len(merged), rejects=rejects
    )


def _resolve(root: Path, value: str) -> str:
    path = Path(value)
    return str(path if path.is_absolute() else (root / path).resolve())


def _check_images(paths: list[str]) -> list[str | None]:
    """Decode every image (threads: PIL releases the GIL); None when fine, else the reason."""

    def check(path: str) -> str | None:
        if not path:
            return "no image path"
        try:
            load_image(path)
        except InputError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(check, paths, chunksize=64)
        return list(progress(results, total=len(paths), description="checking images"))


def _write_rejects(warehouse: Warehouse, source: str, rejects: list[dict]) -> None:
    """Rejects of a source replace that source's earlier rejects (re-import is idempotent)."""
    keep = pd.DataFrame(columns=CATALOG_REJECTS.names)
    if warehouse.exists(CATALOG_REJECTS):
        old = warehouse.read_pandas(CATALOG_REJECTS)
        keep = old[old["source"] != source]
    table = pd.concat([keep, pd.DataFrame(rejects, columns=keep.columns)], ignore_index=True)
    rows = pa.Table.from_pandas(table, schema=CATALOG_REJECTS.schema, preserve_index=False)
    warehouse.write(CATALOG_REJECTS, rows)
