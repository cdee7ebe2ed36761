"""The query-photo pool: a few user photos per popular product, built once, embedded once.

There are no consumer photos: every query photo is derived from a catalog product photo by
`revision.vision.query_photos` (reframed, relit, blurred, compressed), or made unusable on
purpose by `make_low_quality` (dark, blurred, tiny, off-topic). Trade-off: a finite pool means
the same photo recurs across requests (popular items are photographed again and again, and a
real log also holds duplicates), in exchange for ~1,000 simulated requests per second: a photo
is generated and encoded once, never per request.

Photos are JPEG files under `artifacts/sim/photos/<sha256>.jpg` (the path goes into
`logs/requests.image`); their embeddings live in the warehouse's content-hash embedding cache,
so mining reuses them for free. The pool's manifest (photo -> source product) is written per
finished chunk under `artifacts/sim/photos/manifest/`, so a killed build resumes where it
stopped. The manifest names the photographed product: like `sim/truth`, only the simulator
and evaluation may read it.
"""

from __future__ import annotations

import io
import os
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from revision.progress import progress
from revision.vision.embeddings import ImageEmbedder
from revision.vision.images import content_hash, load_image
from revision.vision.query_photos import (
    LOW_QUALITY_KINDS,
    SEVERITIES,
    make_low_quality,
    query_photo_bytes,
)
from revision.warehouse import Warehouse

PHOTO_DIR = ("sim", "photos")
MANIFEST_DIR = ("sim", "photos", "manifest")
CHUNK = 128  # photos per resumable step (one manifest shard, one embedding shard)
ENCODE_BATCH = 16
_LQ_STREAM = 1_000_003  # rng stream id of the low-quality photos (products use crc32 ids)
MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # product_id/kind/seed: what the photo is made from
        ("product_id", pa.string()),
        ("kind", pa.string()),  # severity (mild, medium, hard) or low-quality kind
        ("seed", pa.int64()),
        ("image", pa.string()),  # absolute path of the JPEG
        ("image_hash", pa.string()),
    ]
)


@dataclass(frozen=True)
class PhotoSpec:
    key: str
    product_id: str
    kind: str
    seed: int


@dataclass
class PhotoPool:
    """The built pool: row i is one photo with its source product, kind, file and vector."""

    product_ids: list[str]
    kinds: list[str]
    images: list[str]
    hashes: list[str]
    vectors: np.ndarray
    products: list[str]  # pooled products, most popular first
    build: dict = field(default_factory=dict)  # what the build did (counts, seconds)

    def __len__(self) -> int:
        return len(self.images)


def popularity_order(world, rows: dict[str, dict]) -> list[str]:
    """Product ids, most photographed first: a seeded draw that favours products with a
    known price (in the H&M data those are the ones people bought)."""
    pop = world.catalog.popularity
    ids = sorted(rows)
    rng = np.random.default_rng([world.photos.seed, 17])
    priced = np.array([rows[i].get("price") is not None for i in ids])
    weight = np.where(priced, max(pop.priced_boost, 1e-9), 1.0)
    score = np.log(weight) + pop.noise_sigma * rng.standard_normal(len(ids))
    return [ids[i] for i in np.argsort(-score, kind="stable")]


def pool_specs(world, products: list[str]) -> list[PhotoSpec]:
    """The photos the world asks for, in a fixed order: per product `per_product` photos of
    severities drawn from the mix, then the low-quality photos of random pooled products."""
    spec = world.photos
    sev_names = [s for s in SEVERITIES if s in spec.severity]  # canonical order: keys' order
    # in the file must not change which photos get built
    sev_p = np.array([spec.severity[s] for s in sev_names], dtype=float)
    sev_p /= sev_p.sum()
    out: list[PhotoSpec] = []
    for pid in products:
        rng = np.random.default_rng([spec.seed, zlib.crc32(pid.encode())])
        for _ in range(spec.per_product):
            kind = sev_names[rng.choice(len(sev_names), p=sev_p)]
            seed = int(rng.integers(2**31))
            out.append(PhotoSpec(f"{pid}/{kind}/{seed}", pid, kind, seed))
    lq = spec.low_quality
    if lq.photos and lq.rate > 0:
        names = [k for k in LOW_QUALITY_KINDS if k in lq.kinds]
        p = np.array([lq.kinds[k] for k in names], dtype=float)
        p /= p.sum()
        rng = np.random.default_rng([spec.seed, _LQ_STREAM])
        for _ in range(lq.photos):
            kind = names[rng.choice(len(names), p=p)]
            pid = products[int(rng.integers(len(products)))]
            seed = int(rng.integers(2**31))
            out.append(PhotoSpec(f"{pid}/{kind}/{seed}", pid, kind, seed))
    return out


def _read_manifest(folder: Path) -> pd.DataFrame:
    shards = sorted(folder.glob("part-*.parquet")) if folder.exists() else []
    if not shards:
        return pd.DataFrame(columns=MANIFEST_SCHEMA.names)
    frame = pd.concat([pq.read_table(s).to_pandas() for s in shards], ignore_index=True)
    return frame.drop_duplicates("key", keep="last")


def _photo_bytes(spec: PhotoSpec, image_path: str) -> bytes:
    image = load_image(image_path)
    if spec.kind in ("mild", "medium", "hard"):
        return query_photo_bytes(image, spec.kind, spec.seed)
    low = make_low_quality(image, spec.kind, spec.seed)  # already JPEG round-tripped
    buf = io.BytesIO()
    low.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_pool(
    world, warehouse: Warehouse, rows: dict[str, dict], encoder=None, threads: int = 2
) -> PhotoPool:
    """Build (or resume, or just load) the world's photo pool over the catalog `rows`.

    `rows` maps product_id -> catalog row (only indexed products); `encoder` must be the
    search engine's, so pool vectors live in the index's space.
    """
    import time

    started = time.perf_counter()
    products = popularity_order(world, rows)[: world.photos.products]
    specs = pool_specs(world, products)
    photo_dir = warehouse.artifact_dir(*PHOTO_DIR)
    manifest_dir = warehouse.artifact_dir(*MANIFEST_DIR)
    embedder = ImageEmbedder(warehouse, encoder)
    done = {r.key: (r.image, r.image_hash) for r in _read_manifest(manifest_dir).itertuples()}
    todo = [
        s
        for s in specs
        if s.key not in done
        or done[s.key][1] not in embedder.cache
        or not warehouse.resolve(done[s.key][0]).exists()
    ]
    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for chunk in progress(chunks, total=len(chunks), description="building photo pool"):
            blobs = list(
                pool.map(lambda s: _photo_bytes(s, rows[s.product_id]["image_path"]), chunk)
            )
            hashes = [content_hash(b) for b in blobs]
            paths = [photo_dir / f"{h}.jpg" for h in hashes]
            for path, blob in zip(paths, blobs, strict=True):
                _write_file(path, blob)
            new = [(h, b) for h, b in zip(hashes, blobs, strict=True) if h not in embedder.cache]
            seen: set[str] = set()
            new = [(h, b) for h, b in new if not (h in seen or seen.add(h))]
            vectors = []
            for i in range(0, len(new), ENCODE_BATCH):
                images = [load_image(b) for _, b in new[i : i + ENCODE_BATCH]]
                vectors.append(embedder.encoder.encode(images))
            if new:
                embedder.cache.add([h for h, _ in new], np.concatenate(vectors))
            table = pa.table(
                {
                    "key": [s.key for s in chunk],
                    "product_id": [s.product_id for s in chunk],
                    "kind": [s.kind for s in chunk],
                    "seed": [s.seed for s in chunk],
                    "image": [warehouse.relative(p) for p in paths],
                    "image_hash": hashes,
                },
                schema=MANIFEST_SCHEMA,
            )
            shard = manifest_dir / f"part-{uuid.uuid4().hex}.parquet"
            tmp = shard.with_name(f".{shard.name}.tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, shard)
    manifest = _read_manifest(manifest_dir).set_index("key").loc[[s.key for s in specs]]
    hashes = manifest["image_hash"].tolist()
    return PhotoPool(
        product_ids=[s.product_id for s in specs],
        kinds=[s.kind for s in specs],
        images=[str(warehouse.resolve(p)) for p in manifest["image"]],
        hashes=hashes,
        vectors=embedder.cache.get(hashes)
        if hashes
        else np.zeros((0, embedder.encoder.dim), np.float32),
        products=products,
        build={
            "photos": len(specs),
            "built": len(todo),
            "seconds": round(time.perf_counter() - started, 2),
        },
    )
