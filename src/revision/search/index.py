"""Vector index over catalog embeddings: FAISS HNSW for serving, exact flat as ground truth.

Vectors are L2-normalised, so inner product is cosine similarity. The index folder holds the
FAISS file, the row -> product_id map and the raw vectors (tools and the exact index need them).
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np

from revision.errors import InputError, MissingArtifactError

KINDS = ("hnsw", "flat")


class VectorIndex:
    def __init__(
        self, kind: str = "hnsw", m: int = 32, ef_construction: int = 200, ef_search: int = 128
    ):
        if kind not in KINDS:
            raise InputError(f"unknown index kind {kind!r}; valid: {', '.join(KINDS)}")
        self.kind = kind
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search

    def build(self, vectors: np.ndarray, ids: list[str]) -> VectorIndex:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) != len(ids):
            raise InputError(f"{len(vectors)} vectors but {len(ids)} ids")
        if len(vectors) == 0:
            raise InputError("cannot build an index over an empty catalog")
        dim = vectors.shape[1]
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        self.index_ = index
        self.ids_ = list(ids)
        self.vectors_ = vectors
        self._tune()
        return self

    def _tune(self) -> None:
        if self.kind == "hnsw":
            self.index_.hnsw.efSearch = self.ef_search

    def exact(self) -> VectorIndex:
        """A flat index over the same vectors (ground truth for recall checks)."""
        return VectorIndex("flat").build(self.vectors_, self.ids_)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of shape (n, k); rows index `ids_`, -1 where fewer than k exist."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self.ids_))
        if self.kind == "hnsw":
            self.index_.hnsw.efSearch = max(self.ef_search, k)
        return self.index_.search(queries, k)

    def __len__(self) -> int:
        return len(self.ids_)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{self.kind}.faiss.tmp"
        faiss.write_index(self.index_, str(tmp))
        np.save(folder / "vectors.npy", self.vectors_)
        (folder / "meta.json").write_text(
            json.dumps(
                {
                    "kind": self.kind,
                    "m": self.m,
                    "ef_construction": self.ef_construction,
                    "ef_search": self.ef_search,
                    "ids": self.ids_,
                }
            )
        )
        tmp.replace(folder / f"{self.kind}.faiss")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> VectorIndex:
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            raise MissingArtifactError(f"no index in {folder}: run `revision index build` first")
        meta = json.loads(meta_path.read_text())
        self = cls(meta["kind"], meta["m"], meta["ef_construction"], meta["ef_search"])
        self.index_ = faiss.read_index(str(folder / f"{self.kind}.faiss"))
        self.ids_ = meta["ids"]
        self.vectors_ = np.load(folder / "vectors.npy")
        self._tune()
        return self
