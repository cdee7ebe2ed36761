"""Product catalog: import (H&M layout or any table with a column map), validation, storage."""

from revision.catalog.importer import ImportReport, import_hm, import_table
from revision.catalog.schema import load_products

__all__ = [
    "ImportReport",
    "import_hm",
    "import_table",
    "load_products",
]
