"""Catalog attributes as numpy arrays aligned with the vector index, built once per engine.

Tools run on the request's hot path, where a pandas row lookup costs more than the whole
vector search; so every attribute a tool compares (colour, type, pattern, department, index
group, price, variant group) is an integer code array over index rows, and a tool works with
row numbers and vectorised comparisons only. The arrays also own the engine's query
understanding (`revision.vision`'s heads and encoders), handed the catalog's label codes and
the index as plain arrays and a search callable.
"""

from __future__ import annotations

import re
import threading
import weakref
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from revision.vision.understanding import CatalogLabels, QueryUnderstanding

if TYPE_CHECKING:
    from revision.search.engine import SearchEngine

ATTRIBUTES = ("colour", "category", "pattern", "department", "index_group")
MISSING = -1  # code of an absent label

SYNONYMS = {
    "colour": {"gray": "grey", "color": "colour", "navy": "dark blue", "navy blue": "dark blue"},
    "pattern": {
        "striped": "stripe",
        "stripes": "stripe",
        "checked": "check",
        "plaid": "check",
        "dotted": "dot",
        "polka dot": "dot",
        "polka dots": "dot",
        "plain": "solid",
        "printed": "all over pattern",
    },
    "index_group": {
        "women": "ladieswear",
        "womens": "ladieswear",
        "women's": "ladieswear",
        "womenswear": "ladieswear",
        "ladies": "ladieswear",
        "men": "menswear",
        "mens": "menswear",
        "men's": "menswear",
        "kids": "baby/children",
        "children": "baby/children",
        "childrenswear": "baby/children",
        "kidswear": "baby/children",
        "baby": "baby/children",
        "babywear": "baby/children",
        "sports": "sport",
        "sportswear": "sport",
    },
}


def matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """`matrix @ vector` without BLAS: a threaded OpenBLAS gemv waits ~12 ms for its second
    thread on 2 busy cores, while einsum's single-threaded loop takes ~0.1 ms per million
    multiply-adds."""
    return np.einsum("ij,j->i", matrix, vector)


def squash(text: str) -> str:
    """Lower case with everything but letters and digits removed (OCR drops spaces)."""
    return re.sub(r"[\W_]+", "", text.lower())


class CatalogArrays:
    """Per index row: attribute codes, price (NaN when unknown), variant group, texts."""

    def __init__(self, engine: SearchEngine):
        self.engine = engine
        ids = list(engine.index.ids_)
        products = engine.products.reindex(ids)
        self.ids = np.array(ids, dtype=object)
        self.n = len(ids)
        self.codes: dict[str, np.ndarray] = {}
        self.vocab: dict[str, list[str]] = {}
        self._lookup: dict[str, dict[str, int]] = {}
        for attr in ATTRIBUTES:
            if attr not in products:
                self.codes[attr] = np.full(self.n, MISSING, np.int32)
                self.vocab[attr] = []
                self._lookup[attr] = {}
                continue
            codes, uniques = products[attr].factorize(sort=True)
            self.codes[attr] = codes.astype(np.int32)
            self.vocab[attr] = [str(u) for u in uniques]
            self._lookup[attr] = {v.lower(): i for i, v in enumerate(self.vocab[attr])}
        self.price = products["price"].to_numpy(dtype=np.float64, na_value=np.nan)
        groups = products["variant_group"].fillna("").astype(str)
        gcodes, guniques = groups.factorize()
        self.group = gcodes.astype(np.int64)
        self.group_names = [str(g) for g in guniques]
        self._group_lookup = {g: i for i, g in enumerate(self.group_names) if g}
        order = np.argsort(self.group, kind="stable")
        bounds = np.flatnonzero(np.diff(self.group[order])) + 1
        self._group_rows = np.split(order, bounds)  # group code -> rows (codes are 0..n-1)
        self.titles = products["title"].fillna("").astype(str).tolist()
        self.descriptions = products["description"].fillna("").astype(str).tolist()
        self._rows_cache: dict[tuple[str, int], np.ndarray] = {}
        self._lock = threading.Lock()
        # Query understanding: the warehouse's attribute heads (followed, so a retrain is
        # picked up), the engine's image encoder, an OCR reader for full-size photos; and the
        # catalog as the nearest-neighbour vote sees it (label codes, labels, the index).
        self.understanding = QueryUnderstanding.for_warehouse(
            engine.warehouse, encoder=engine.encoder
        )
        self.labels = CatalogLabels(
            codes=self.codes, vocab=self.vocab, search=engine.index.search, code=self.code
        )

    # -- lookups --------------------------------------------------------------------------------
    def rows_of(self, product_ids) -> np.ndarray:
        row_of = self.engine.row_of
        return np.fromiter((row_of[p] for p in product_ids), np.int64, len(product_ids))

    def code(self, attr: str, value: str | None) -> int:
        """The code of a catalog value (case-insensitive, a few synonyms); -1 if unknown."""
        if value is None:
            return MISSING
        key = " ".join(str(value).lower().split())
        lookup = self._lookup.get(attr, {})
        if key in lookup:
            return lookup[key]
        key = SYNONYMS.get(attr, {}).get(key, key)
        return lookup.get(key, MISSING)

    def canonical(self, attr: str, value: str | None) -> str | None:
        c = self.code(attr, value)
        return self.vocab[attr][c] if c >= 0 else None

    def label(self, attr: str, row: int) -> str | None:
        c = int(self.codes[attr][row])
        return self.vocab[attr][c] if c >= 0 else None

    def rows_with(self, attr: str, code: int) -> np.ndarray:
        """Rows whose `attr` has `code` (cached: the supplement search scans them)."""
        key = (attr, code)
        rows = self._rows_cache.get(key)
        if rows is None:
            rows = np.flatnonzero(self.codes[attr] == code)
            with self._lock:
                self._rows_cache[key] = rows
        return rows

    def group_of(self, row: int) -> str:
        return self.group_names[self.group[row]]

    def group_rows(self, name_or_code) -> np.ndarray:
        code = (
            name_or_code
            if isinstance(name_or_code, int | np.integer)
            else (self._group_lookup.get(str(name_or_code), -1))
        )
        if code < 0 or not self.group_names[code]:
            return np.zeros(0, np.int64)
        return self._group_rows[code]

    # -- similarity ------------------------------------------------------------------------------
    def nearest(
        self, vector: np.ndarray, rows: np.ndarray, k: int, exclude=(), scores=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `k` rows of `rows` most similar to `vector`: (rows, cosine scores), best first.
        `scores` may hold the query's similarity to every row (then nothing is recomputed)."""
        if len(rows) == 0 or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if len(exclude):
            rows = rows[~np.isin(rows, np.asarray(list(exclude), dtype=np.int64))]
        sims = scores[rows] if scores is not None else self.similarity(vector, rows)
        if len(rows) > k:
            top = np.argpartition(-sims, k - 1)[:k]
            rows, sims = rows[top], sims[top]
        order = np.argsort(-sims, kind="stable")
        return rows[order], sims[order]

    def similarity(self, vector: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarity of `vector` to `rows` (default: every row)."""
        vectors = self.engine.index.vectors_
        return matvec(vectors if rows is None else vectors[rows], vector)

    @cached_property
    def search_text(self) -> list[str]:
        """Squashed title + description per row (brand and printed-text matching)."""
        return [squash(f"{t} {d}") for t, d in zip(self.titles, self.descriptions, strict=True)]

    def text_matches(self, text: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask over `rows` (default: all) whose title or description contain `text`."""
        needle = squash(text)
        texts = self.search_text
        rows = np.arange(self.n) if rows is None else rows
        if not needle:
            return np.zeros(len(rows), bool)
        return np.fromiter((needle in texts[r] for r in rows), bool, len(rows))

    @cached_property
    def price_quantiles(self) -> dict[int, np.ndarray]:
        """Per category code: the 1/3 and 2/3 price quantiles of its priced products
        (category -1 holds the whole catalog's)."""
        out: dict[int, np.ndarray] = {}
        priced = ~np.isnan(self.price)
        if priced.any():
            out[MISSING] = np.quantile(self.price[priced], [1 / 3, 2 / 3])
        cats = self.codes["category"]
        for code in np.unique(cats[priced]):
            prices = self.price[priced & (cats == code)]
            if len(prices) >= 3:
                out[int(code)] = np.quantile(prices, [1 / 3, 2 / 3])
        return out

    def tiers(self, rows: np.ndarray) -> np.ndarray:
        """Price tier per row: 0 low, 1 mid, 2 high by its category's quantiles; -1 unpriced."""
        out = np.full(len(rows), -1, np.int8)
        prices = self.price[rows]
        cats = self.codes["category"][rows]
        quantiles = self.price_quantiles
        for i, (p, c) in enumerate(zip(prices, cats, strict=True)):
            if np.isnan(p):
                continue
            q = quantiles.get(int(c), quantiles.get(MISSING))
            if q is not None:
                out[i] = int(np.searchsorted(q, p, side="right"))
        return out


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def catalog_arrays(engine: SearchEngine) -> CatalogArrays:
    """The engine's `CatalogArrays`, built on first use and kept as long as the engine lives."""
    arrays = _CACHE.get(engine)
    if arrays is None:
        with _CACHE_LOCK:
            arrays = _CACHE.get(engine)
            if arrays is None:
                arrays = _CACHE[engine] = CatalogArrays(engine)
    return arrays
