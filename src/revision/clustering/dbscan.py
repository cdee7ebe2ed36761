"""DBSCAN over the unassigned pool without an N × N matrix, and with exact insertions.

The paper runs DBSCAN on the dense precomputed matrix d_ij = max(0, 1 − cos(a_i, a_j)): N²
floats, 40 GB for 100k actions. Here distances are computed in row blocks and only what DBSCAN
needs is kept:

* `fit`, pass 1: weighted neighbour counts (→ core points), keeping the pairs with d ≤ eps
  while they fit in `max_edges`. If they fit, that sparse radius-neighbours graph goes to
  scikit-learn's `DBSCAN(metric="precomputed")`, which reads neighbourhoods only, so the result
  equals the dense run. If not (a dense pool), pass 2 streams rows against core points:
  clusters are connected components of core points (union-find, merged block by block) and a
  border point joins the lowest-numbered adjacent cluster, the order scikit-learn's expansion
  labels them in; memory stays O(N).
* `insert`: new points and extra weight never remove a neighbour, so core points stay core and
  clusters only grow or merge. Only distances from the new points (and from points that just
  became core) are computed; the labels equal a `fit` on the union, in the same order.

Duplicate texts enter once with a `sample_weight` equal to their count, which DBSCAN treats
exactly as that many copies. Clusters are numbered in order of their lowest core index.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import DBSCAN

METRICS = ("cosine", "euclidean", "manhattan")
_ALIASES = {"l2": "euclidean", "l1": "manhattan", "cityblock": "manhattan"}
_BLOCK_CELLS = 8_000_000  # floats in one distance block (32 MB)


def canonical_metric(metric: str) -> str:
    from revision.errors import ConfigError

    m = _ALIASES.get(metric.lower(), metric.lower())
    if m not in METRICS:
        raise ConfigError(
            f"unknown DBSCAN metric {metric!r}; valid: cosine, euclidean (l2), manhattan (l1)"
        )
    return m


def pairwise_block(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Distances between rows of `a` and rows of `b` (float32)."""
    if metric == "cosine":  # rows are unit vectors: the paper's max(0, 1 − cos)
        return np.maximum(0.0, 1.0 - a @ b.T)
    if metric == "euclidean":
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        return np.sqrt(np.maximum(sq, 0.0))
    from scipy.spatial.distance import cdist

    return cdist(a, b, "cityblock").astype(np.float32)


def _blocks(n_rows: int, n_cols: int):
    step = max(1, min(n_rows, _BLOCK_CELLS // max(n_cols, 1)))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def radius_graph(
    x: np.ndarray, eps: float, metric: str = "cosine", max_edges: int | None = None
) -> sp.csr_matrix | None:
    """Sparse (n, n) matrix of distances ≤ eps (diagonal included), or None past `max_edges`."""
    x = np.ascontiguousarray(x, np.float32)
    n = len(x)
    rows, cols, data = [], [], []
    total = 0
    for s, e in _blocks(n, n):
        d = pairwise_block(x[s:e], x, metric)
        r, c = np.nonzero(d <= eps)
        total += len(r)
        if max_edges is not None and total > max_edges:
            return None
        rows.append(r + s)
        cols.append(c)
        # scikit-learn reads stored entries only; keep zero distances as explicit entries
        data.append(np.maximum(d[r, c], np.float32(1e-12)))
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float64)
    return sp.csr_matrix(
        (np.concatenate(data).astype(np.float64), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, n),
    )


class IncrementalDBSCAN:
    """DBSCAN with bounded memory whose `insert` equals a re-`fit` on the union.

    State (all O(N)): vectors `x_`, weights `w_`, weighted neighbour counts `cnt_`, the
    lowest core index of each core point's component `comp_` (−1 for non-core points), and for
    each border point the components it touches `adj_`.
    """

    def __init__(
        self,
        eps: float = 0.5,
        min_samples: int = 2,
        metric: str = "cosine",
        max_edges: int = 20_000_000,
    ):
        self.eps = eps
        self.min_samples = min_samples
        self.metric = metric
        self.max_edges = max_edges

    # -- helpers ---------------------------------------------------------------------------------
    def _near(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return pairwise_block(a, b, self.metric_) <= self.eps

    def _merge(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union the components of core points a[i] and b[i] (both arrays of core indices)."""
        if not len(a):
            return
        n = len(self.comp_)
        cores = np.flatnonzero(self.comp_ >= 0)
        rr = np.concatenate([cores, a])
        cc = np.concatenate([self.comp_[cores], b])
        g = sp.csr_matrix((np.ones(len(rr), np.int8), (rr, cc)), shape=(n, n))
        _, lab = connected_components(g, directed=False)
        first = np.full(lab.max() + 1, n, np.int64)
        np.minimum.at(first, lab[cores], cores)
        self.comp_[cores] = first[lab[cores]]

    def _touch(self, points: np.ndarray, cores: np.ndarray) -> None:
        """Record that non-core `points[i]` neighbours core `cores[i]`."""
        if not len(points):
            return
        reps = self.comp_[cores]
        pairs = np.unique(np.stack([points, reps], axis=1), axis=0)
        for p, r in pairs.tolist():
            self.adj_.setdefault(p, set()).add(r)

    def labels(self) -> np.ndarray:
        """Cluster labels from the state: clusters numbered by lowest core index, −1 = noise."""
        n = len(self.comp_)
        out = np.full(n, -1, np.int64)
        cores = np.flatnonzero(self.comp_ >= 0)
        if not len(cores):
            return out
        roots = np.unique(self.comp_[cores])  # sorted: the lowest core index of each cluster
        number = np.full(n, -1, np.int64)
        number[roots] = np.arange(len(roots))
        out[cores] = number[self.comp_[cores]]
        for p, reps in self.adj_.items():
            out[p] = min(number[self.comp_[r]] for r in reps)
        return out

    # -- persistence (vectors are not stored: they come back from the embedding cache) ---------
    def get_state(self) -> dict[str, np.ndarray]:
        """The O(N) state as arrays (weights, counts, components, border adjacency)."""
        pairs = [(p, r) for p, reps in self.adj_.items() for r in reps]
        adj = np.array(pairs, np.int64).reshape(-1, 2)
        return {"w": self.w_, "cnt": self.cnt_, "comp": self.comp_, "adj": adj}

    def set_state(self, x: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        """Resume from `get_state()` with the same points `x`; returns the labels."""
        self.metric_ = canonical_metric(self.metric)
        self.x_ = np.ascontiguousarray(x, np.float32)
        if not len(state["w"]) == len(state["cnt"]) == len(state["comp"]) == len(self.x_):
            raise ValueError("DBSCAN state does not match the points")
        self.w_ = np.asarray(state["w"], np.float64)
        self.cnt_ = np.asarray(state["cnt"], np.float64)
        self.comp_ = np.asarray(state["comp"], np.int64)
        self.adj_ = {}
        for p, r in np.asarray(state["adj"], np.int64).reshape(-1, 2).tolist():
            self.adj_.setdefault(p, set()).add(r)
        return self.labels()

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, x: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
        """Cluster `x`; returns labels equal to scikit-learn's DBSCAN on the dense matrix."""
        self.metric_ = canonical_metric(self.metric)
        self.x_ = np.ascontiguousarray(x, np.float32)
        n = len(self.x_)
        self.w_ = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
        self.cnt_ = np.zeros(n)
        self.comp_ = np.full(n, -1, np.int64)
        self.adj_: dict[int, set[int]] = {}
        if n == 0:
            return np.zeros(0, np.int64)
        rows: list[np.ndarray] | None = []
        cols: list[np.ndarray] = []
        total = 0
        for s, e in _blocks(n, n):  # pass 1: counts, and the edges while they fit
            near = self._near(self.x_[s:e], self.x_)
            self.cnt_[s:e] = near @ self.w_
            if rows is not None:
                r, c = np.nonzero(near)
                total += len(r)
                if total > self.max_edges:
                    rows = None  # too dense to keep: stream in pass 2
                else:
                    rows.append((r + s).astype(np.int32))
                    cols.append(c.astype(np.int32))
        core = self.cnt_ >= self.min_samples
        cidx = np.flatnonzero(core)
        self.comp_[cidx] = cidx
        if rows is not None:
            r = np.concatenate(rows).astype(np.int64)
            c = np.concatenate(cols).astype(np.int64)
            both = core[r] & core[c]
            self._merge(r[both], c[both])
            border = ~core[r] & core[c]
            self._touch(r[border], c[border])
            graph = sp.csr_matrix(
                (np.full(len(r), 1e-12), (r, c)), shape=(n, n)
            )  # every stored pair is within eps: the distances themselves are not needed
            labels = DBSCAN(eps=self.eps, min_samples=self.min_samples, metric="precomputed")
            return labels.fit_predict(graph, sample_weight=self.w_).astype(np.int64)
        xc = self.x_[cidx]
        for s, e in _blocks(n, len(cidx)):  # pass 2: rows against core points
            r, c = np.nonzero(self._near(self.x_[s:e], xc))
            r, c = r + s, cidx[c]
            rc = core[r]
            self._merge(r[rc], c[rc])
            self._touch(r[~rc], c[~rc])
        return self.labels()

    def insert(
        self,
        x_new: np.ndarray,
        w_new: np.ndarray | None = None,
        increment_index: np.ndarray | None = None,
        increment_weight: np.ndarray | None = None,
    ) -> np.ndarray:
        """Append points (and add weight to existing ones); return labels of all points.

        Equal to `fit` on the concatenated points with the summed weights.
        """
        if not hasattr(self, "x_"):
            raise RuntimeError("IncrementalDBSCAN.insert before fit")
        x_new = np.ascontiguousarray(x_new, np.float32).reshape(-1, self.x_.shape[1])
        m = len(x_new)
        n0 = len(self.x_)
        w_new = np.ones(m) if w_new is None else np.asarray(w_new, np.float64)
        inc_i = np.asarray(increment_index if increment_index is not None else [], np.int64)
        inc_w = np.asarray(increment_weight if increment_weight is not None else [], np.float64)
        self.x_ = np.concatenate([self.x_, x_new])
        self.w_ = np.concatenate([self.w_, w_new])
        np.add.at(self.w_, inc_i, inc_w)
        self.cnt_ = np.concatenate([self.cnt_, np.zeros(m)])
        was_core = np.concatenate([self.comp_ >= 0, np.zeros(m, bool)])
        self.comp_ = np.concatenate([self.comp_, np.full(m, -1, np.int64)])
        n = n0 + m
        new = np.arange(n0, n)
        # 1. counts: every pair that involves a new point or added weight
        changed = np.concatenate([new, inc_i])
        delta = np.concatenate([w_new, inc_w])
        for s, e in _blocks(len(changed), n):
            near = self._near(self.x_[changed[s:e]], self.x_)
            self.cnt_[:n0] += delta[s:e] @ near[:, :n0]
            is_new = changed[s:e] >= n0
            self.cnt_[changed[s:e][is_new]] = near[is_new] @ self.w_
        # 2. points that just became core: their edges to all cores and to non-core points
        core = self.cnt_ >= self.min_samples
        fresh = np.flatnonzero(core & ~was_core)
        self.comp_[fresh] = fresh
        for p in fresh.tolist():
            self.adj_.pop(p, None)
        for s, e in _blocks(len(fresh), n):
            r, c = np.nonzero(self._near(self.x_[fresh[s:e]], self.x_))
            r = fresh[s:e][r]
            cc = core[c]
            self._merge(r[cc], c[cc])
            self._touch(c[~cc], r[~cc])
        # 3. new non-core points: their neighbours among the cores that were there before
        lonely = new[~core[new]]
        old_cores = np.flatnonzero(was_core)
        for s, e in _blocks(len(lonely), len(old_cores)):
            r, c = np.nonzero(self._near(self.x_[lonely[s:e]], self.x_[old_cores]))
            self._touch(lonely[s:e][r], old_cores[c])
        return self.labels()


def dbscan(
    x: np.ndarray,
    eps: float = 0.5,
    min_samples: int = 2,
    metric: str = "cosine",
    sample_weight: np.ndarray | None = None,
    max_edges: int = 20_000_000,
) -> np.ndarray:
    """Cluster labels (−1 = noise) equal to `sklearn.cluster.DBSCAN(metric="precomputed")` on
    the dense distance matrix, in bounded memory."""
    return IncrementalDBSCAN(eps, min_samples, metric, max_edges).fit(x, sample_weight)
