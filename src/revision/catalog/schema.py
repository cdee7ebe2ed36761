"""The one normalised product table every stage reads (`catalog/products`)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from revision.errors import MissingArtifactError
from revision.warehouse import Warehouse

PRODUCTS = "catalog/products"
REJECTS = "catalog/rejects"

PRODUCT_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("description", pa.string()),
        pa.field("category", pa.string()),  # product type, e.g. "Dress"
        pa.field("colour", pa.string()),
        pa.field("pattern", pa.string()),
        pa.field("department", pa.string()),
        pa.field("index_group", pa.string()),  # audience, e.g. "Ladieswear", "Baby/Children"
        pa.field("price", pa.float64()),  # nullable: never invented
        pa.field("variant_group", pa.string()),  # colour variants of one design share it
        pa.field("image_path", pa.string(), nullable=False),  # absolute
    ]
)
# Fields a column map may name (besides id, title and image, which are required).
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

REJECT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),  # file the row came from
        pa.field("row", pa.int64()),  # 1-based data row (header excluded)
        pa.field("product_id", pa.string()),
        pa.field("field", pa.string()),
        pa.field("reason", pa.string()),
    ]
)


def load_products(warehouse: Warehouse) -> pd.DataFrame:
    """The catalog as a DataFrame indexed by position, sorted by product_id."""
    if not warehouse.exists(PRODUCTS):
        raise MissingArtifactError(
            f"no catalog in {warehouse.root}: run `revision catalog import PATH` first"
        )
    return warehouse.read_pandas(PRODUCTS)
