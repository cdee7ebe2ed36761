"""The staged search pipeline: query -> recall -> filter -> rank -> display, with hooks.

Each stage does its default work, then runs its hooks in order. The default pipeline is pure
visual matching (what the paper calls the traditional system); tools make it more.
The relevance score of a request is the mean cosine similarity of the first four results, the
ones a user sees first; the online service later triggers on a low value.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from revision.errors import InputError
from revision.search._base import (
    VISUAL,
    Hit,
    Hook,
    Query,
    SearchContext,
    SearchRequest,
    SearchResponse,
    Stage,
)
from revision.search.engine import SearchEngine
from revision.vision.images import load_image

RELEVANCE_TOP = 4


def relevance(results: Sequence[Hit]) -> float:
    """Mean similarity of the first `RELEVANCE_TOP` results (0 when there are none)."""
    top = [h.score for h in results[:RELEVANCE_TOP]]
    return float(np.mean(top)) if top else 0.0


class SearchPipeline:
    def __init__(
        self,
        engine: SearchEngine,
        hooks: Mapping[Stage, Sequence[Hook]] | None = None,
        recall_k: int = 100,
    ):
        self.engine = engine
        self.recall_k = recall_k
        self.hooks: dict[Stage, list[Hook]] = {s: list((hooks or {}).get(s, ())) for s in Stage}

    @property
    def deterministic(self) -> bool:
        """Without hooks the same photo always gets the same response (a `Searcher` fact)."""
        return not any(self.hooks.values())

    def respond(self, request: SearchRequest) -> SearchResponse:
        """The `Searcher` entry point: a photo and/or its raw embedding, and who asked."""
        started = time.perf_counter()
        image, source = request.image, request.source
        if request.embedding is None and (
            isinstance(image, str | bytes) or hasattr(image, "__fspath__")
        ):
            source = source or (str(image) if not isinstance(image, bytes) else None)
            image = load_image(image)
        query = Query(
            source=source or "<image>",
            vector=None if request.embedding is None else np.asarray(request.embedding, np.float32),
            image=image if request.embedding is None else None,
            top_k=request.top_k,
            request_id=request.request_id,
            user_id=request.user_id,
        )
        return self.run(query, started)

    def with_hooks(self, hooks: Mapping[Stage, Sequence[Hook]]) -> SearchPipeline:
        """A new pipeline over the same engine with extra hooks appended per stage."""
        merged = {s: [*self.hooks[s], *hooks.get(s, ())] for s in Stage}
        return SearchPipeline(self.engine, merged, self.recall_k)

    # -- entry points --------------------------------------------------------------------------
    def search(
        self, image, *, top_k: int = 10, source: str | None = None, request_id: str | None = None
    ) -> SearchResponse:
        """Search with a photo (a path, bytes or a PIL image)."""
        started = time.perf_counter()
        if isinstance(image, str | bytes) or hasattr(image, "__fspath__"):
            source = source or str(image)
            image = load_image(image)
        query = Query(source=source or "<image>", image=image, top_k=top_k, request_id=request_id)
        return self.run(query, started)

    def search_vector(
        self,
        vector: np.ndarray,
        *,
        top_k: int = 10,
        source: str = "<vector>",
        request_id: str | None = None,
    ) -> SearchResponse:
        """Search with a precomputed raw encoder embedding (the simulator's fast path)."""
        query = Query(
            source=source,
            vector=np.asarray(vector, dtype=np.float32),
            top_k=top_k,
            request_id=request_id,
        )
        return self.run(query, time.perf_counter())

    def run(self, query: Query, started: float | None = None) -> SearchResponse:
        if query.top_k < 1:
            raise InputError(f"top_k must be at least 1, got {query.top_k}")
        started = time.perf_counter() if started is None else started
        ctx = SearchContext(query=query)
        for stage, default in (
            (Stage.QUERY, self._understand),
            (Stage.RECALL, self._recall),
            (Stage.FILTER, None),
            (Stage.RANK, self._rank),
            (Stage.DISPLAY, self._display),
        ):
            if default is not None:
                default(ctx)
            for hook in self.hooks[stage]:
                hook(ctx)
        return SearchResponse(
            query=query.source,
            results=ctx.results,
            relevance=relevance(ctx.results),
            latency_ms=(time.perf_counter() - started) * 1000,
            cues=ctx.cues,
            applied=ctx.applied,
            trace=ctx.trace,
            request_id=query.request_id,
        )

    # -- default stage work --------------------------------------------------------------------
    def _understand(self, ctx: SearchContext) -> None:
        if ctx.query.vector is None:
            if ctx.query.image is None:
                raise InputError(f"{ctx.query.source}: a query needs an image or a vector")
            ctx.query.vector = self.engine.encode(ctx.query.image)
        ctx.query.facts["embedding"] = ctx.query.vector  # raw: attribute heads read this
        ctx.query.vector = self.engine.project_query(ctx.query.vector)

    def _recall(self, ctx: SearchContext) -> None:
        k = max(self.recall_k, ctx.query.top_k)
        scores, rows = self.engine.index.search(ctx.query.vector, k)
        ids = self.engine.index.ids_
        ctx.candidates = [
            self.hit(ids[r], float(s)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0
        ]

    def _rank(self, ctx: SearchContext) -> None:
        ctx.candidates.sort(key=lambda h: h.score, reverse=True)

    def _display(self, ctx: SearchContext) -> None:
        if ctx.results:
            return
        ctx.results = ctx.candidates[: ctx.query.top_k]
        for rank, hit in enumerate(ctx.results, start=1):
            hit.rank = rank

    def hit(
        self, product_id: str, score: float, source: str = VISUAL, tool: int | None = None
    ) -> Hit:
        """A result row for a catalog product, with its title and price filled in."""
        title, price = self.engine.labels[product_id]
        return Hit(product_id, score, title=title, price=price, source=source, tool=tool)
