"""Image embeddings cached by image content hash, so no photo is ever encoded twice.

The cache is a folder of Parquet shards (`hash`, `vector`) per encoder. Each finished batch is
written as its own shard, so an interrupted run keeps everything it had finished and a rerun
only encodes what is missing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from revision.progress import progress
from revision.vision.encoder import ImageEncoder, get_image_encoder
from revision.vision.images import content_hash, load_image
from revision.warehouse import Warehouse

SHARD_SIZE = 512


class EmbeddingCache:
    def __init__(self, folder: str | Path, dim: int):
        self.folder = Path(folder)
        self.dim = dim
        self._index: dict[str, int] = {}
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._load()

    def _load(self) -> None:
        shards = sorted(self.folder.glob("shard-*.parquet")) if self.folder.exists() else []
        hashes: list[str] = []
        blocks: list[np.ndarray] = []
        for shard in shards:
            table = pq.read_table(shard)
            hashes.extend(table.column("hash").to_pylist())
            flat = table.column("vector").combine_chunks().flatten().to_numpy()
            blocks.append(flat.reshape(-1, self.dim).astype(np.float32, copy=False))
        if blocks:
            self._vectors = np.concatenate(blocks)
        self._index = {h: i for i, h in enumerate(hashes)}

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get(self, keys: Sequence[str]) -> np.ndarray:
        return self._vectors[[self._index[k] for k in keys]]

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        new = [(k, v) for k, v in zip(keys, vectors, strict=True) if k not in self._index]
        if not new:
            return
        keys = [k for k, _ in new]
        block = np.stack([v for _, v in new]).astype(np.float32)
        self.folder.mkdir(parents=True, exist_ok=True)
        vector_type = pa.list_(pa.float32(), self.dim)
        table = pa.table(
            {
                "hash": keys,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), self.dim).cast(
                    vector_type
                ),
            }
        )
        shard = self.folder / f"shard-{uuid.uuid4().hex}.parquet"
        tmp = shard.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(shard)
        start = len(self._vectors)
        self._vectors = np.concatenate([self._vectors, block])
        self._index.update({k: start + i for i, k in enumerate(keys)})


class ImageEmbedder:
    """Encoder + cache: `embed_paths` returns one vector per path, computing only new ones."""

    def __init__(self, warehouse: Warehouse, encoder: ImageEncoder | None = None):
        self.warehouse = warehouse
        self.encoder = encoder or get_image_encoder()
        self.cache = EmbeddingCache(
            warehouse.artifact_dir("cache", "image_embeddings", self.encoder.name),
            self.encoder.dim,
        )

    def embed_paths(
        self,
        paths: Sequence[str],
        on_error: Callable[[str, Exception], None] | None = None,
        description: str = "embedding images",
    ) -> tuple[np.ndarray, list[str]]:
        """Vectors for `paths` (rows in order) and their content hashes.

        Unreadable images raise `InputError` unless `on_error` is given, in which case it is
        called and the row gets a zero vector and an empty hash.
        """
        keys: list[str] = []
        for path in paths:
            try:
                keys.append(content_hash(path))
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(path, exc)
                keys.append("")
        todo = sorted(
            {(k, p) for k, p in zip(keys, paths, strict=True) if k and k not in self.cache}
        )
        pending_keys: list[str] = []
        pending_vecs: list[np.ndarray] = []
        for key, path in progress(todo, total=len(todo), description=description):
            try:
                vector = self.encoder.encode([load_image(path)])[0]
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(path, exc)
                keys = ["" if k == key else k for k in keys]
                continue
            pending_keys.append(key)
            pending_vecs.append(vector)
            if len(pending_keys) >= SHARD_SIZE:
                self.cache.add(pending_keys, np.stack(pending_vecs))
                pending_keys, pending_vecs = [], []
        if pending_keys:
            self.cache.add(pending_keys, np.stack(pending_vecs))
        out = np.zeros((len(paths), self.encoder.dim), dtype=np.float32)
        found = [i for i, k in enumerate(keys) if k]
        if found:
            out[found] = self.cache.get([keys[i] for i in found])
        return out, keys
