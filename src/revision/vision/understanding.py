"""Query understanding: what a photo shows, read once and shared by mining and the tools.

`QueryUnderstanding` owns everything that reads a query photo: the attribute heads, the image
and colour-histogram encoders with their embedding caches, and an OCR reader. `Photo` is the
per-request memo both consumers hold: each fact about the photo (embedding, histogram, the
heads' reading, OCR text) is computed at most once, however many rules or tools ask.

The heads read the encoder's *raw* embedding beside the colour histogram (`head_features`),
never the search-space vector a projection adapter makes; the nearest-neighbour vote searches
with the search-space vector. A `Photo` keeps the two as separate fields so they cannot be
swapped. Trade-off: the vote needs a catalog and a vector index, which vision must not know,
so the caller hands them in as plain arrays and a search callable (`CatalogLabels`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from revision.errors import MissingArtifactError
from revision.vision.attributes import UNKNOWN, AttributeHeads, heads_path
from revision.vision.embeddings import EmbeddingCache
from revision.vision.encoder import ImageEncoder, get_image_encoder
from revision.vision.images import ImageInput, load_image
from revision.vision.ocr import OcrReader

if TYPE_CHECKING:
    from PIL import Image

    from revision.warehouse import Warehouse

SAME_ITEM_SCORE = 0.9  # a catalog product this close to the query is taken as the item itself
NEIGHBOURS = 20  # catalog products in the nearest-neighbour vote
_UNSURE = ("", "unknown")


def head_features(embedding: np.ndarray, histogram: np.ndarray) -> np.ndarray:
    """The attribute heads' input: the encoder's raw embedding beside the colour histogram
    (one photo: 1-d arrays; a batch: one row per photo)."""
    return np.concatenate([np.asarray(embedding), np.asarray(histogram)], axis=-1)


@dataclass(frozen=True)
class HeadReading:
    """The attribute heads' probabilities for one photo: per attribute, one per class."""

    classes: Mapping[str, Sequence[str]]
    probabilities: Mapping[str, np.ndarray]

    def best(self, attr: str) -> tuple[str, float]:
        """(likeliest label, its probability); (`UNKNOWN`, 0.0) for an attribute the heads
        were not trained on."""
        p = self.probabilities.get(attr)
        if p is None:
            return UNKNOWN, 0.0
        j = int(p.argmax())
        return self.classes[attr][j], float(p[j])

    def as_dict(self) -> dict[str, tuple[str, float]]:
        """{attribute: (likeliest label, probability)} for every attribute the heads know."""
        return {attr: self.best(attr) for attr in self.probabilities}


@dataclass(frozen=True)
class CatalogLabels:
    """What the nearest-neighbour vote needs from a catalog, without vision knowing one.

    `codes[attr]` holds a label code per indexed product (-1: none), `vocab[attr]` the labels
    by code, and `search(vector, k)` returns `(scores, rows)` of shape (1, k) like a FAISS
    index (rows -1 where fewer exist). `code(attr, label)` maps a head's label to a code; by
    default an exact, case-insensitive match.
    """

    codes: Mapping[str, np.ndarray]
    vocab: Mapping[str, Sequence[str]]
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
    code: Callable[[str, str], int] | None = None
    _lookup: dict[str, dict[str, int]] = field(default_factory=dict, repr=False, compare=False)

    def code_of(self, attr: str, label: str) -> int:
        if self.code is not None:
            return self.code(attr, label)
        if attr not in self._lookup:
            self._lookup[attr] = {str(v).lower(): i for i, v in enumerate(self.vocab[attr])}
        return self._lookup[attr].get(str(label).lower(), -1)


class OcrStore(Protocol):
    """Where OCR text outlives a process (e.g. a warehouse table), by photo content hash."""

    def get(self, key: str) -> str | None: ...

    def put(self, texts: Mapping[str, str]) -> None: ...


class Photo:
    """One query photo's understanding, each part computed at most once (thread-safe).

    `embedding` is the encoder's raw embedding (the heads' input); `vector` is the search-space
    vector (the neighbour vote's input), which is the embedding unless an adapter projected it.
    `key` is the photo's content hash when known: the owner's caches are keyed by it.
    """

    def __init__(
        self,
        owner: QueryUnderstanding,
        image: ImageInput | Image.Image | None = None,
        *,
        key: str | None = None,
        embedding: np.ndarray | None = None,
        vector: np.ndarray | None = None,
    ):
        self.owner = owner
        self.key = key
        self.source = image
        self.error: Exception | None = None  # why the photo could not be read, if it could not
        self._memo: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        if embedding is not None:
            self._memo["embedding"] = np.asarray(embedding)
        self._vector = vector

    def once(self, name: str, compute: Callable[[], Any]) -> Any:
        """`compute()` the first time `name` is asked for, the memo after (a consumer may keep
        its own per-request facts here, e.g. similarities to the catalog)."""
        with self._guard:
            if name in self._memo:
                return self._memo[name]
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:  # one computation per name; other names proceed meanwhile
            with self._guard:
                if name in self._memo:
                    return self._memo[name]
            value = compute()
            with self._guard:
                self._memo[name] = value
            return value

    def bind(self, *, embedding: np.ndarray, vector: np.ndarray | None = None) -> None:
        """Hand over embeddings computed elsewhere (the search encoded the photo after this
        memo was made): the raw `embedding` for the heads, the search-space `vector`."""
        self._set("embedding", np.asarray(embedding))
        if vector is not None:
            self._vector = vector

    def known(self, name: str) -> bool:
        with self._guard:
            return name in self._memo

    def _get(self, name: str) -> Any:
        with self._guard:
            return self._memo[name]

    def _set(self, name: str, value: Any) -> None:
        with self._guard:
            self._memo.setdefault(name, value)

    @property
    def image(self) -> Image.Image:
        """The photo, decoded on first use."""
        if self.source is None:
            raise ValueError("this query came without a photo")
        return self.once("image", lambda: load_image(self.source))

    def embedding(self) -> np.ndarray:
        """The encoder's raw embedding (cached by `key` when the owner keeps a cache)."""
        return self.once("embedding", lambda: self.owner._one(self, "embedding"))

    @property
    def vector(self) -> np.ndarray:
        """The search-space vector (the raw embedding when no adapter projected it)."""
        return self._vector if self._vector is not None else self.embedding()

    def histogram(self) -> np.ndarray:
        """The foreground colour histogram (cached by `key` when the owner keeps a cache)."""
        return self.once("histogram", lambda: self.owner._one(self, "histogram"))

    def features(self) -> np.ndarray:
        """The heads' input: [raw embedding, colour histogram]."""
        return head_features(self.embedding(), self.histogram())

    def reading(self) -> HeadReading | None:
        """The attribute heads' probabilities; None without trained heads or without a photo."""

        def read() -> HeadReading | None:
            heads = self.owner.heads
            if heads is None or self.source is None:
                return None
            return self.owner.read_features(heads, self.features()[None, :])[0]

        return self.once("reading", read)

    def ocr_text(self) -> str:
        """Text printed on the photo, whitespace collapsed ("" without a photo or legible text)."""
        if self.source is None:
            return ""
        return self.once("ocr", lambda: self.owner.read_text([self])[0])


class QueryUnderstanding:
    """The attribute heads, image encoders, embedding caches and OCR reader, owned together.

    `heads` is trained heads (an `AttributeHeads`), or a path to follow: loaded on first use and
    reloaded when the file changes (a retrain), None while it is absent. With `cache_dir`, raw
    embeddings and colour histograms are cached there by photo content hash (one folder per
    encoder, shared with `ImageEmbedder`). OCR reads photos downscaled to `ocr_side` pixels on
    their longer side (None: full size) and keeps text in `ocr_store` when given. Encoders and
    the OCR reader are made on first use unless given.
    """

    def __init__(
        self,
        heads: AttributeHeads | str | Path | None = None,
        *,
        encoder: ImageEncoder | None = None,
        hist_encoder: ImageEncoder | None = None,
        cache_dir: str | Path | None = None,
        ocr_side: int | None = None,
        ocr_store: OcrStore | None = None,
        ocr_min_score: float = 0.5,
        ocr_reader: OcrReader | None = None,
        neighbours: int = NEIGHBOURS,
    ):
        self._heads_path = Path(heads) if isinstance(heads, str | Path) else None
        self._heads = None if self._heads_path is not None else heads
        self._heads_stamp: float | None = None
        self._encoder = encoder
        self._hist_encoder = hist_encoder
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._caches: dict[str, EmbeddingCache] = {}
        self.ocr_side = ocr_side
        self.ocr_store = ocr_store
        self.ocr_min_score = ocr_min_score
        self._ocr = ocr_reader
        self.neighbours = neighbours
        self._lock = threading.RLock()

    @classmethod
    def for_warehouse(
        cls,
        warehouse: Warehouse,
        *,
        heads: AttributeHeads | None = None,
        require_heads: bool = False,
        cached: bool = False,
        **options: Any,
    ) -> QueryUnderstanding:
        """Understanding over a warehouse's trained heads (`revision vision train-attributes`).

        `require_heads` loads them now and keeps them (a missing file raises
        `MissingArtifactError` naming the command); otherwise the heads file is followed.
        `cached` keeps embeddings in the warehouse's image-embedding cache.
        """
        if heads is None:
            path = heads_path(warehouse)
            heads = AttributeHeads.load(path) if require_heads else path
        if cached:
            options["cache_dir"] = warehouse.artifact_dir("cache", "image_embeddings")
        return cls(heads, **options)

    # -- what it owns ----------------------------------------------------------------------------
    @property
    def heads(self) -> AttributeHeads | None:
        if self._heads_path is None:
            return self._heads
        try:
            stamp = self._heads_path.stat().st_mtime
        except FileNotFoundError:
            return None
        with self._lock:
            if stamp != self._heads_stamp:
                self._heads = AttributeHeads.load(self._heads_path)
                self._heads_stamp = stamp
            return self._heads

    def require_heads(self) -> AttributeHeads:
        heads = self.heads
        if heads is None:
            raise MissingArtifactError(
                f"no attribute heads at {self._heads_path}: run "
                "`revision vision train-attributes` first"
            )
        return heads

    @property
    def encoder(self) -> ImageEncoder:
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = get_image_encoder()
        return self._encoder

    @property
    def hist_encoder(self) -> ImageEncoder:
        if self._hist_encoder is None:
            with self._lock:
                if self._hist_encoder is None:
                    self._hist_encoder = get_image_encoder("colour-hist")
        return self._hist_encoder

    @property
    def ocr(self) -> OcrReader:
        if self._ocr is None:
            with self._lock:
                if self._ocr is None:
                    self._ocr = OcrReader(min_score=self.ocr_min_score)
        return self._ocr

    def _encoder_for(self, part: str) -> ImageEncoder:
        return self.encoder if part == "embedding" else self.hist_encoder

    def cache(self, part: str) -> EmbeddingCache | None:
        """The cache of "embedding" or "histogram" vectors, None without a `cache_dir`."""
        if self.cache_dir is None:
            return None
        encoder = self._encoder_for(part)
        with self._lock:
            if part not in self._caches:
                self._caches[part] = EmbeddingCache(self.cache_dir / encoder.name, encoder.dim)
            return self._caches[part]

    def warm_up(self) -> None:
        """Load the heads and run them once, outside any request's deadline."""
        heads = self.heads
        if heads is not None:
            heads.predict(np.zeros((1, len(heads.mean_)), np.float32))

    # -- photos ------------------------------------------------------------------------------------
    def photo(
        self,
        image: ImageInput | Image.Image | None = None,
        *,
        key: str | None = None,
        embedding: np.ndarray | None = None,
        vector: np.ndarray | None = None,
    ) -> Photo:
        """A memo for one query photo (see `Photo`)."""
        return Photo(self, image, key=key, embedding=embedding, vector=vector)

    def read(self, photos: Sequence[Photo]) -> None:
        """Encode what the caches lack and run the heads once over the whole batch.

        A photo that cannot be decoded or encoded keeps the reason in `photo.error` and is
        skipped; the others go on. Requires trained heads.
        """
        heads = self.require_heads()
        for part in ("embedding", "histogram"):
            todo = [p for p in photos if p.error is None and not p.known(part)]
            for p, got in zip(todo, self._vectors(todo, part), strict=True):
                if isinstance(got, Exception):
                    p.error = got
                else:
                    p._set(part, got)
        todo = [p for p in photos if p.error is None and not p.known("reading")]
        if todo:
            x = head_features(
                np.stack([p.embedding() for p in todo]), np.stack([p.histogram() for p in todo])
            )
            for p, reading in zip(todo, self.read_features(heads, x), strict=True):
                p._set("reading", reading)

    @staticmethod
    def read_features(heads: AttributeHeads, features: np.ndarray) -> list[HeadReading]:
        """One `HeadReading` per row of `features` (see `head_features`)."""
        probs = heads.predict_proba(features)
        return [
            HeadReading(heads.classes_, {attr: p[row] for attr, p in probs.items()})
            for row in range(len(features))
        ]

    def _one(self, photo: Photo, part: str) -> np.ndarray:
        (got,) = self._vectors([photo], part)
        if isinstance(got, Exception):
            raise got
        return got

    def _vectors(self, photos: Sequence[Photo], part: str) -> list[np.ndarray | Exception]:
        """`part` ("embedding" or "histogram") of each photo: from the cache by key, else
        encoded (once per distinct key) and added to the cache in one shard."""
        cache = self.cache(part)
        encoder = self._encoder_for(part)
        out: list[np.ndarray | Exception | None] = [None] * len(photos)
        groups: dict[object, list[int]] = {}
        for i, p in enumerate(photos):
            if cache is not None and p.key is not None and p.key in cache:
                out[i] = cache.get([p.key])[0]
            else:
                groups.setdefault(p.key if p.key is not None else id(p), []).append(i)
        new_keys: list[str] = []
        new_vectors: list[np.ndarray] = []
        for group in groups.values():
            try:
                vector = encoder.encode([photos[group[0]].image])[0]
            except Exception as exc:  # the same bytes fail the same way: the whole group
                for i in group:
                    out[i] = exc
                continue
            for i in group:
                out[i] = vector
            if photos[group[0]].key is not None:
                new_keys.append(photos[group[0]].key)
                new_vectors.append(vector)
        if cache is not None and new_keys:
            with self._lock:
                cache.add(new_keys, np.stack(new_vectors))
        return out  # type: ignore[return-value]

    # -- OCR ------------------------------------------------------------------------------------
    def read_text(self, photos: Sequence[Photo]) -> list[str]:
        """Printed text per photo, whitespace collapsed: from the photo's memo, else the store
        by key, else read (downscaled to `ocr_side`) and put in the store in one go. A photo
        that cannot be decoded gets "" and keeps the reason in `photo.error`."""
        out: list[str] = []
        new: dict[str, str] = {}
        for p in photos:
            if p.known("ocr"):
                out.append(p._get("ocr"))
                continue
            stored = self.ocr_store.get(p.key) if self.ocr_store and p.key else None
            if stored is None and p.key is not None:
                stored = new.get(p.key)
            if stored is None:
                try:
                    image = p.image
                except Exception as exc:
                    p.error = exc
                    out.append("")
                    continue
                if self.ocr_side:
                    image = image.copy()
                    image.thumbnail((self.ocr_side, self.ocr_side))  # cost grows with pixels
                stored = " ".join(self.ocr.text(image).split())
                if p.key is not None:
                    new[p.key] = stored
            p._set("ocr", stored)
            out.append(stored)
        if new and self.ocr_store is not None:
            with self._lock:
                self.ocr_store.put(new)
        return out

    # -- attributes over a catalog --------------------------------------------------------------
    def neighbour_votes(
        self, vector: np.ndarray, labels: CatalogLabels, k: int | None = None
    ) -> tuple[dict[str, np.ndarray], bool]:
        """Per attribute, the similarity-weighted label distribution of the nearest catalog
        products; when the nearest is the item itself (score >= SAME_ITEM_SCORE), its own
        labels with that score. Returns (distributions, whether the item was found)."""
        scores, rows = labels.search(vector, k or self.neighbours)
        keep = rows[0] >= 0
        scores, rows = scores[0][keep], rows[0][keep]
        out: dict[str, np.ndarray] = {}
        if not len(rows):
            return out, False
        exact = bool(scores[0] >= SAME_ITEM_SCORE)
        if exact:
            weights = np.zeros(len(rows))
            weights[0] = 1.0
        else:
            weights = np.maximum(scores, 0) ** 4
        for attr, all_codes in labels.codes.items():
            codes = all_codes[rows]
            ok = codes >= 0
            if not ok.any():
                continue
            dist = np.bincount(codes[ok], weights=weights[ok], minlength=len(labels.vocab[attr]))
            total = dist.sum()
            if total > 0:
                out[attr] = dist / total * (float(scores[0]) if exact else 1.0)
        return out, exact

    def attributes(self, photo: Photo, labels: CatalogLabels) -> dict[str, tuple[str, float]]:
        """{attribute: (catalog label, confidence)}: heads and neighbours, each where it is
        stronger (measured on 120 query photos). Colour and pattern come from the heads (they
        see a colour histogram; ImageNet neighbours are colour-blind), type and audience from
        the average of the heads' and the neighbours' distributions; and when the nearest
        product is the item itself, its own labels for everything but colour (its colour
        variants embed almost alike)."""
        votes, exact = self.neighbour_votes(photo.vector, labels)
        out: dict[str, tuple[str, float]] = {}
        for attr, dist in votes.items():
            if dist.sum() > 0:
                best = int(dist.argmax())
                out[attr] = (labels.vocab[attr][best], float(dist[best]))
        reading = photo.reading()
        if reading is None:
            return out
        for attr, p in reading.probabilities.items():
            if attr not in labels.codes or (exact and attr != "colour"):
                continue
            dist = np.zeros(len(labels.vocab[attr]))
            for j, label in enumerate(reading.classes[attr]):
                code = labels.code_of(attr, label)
                if code >= 0:
                    dist[code] += p[j]
            if attr not in ("colour", "pattern") and attr in votes:
                dist = (dist + votes[attr]) / 2
            if dist.sum() > 0:
                best = int(dist.argmax())
                out[attr] = (labels.vocab[attr][best], float(dist[best]))
        return out

    @staticmethod
    def describe(attributes: Mapping[str, tuple[str, float]]) -> str:
        """A short text query for a photo: colour, pattern (unless plain), type, audience.

        >>> QueryUnderstanding.describe(
        ...     {"colour": ("Black", 0.9), "pattern": ("Stripe", 0.7), "category": ("Top", 0.8)}
        ... )
        'Black Stripe Top'
        """
        parts = [attributes.get("colour", ("",))[0]]
        pattern = attributes.get("pattern", ("",))[0]
        if pattern.lower() not in ("solid", *_UNSURE):
            parts.append(pattern)
        parts.append(attributes.get("category", ("",))[0])
        parts.append(attributes.get("index_group", ("",))[0])
        return " ".join(p for p in parts if p and p.lower() != "unknown")
