"""External textual search: a text query over catalog text embeddings, fused with the visual list.

The query text comes from the signal's Info, or is written from what the query photo shows
(predicted colour, pattern, type and audience; optionally OCR text). Catalog passages (title,
type, colour, pattern, audience and the description's first sentences) are embedded through
`revision.text` (multilingual e5, passage prefix; queries with the query prefix) by an explicit
step, `revision index build`, never inside a request: a tool whose text index is missing or
out of date fails at warm-up (plan validation) with an error naming that command. The build is
resumable (every chunk of passages lands in the text-embedding cache as it is encoded, so a
killed build continues where it stopped) and keyed per passage, so a catalog update re-embeds
only what changed. Visual and text rankings are merged by reciprocal-rank fusion (Cormack et
al., 2009): scores on different scales never need calibrating, and an item both lists agree on
rises to the top.
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from revision.errors import ConfigError, MissingArtifactError
from revision.progress import progress
from revision.text.embed import (
    CachedEncoder,
    E5Encoder,
    E5Model,
    EmbeddingCache,
    MemoEncoder,
    MiniLMEncoder,
    TextEncoder,
)
from revision.tools._base import Component, ToolContext, ToolStage
from revision.tools.builtin._common import new_hits
from revision.tools.catalog import CatalogArrays, matvec
from revision.tools.info import Info

RRF_K = 60  # the fusion constant of the original paper
DEFAULT_ENCODER = "e5"  # multilingual: a Chinese or OCR'd query still meets English passages
BUILD_COMMAND = "revision index build"
CHUNK = 512  # passages per cache write: what a killed build can lose


def text_index_path(encoder: str = DEFAULT_ENCODER) -> tuple[str, ...]:
    """The text index artifact of an encoder, under the warehouse's artifacts."""
    return ("tools", "text_index", f"{encoder}-passages.npz")


TEXT_INDEX = text_index_path()


@dataclass
class TextModels:
    """The passage and query encoders of one text-index encoder (one model between them)."""

    passages: TextEncoder
    queries: TextEncoder


def text_models(encoder: str = DEFAULT_ENCODER, threads: int | None = None) -> TextModels:
    """e5: `passage: ` for the catalog, `query: ` for searches, one single-threaded engine by
    default (on 2 shared cores a second thread only contends with the search beside it);
    minilm: the same model on both sides (English only, ~4x faster per passage)."""
    if encoder == "e5":
        model = E5Model(threads)
        return TextModels(E5Encoder(prefix="passage", model=model), E5Encoder(model=model))
    if encoder == "minilm":
        model = MiniLMEncoder()
        return TextModels(model, model)
    raise ConfigError(f"unknown text-index encoder {encoder!r}; valid: e5, minilm")


def passage(catalog: CatalogArrays, row: int, max_chars: int = 64) -> str:
    """The text a catalog product is found by: title, labels and the description's opening
    (its first clause names the garment and fabric; e5 costs ~1.5 ms a token on one core)."""
    parts = [catalog.titles[row]]
    for attr in ("category", "colour", "pattern", "index_group"):
        label = catalog.label(attr, row)
        if label and label.lower() not in ("unknown", "solid"):
            parts.append(label)
    desc = catalog.descriptions[row].split(". ")[0]
    if len(desc) > max_chars:
        desc = desc[:max_chars].rsplit(" ", 1)[0].rstrip(",;")
    return ". ".join(p.strip() for p in [", ".join(parts), desc] if p.strip())


def _key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


class TextIndex:
    """Passage embeddings of the catalog, one row per vector-index row."""

    def __init__(self, vectors: np.ndarray, stats: dict[str, Any]):
        self.vectors = vectors
        self.stats = stats

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = matvec(self.vectors, query)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        order = np.argsort(-scores[top], kind="stable")
        return top[order], scores[top][order]


def build_text_index(
    catalog: CatalogArrays,
    *,
    encoder: str = DEFAULT_ENCODER,
    show_progress: bool = True,
    chunk: int = CHUNK,
) -> TextIndex:
    """Embed every passage not already stored (in the artifact, else in the text-embedding
    cache) in chunks of `chunk`, each cached as it is done, and write the artifact: the
    explicit, resumable step behind `revision index build`."""
    warehouse = catalog.engine.warehouse
    path: Path = warehouse.artifact(*text_index_path(encoder))
    texts = [passage(catalog, r) for r in range(catalog.n)]
    keys = [_key(t) for t in texts]
    known: dict[bytes, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as stored:
            for k, v in zip(stored["keys"], stored["vectors"], strict=True):
                known[bytes(k)] = v
    missing = list({keys[i]: i for i in range(len(keys)) if keys[i] not in known}.values())
    started = time.perf_counter()
    cached = CachedEncoder(text_models(encoder).passages, EmbeddingCache(warehouse))
    starts = range(0, len(missing), chunk)
    if show_progress and missing:
        starts = progress(starts, total=len(starts), description="embedding catalog text")
    for start in starts:
        rows = missing[start : start + chunk]
        for i, v in zip(rows, cached.encode([texts[i] for i in rows]), strict=True):
            known[keys[i]] = v
    dim = next(iter(known.values())).shape[0] if known else 384
    vectors = np.zeros((catalog.n, dim), np.float32)
    for i, k in enumerate(keys):
        vectors[i] = known[k]
    build_s = time.perf_counter() - started
    if missing or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{threading.get_ident()}.tmp.npz")
        np.savez(tmp, keys=np.array(keys, dtype="S16"), vectors=vectors, encoder=encoder)
        tmp.replace(path)
    return TextIndex(
        vectors,
        {
            "passages": catalog.n,
            "embedded": cached.n_encoded,  # sent to the model now (not in artifact or cache)
            "reused": len(missing) - cached.n_encoded,  # from the cache (an interrupted build)
            "build_s": round(build_s, 2),
            "encoder": encoder,
        },
    )


def load_text_index(catalog: CatalogArrays, *, encoder: str = DEFAULT_ENCODER) -> TextIndex:
    """The catalog's text index as `revision index build` wrote it. Never builds: a missing
    index, or one whose passages no longer match the catalog, raises `MissingArtifactError`
    naming the command."""
    path: Path = catalog.engine.warehouse.artifact(*text_index_path(encoder))
    if not path.is_file():
        raise MissingArtifactError(
            f"no catalog text index at {path} (text search needs it): run `{BUILD_COMMAND}`"
        )
    with np.load(path) as stored:
        keys, vectors = stored["keys"], stored["vectors"]
    current = np.array([_key(passage(catalog, r)) for r in range(catalog.n)], dtype="S16")
    if len(keys) != len(current) or not np.array_equal(keys, current):
        same = len(keys) == len(current)
        changed = int((keys != current).sum()) if same else abs(len(keys) - catalog.n)
        raise MissingArtifactError(
            f"the catalog text index at {path} is out of date ({changed} of {catalog.n} "
            f"passages differ from the catalog's): run `{BUILD_COMMAND}`"
        )
    return TextIndex(np.asarray(vectors, np.float32), {"passages": catalog.n, "embedded": 0})


class CatalogTextSearch:
    """One catalog's text index with the query encoder that matches it (memoised: queries
    written from a photo's attributes repeat a lot)."""

    def __init__(self, catalog: CatalogArrays, encoder: str = DEFAULT_ENCODER):
        self.index = load_text_index(catalog, encoder=encoder)
        self.queries = MemoEncoder(text_models(encoder).queries)

    def warm_up(self) -> None:
        self.queries.encode(["warm up"])  # loads the model outside any request

    def search(self, text: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(self.queries.encode([text])[0], k)


class TextSearch(Component):
    name = "text_search"
    title = "External textual search"
    description = (
        "Search the catalog by words: a text query (from the signal, or written from the "
        "photo's colour, pattern, type and audience, or its printed text) over catalog text "
        "embeddings, merged with the visual results by reciprocal-rank fusion. Input: a short "
        "text. Output: results that match the photo and the words ranked first."
    )
    stage = ToolStage.RANK
    keywords = ("text", "textual", "description", "keyword", "keywords", "words", "external")
    extractable = frozenset({"text"})

    def __init__(self, encoder: str = DEFAULT_ENCODER) -> None:
        self.encoder = encoder
        self._searchers: weakref.WeakKeyDictionary[CatalogArrays, CatalogTextSearch] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def searcher(self, catalog: CatalogArrays) -> CatalogTextSearch:
        """The catalog's loaded text index and query encoder (raises `MissingArtifactError`
        when `revision index build` has not built the index)."""
        with self._lock:
            got = self._searchers.get(catalog)
            if got is None:
                got = self._searchers[catalog] = CatalogTextSearch(catalog, self.encoder)
            return got

    def run(
        self,
        ctx: ToolContext,
        text: str,
        k: int = 50,
        weight: float = 1.0,
        ocr: bool = False,
    ) -> None:
        """Fuse a text search with the visual candidates.

        Args:
            text: the text query, e.g. "black striped cotton t-shirt".
            k: how many text matches to fuse.
            weight: weight of the text ranking against the visual one (1 = equal).
            ocr: add the text printed on the query photo (OCR) to the query.
        """
        rows, _scores = (
            ctx.prefetched
            if ctx.prefetched is not None
            else self.prefetch(ctx, text=text, k=k, ocr=ocr)
        )
        cat = ctx.catalog
        candidates = ctx.search.candidates
        fused: dict[str, float] = {}
        for rank, hit in enumerate(candidates, start=1):
            fused[hit.product_id] = 1.0 / (RRF_K + rank)
        by_id = {h.product_id: h for h in candidates}
        new_rows = [r for r in rows if cat.ids[r] not in by_id]
        if new_rows:
            new_rows = np.asarray(new_rows, np.int64)
            sims = cat.similarity(ctx.query_vector, new_rows)
            for h in new_hits(ctx, new_rows, sims, self.name):
                by_id[h.product_id] = h
        for rank, r in enumerate(rows, start=1):
            pid = cat.ids[r]
            fused[pid] = fused.get(pid, 0.0) + weight / (RRF_K + rank)
        order = sorted(fused, key=lambda p: fused[p], reverse=True)
        ctx.notes.update(text=ctx.notes.get("text", text), added=len(new_rows))
        ctx.search.candidates = [by_id[p] for p in order]

    def prefetch(
        self, ctx: ToolContext, text: str, k: int = 50, weight: float = 1.0, ocr: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        if ocr:
            printed = ctx.query_info.ocr_text()
            text = f"{text} {printed}".strip()
        ctx.notes["text"] = text
        return self.searcher(ctx.catalog).search(text, k)

    def from_query(self, ctx: ToolContext, inputs: dict[str, Any]) -> dict[str, Any]:
        if "text" in inputs:
            return {}
        return {"text": ctx.query_info.description()}

    def from_info(self, info: Info) -> dict[str, Any]:
        text = info.text or info.raw
        return {"text": text} if text else {}

    def warm_up(self, catalog: CatalogArrays) -> None:
        """Load the text index (or fail naming `revision index build`) and the query model."""
        self.searcher(catalog).warm_up()
