"""The reference visual search engine: catalog + image encoder + vector index.

`SearchEngine.open(warehouse)` loads what `revision index build` wrote. The staged request flow
lives in `revision.search.pipeline`; the engine only owns the data and the models.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa

from revision.catalog.schema import load_products
from revision.progress import progress
from revision.search.index import VectorIndex
from revision.vision.embeddings import ImageEmbedder
from revision.vision.encoder import ImageEncoder, get_image_encoder
from revision.warehouse import Warehouse

INDEX_DIR = ("index",)
IMAGE_HASHES = "catalog/image_hashes"


class SearchEngine:
    def __init__(
        self,
        warehouse: Warehouse,
        products: pd.DataFrame,
        index: VectorIndex,
        encoder: ImageEncoder,
    ):
        self.warehouse = warehouse
        self.products = products.set_index("product_id", drop=False)
        self.index = index
        self.encoder = encoder
        self.row_of = {pid: i for i, pid in enumerate(index.ids_)}
        prices = products["price"].astype(object).where(products["price"].notna(), None)
        # (title, price) per product: the hot path builds hits without touching pandas
        self.labels = dict(
            zip(products["product_id"], zip(products["title"], prices, strict=True), strict=True)
        )

    @classmethod
    def open(cls, warehouse: Warehouse, kind: str = "hnsw") -> SearchEngine:
        index = VectorIndex.load(warehouse.artifact_dir(*INDEX_DIR, kind))
        products = load_products(warehouse)
        encoder = get_image_encoder()
        return cls(warehouse, products, index, encoder)

    @cached_property
    def exact(self) -> VectorIndex:
        return self.index.exact()

    def vector_of(self, product_id: str) -> np.ndarray:
        return self.index.vectors_[self.row_of[product_id]]

    def warm_up(self) -> SearchEngine:
        """Load the encoder now, so the first request's latency is not the model's load time."""
        from PIL import Image

        self.encode(Image.new("RGB", (32, 32), "white"))
        return self

    def encode(self, image) -> np.ndarray:
        return self.encoder.encode([image])[0]


def build_index(
    warehouse: Warehouse,
    kinds=("hnsw", "flat"),
    m: int = 32,
    ef_construction: int = 200,
    ef_search: int = 128,
) -> dict:
    """Embed every catalog photo (cached) and build the FAISS indexes; returns a summary."""
    import time

    products = load_products(warehouse)
    embedder = ImageEmbedder(warehouse)
    started = time.perf_counter()
    failures: list[tuple[str, str]] = []
    vectors, hashes = embedder.embed_paths(
        products["image_path"].tolist(),
        on_error=lambda p, e: failures.append((p, str(e))),
        description="embedding catalog",
    )
    embed_s = time.perf_counter() - started
    ok = np.array([bool(h) for h in hashes])
    ids = products["product_id"][ok].tolist()
    warehouse.write(
        IMAGE_HASHES,
        pa.table({"product_id": products["product_id"].tolist(), "image_hash": hashes}),
    )
    summary = {
        "products": len(ids),
        "embed_s": round(embed_s, 2),
        "failed": [{"image": p, "error": e} for p, e in failures],
    }
    for kind in progress(kinds, description="building indexes"):
        started = time.perf_counter()
        index = VectorIndex(kind, m=m, ef_construction=ef_construction, ef_search=ef_search)
        index.build(vectors[ok], ids).save(warehouse.artifact_dir(*INDEX_DIR, kind))
        summary[f"{kind}_build_s"] = round(time.perf_counter() - started, 3)
    return summary
