"""The reference visual search engine: catalog + image encoder + vector index.

`SearchEngine.open(warehouse)` loads what `revision index build` wrote. The staged request flow
lives in `revision.search.pipeline`; the engine only owns the data and the models.

Two vector spaces: the encoder's raw embeddings (what caches, attribute heads and the simulator
hold) and the search space the index is built in. They are the same unless a projection adapter
was trained (`revision index adapt`); then `project_query` maps a raw query embedding into the
search space and the index holds the adapter's catalog projection.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa

from revision.catalog.schema import load_products
from revision.progress import progress
from revision.search.index import VectorIndex
from revision.tables import IMAGE_HASHES
from revision.vision.embeddings import ImageEmbedder
from revision.vision.encoder import ImageEncoder, get_image_encoder
from revision.warehouse import Warehouse

INDEX_DIR = ("index",)
ADAPTER = ("models", "adapter.npz")


class SearchEngine:
    def __init__(
        self,
        warehouse: Warehouse,
        products: pd.DataFrame,
        index: VectorIndex,
        encoder: ImageEncoder,
        raw_vectors: np.ndarray | None = None,
        adapter=None,
    ):
        self.warehouse = warehouse
        self.adapter = adapter
        self.raw_vectors = index.vectors_ if raw_vectors is None else raw_vectors
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
        folder = warehouse.artifact_dir(*INDEX_DIR, kind)
        index = VectorIndex.load(folder)
        products = load_products(warehouse)
        adapter = raw = None
        if (folder / "raw.npy").exists():
            from revision.vision.adapter import ProjectionAdapter

            adapter = ProjectionAdapter.load(folder / "adapter.npz")
            raw = np.load(folder / "raw.npy")
        return cls(warehouse, products, index, get_image_encoder(), raw, adapter)

    @cached_property
    def exact(self) -> VectorIndex:
        return self.index.exact()

    def vector_of(self, product_id: str) -> np.ndarray:
        """A product's vector in the search space."""
        return self.index.vectors_[self.row_of[product_id]]

    def raw_vector_of(self, product_id: str) -> np.ndarray:
        """A product photo's raw encoder embedding."""
        return self.raw_vectors[self.row_of[product_id]]

    def project_query(self, raw: np.ndarray) -> np.ndarray:
        """Raw query embedding(s) -> search space (identity without an adapter)."""
        if self.adapter is None:
            return raw
        return self.adapter.transform_query(np.atleast_2d(raw)).reshape(np.shape(raw))

    def warm_up(self) -> SearchEngine:
        """Load the encoder now, so the first request's latency is not the model's load time."""
        from PIL import Image

        self.encode(Image.new("RGB", (32, 32), "white"))
        return self

    def encode(self, image) -> np.ndarray:
        """The photo's raw encoder embedding (see `project_query` for the search space)."""
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
    raw = vectors[ok]
    adapter_path = warehouse.artifact(*ADAPTER)
    adapter = None
    if adapter_path.exists():
        from revision.vision.adapter import ProjectionAdapter

        adapter = ProjectionAdapter.load(adapter_path)
    summary["adapter"] = str(adapter_path) if adapter else None
    search_space = adapter.transform_catalog(raw) if adapter else raw
    for kind in progress(kinds, description="building indexes"):
        started = time.perf_counter()
        folder = warehouse.artifact_dir(*INDEX_DIR, kind)
        for stale in ("raw.npy", "adapter.npz"):
            (folder / stale).unlink(missing_ok=True)
        index = VectorIndex(kind, m=m, ef_construction=ef_construction, ef_search=ef_search)
        index.build(search_space, ids).save(folder)
        if adapter:  # the index and the adapter it was built with travel together
            np.save(folder / "raw.npy", raw)
            adapter.save(folder / "adapter.npz")
        summary[f"{kind}_build_s"] = round(time.perf_counter() - started, 3)
    return summary
