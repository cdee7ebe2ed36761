"""Reading the one normalised product table every stage reads (declared in `revision.tables`)."""

from __future__ import annotations

import pandas as pd

from revision.errors import MissingArtifactError
from revision.tables import PRODUCTS
from revision.warehouse import Warehouse


def load_products(warehouse: Warehouse) -> pd.DataFrame:
    """The catalog as a DataFrame indexed by position, sorted by product_id."""
    if not warehouse.exists(PRODUCTS):
        raise MissingArtifactError(
            f"no catalog in {warehouse.root}: run `revision catalog import PATH` first"
        )
    return warehouse.read_pandas(PRODUCTS)
