"""The paper's two-level hierarchical clustering of mined actions (§III-B(b)), incrementally.

    fit(actions) = _embed_labels → _add (tokenise, embed, Level 1, Level 2) → _cluster_pool

Level 1 puts an action under argmax_c s_0.7(a, c) when that score exceeds tau1 = 0.40, else
leaves it unassigned; Level 2 puts it under argmax_s s_0.6(a, s) over its main category's
subcategories when that exceeds tau2 = 0.35, else in the category's `other` bucket; DBSCAN
(eps = 0.5, min_samples = 2, d = max(0, 1 − cos)) groups the unassigned into auxiliary clusters.

Work is per *distinct* text: duplicates are scored and embedded once, and the unassigned pool
holds one point per distinct text (without index markers) weighted by its count, which DBSCAN
treats exactly as the copies. Levels 1 and 2 depend on nothing but the action and the ontology,
so `assign_incremental` scores only new texts and leaves earlier assignments untouched; DBSCAN
over the unassigned pool is updated by exact insertion (`IncrementalDBSCAN`: equal to a re-run
over the pool, at the cost of the new points' distances only), and an auxiliary cluster that
survives keeps its id.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from revision.clustering._base import ClusterNamer, ClusterSummary, KeywordNamer, ctfidf_keywords
from revision.clustering.dbscan import IncrementalDBSCAN, canonical_metric
from revision.clustering.ontology import OTHER, Ontology, load_ontology
from revision.clustering.scores import KeywordMatcher, combine, label_text
from revision.errors import ConfigError, InputError
from revision.text.embed import EmbeddingCache, TextEncoder, get_text_encoder
from revision.text.tokenize import STOPWORDS, strip_markers, tokenize
from revision.warehouse import Warehouse

NO_SUB = -2  # the row is unassigned, so it has no subcategory at all


@dataclass(frozen=True)
class Assignment:
    """Where one input action went. `main` is None when unassigned; `sub` is a subcategory
    name or "other"; `aux_cluster` is the DBSCAN cluster id of an unassigned action, if any."""

    action: str
    main: str | None
    sub: str | None
    score_main: float
    score_sub: float | None
    aux_cluster: int | None

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        d = asdict(self)
        d["score_main"] = round(self.score_main, digits)
        if self.score_sub is not None:
            d["score_sub"] = round(self.score_sub, digits)
        return d


@dataclass
class AuxCluster:
    """An auxiliary semantic cluster of unassigned actions."""

    id: int
    label: str
    keywords: list[str]
    size: int  # input items, duplicates counted
    n_texts: int  # distinct texts
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_actions(actions: Sequence[str], what: str = "actions") -> list[str]:
    if isinstance(actions, str):
        raise InputError(f"{what}: expected a list of action texts, got one string")
    out = list(actions)
    for i, a in enumerate(out):
        if not isinstance(a, str):
            raise InputError(f"{what}[{i}]: expected text, got {type(a).__name__}")
    return out


class HierarchicalClusterer:
    """Two-level ontology assignment plus DBSCAN over the rest (scikit-learn conventions).

    Parameters keep the paper's names and defaults; `encoder` is a name
    ("auto", "minilm", "e5-centered", …) or a `TextEncoder`; `cache` (a `Warehouse` or an
    `EmbeddingCache`) makes every distinct text embedded once across runs; `namer` labels the
    auxiliary clusters (default: top keywords).
    """

    def __init__(
        self,
        ontology: Ontology | str | Path | None = None,
        *,
        encoder: str | TextEncoder = "auto",
        alpha1: float = 0.7,
        alpha2: float = 0.6,
        tau1: float = 0.40,
        tau2: float = 0.35,
        eps: float = 0.5,
        min_samples: int = 2,
        metric: str = "cosine",
        namer: ClusterNamer | None = None,
        cache: Warehouse | EmbeddingCache | None = None,
        max_edges: int = 20_000_000,
    ):
        self.ontology = ontology
        self.encoder = encoder
        self.alpha1 = alpha1
        self.alpha2 = alpha2
        self.tau1 = tau1
        self.tau2 = tau2
        self.eps = eps
        self.min_samples = min_samples
        self.metric = metric
        self.namer = namer
        self.cache = cache
        self.max_edges = max_edges

    PARAMS = ("alpha1", "alpha2", "tau1", "tau2", "eps", "min_samples", "metric")

    def get_params(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in self.PARAMS}

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, actions: Sequence[str]) -> HierarchicalClusterer:
        """Assign `actions` (input order is kept) and cluster the unassigned ones."""
        actions = _check_actions(actions)
        self._setup(actions)
        self._reset()
        self._add(actions)
        self._cluster_pool()
        return self

    def assign_incremental(self, actions: Sequence[str]) -> list[Assignment]:
        """Assign new actions without touching earlier ones; return their assignments.

        Texts seen before reuse their row (no embedding, same result). DBSCAN over the
        unassigned pool is updated by exact insertion, only when the pool changed; its labels
        equal a re-run over the whole pool.
        """
        self._check_fitted()
        actions = _check_actions(actions)
        start = self.n_items_
        if self._add(actions):
            self._cluster_pool()
        return self.assignments(start)

    def _check_fitted(self) -> None:
        if not hasattr(self, "texts_"):
            raise ConfigError("HierarchicalClusterer is not fitted: call fit(actions) first")

    def _validate_params(self) -> None:
        for name in ("alpha1", "alpha2"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name} = {v}: must lie in [0, 1]")
        for name in ("tau1", "tau2"):
            v = getattr(self, name)
            if not -1.0 <= v <= 1.0:
                raise ConfigError(f"{name} = {v}: must lie in [-1, 1] (scores are in [-1, 1])")
        if not self.eps > 0:
            raise ConfigError(f"eps = {self.eps}: must be > 0")
        if int(self.min_samples) != self.min_samples or self.min_samples < 1:
            raise ConfigError(f"min_samples = {self.min_samples}: must be an integer ≥ 1")
        self.metric_ = canonical_metric(self.metric)

    def _setup(self, actions: Sequence[str]) -> None:
        self._validate_params()
        onto = self.ontology
        self.ontology_ = onto if isinstance(onto, Ontology) else load_ontology(onto)
        cache = self.cache
        if isinstance(cache, Warehouse):
            cache = EmbeddingCache(cache)
        if isinstance(self.encoder, TextEncoder):
            self.encoder_ = self.encoder
        else:
            self.encoder_ = get_text_encoder(self.encoder, texts=actions, cache=cache)
        self.namer_ = self.namer if self.namer is not None else KeywordNamer()
        self._embed_labels()

    def _embed_labels(self) -> None:
        onto = self.ontology_
        self.main_names_ = onto.main_names()
        leaves = onto.leaves()
        self.sub_names_ = [s.name for _, s in leaves]
        self.sub_tools_ = [s.tool for _, s in leaves]
        owner = {m.name: i for i, m in enumerate(onto.main_categories)}
        self.sub_owner_ = np.array([owner[m.name] for m, _ in leaves], np.int64)
        self.stopwords_ = STOPWORDS | frozenset(onto.stopwords)
        main_kw = [m.keywords for m in onto.main_categories]
        sub_kw = [s.keywords for _, s in leaves]
        self._main_matcher = KeywordMatcher(main_kw)
        self._sub_matcher = KeywordMatcher(sub_kw)
        multi = self.encoder_.multilingual
        vecs = self.encoder_.encode([label_text(k, multi) for k in main_kw + sub_kw])
        self.main_vectors_ = vecs[: len(main_kw)]
        self.sub_vectors_ = vecs[len(main_kw) :]

    def _reset(self) -> None:
        self.texts_: list[str] = []
        self.row_of_: dict[str, int] = {}
        self.main_ = np.zeros(0, np.int64)
        self.sub_ = np.zeros(0, np.int64)
        self.score_main_ = np.zeros(0, np.float32)
        self.score_sub_ = np.zeros(0, np.float32)
        self.count_ = np.zeros(0, np.int64)
        self.aux_ = np.zeros(0, np.int64)
        self.item_rows_ = np.zeros(0, np.int64)
        self.row_pool_ = np.zeros(0, np.int64)  # row → pool point, −1 for assigned rows
        self.pool_keys_: list[str] = []  # distinct unassigned texts without index markers
        self._pool_index: dict[str, int] = {}
        self.pool_vectors_ = np.zeros((0, self.main_vectors_.shape[1]), np.float32)
        self.pool_weight_ = np.zeros(0, np.float64)
        self.pool_aux_ = np.zeros(0, np.int64)
        self._pool_tokens: list[list[str]] = []
        self._dbscan = IncrementalDBSCAN(
            self.eps, int(self.min_samples), self.metric_, self.max_edges
        )
        self._dbscan_seen = 0  # pool points the DBSCAN state holds
        self._weight_seen = np.zeros(0, np.float64)
        self.aux_clusters_: dict[int, AuxCluster] = {}
        self._aux_members: dict[int, frozenset[int]] = {}
        self.next_aux_id_ = 0
        self.n_embedded_ = 0

    @property
    def n_items_(self) -> int:
        return len(self.item_rows_)

    def tokens(self, text: str) -> list[str]:
        """The tokens the synonym score sees (preprocessed, stop words dropped)."""
        return tokenize(text, stopwords=self.stopwords_)

    def score(self, actions: Sequence[str]) -> dict[str, np.ndarray]:
        """All scores of `actions` against every label, without assigning anything:
        `syn_main`, `sem_main`, `s_main` (n × C) and `syn_sub`, `sem_sub`, `s_sub` (n × S)."""
        self._check_fitted()
        return self._score(list(actions), self._embed(list(actions)))

    def _embed(self, texts: list[str]) -> np.ndarray:
        # index markers are not meaning: "1. Refine …" and "Refine …" share one vector
        return self.encoder_.encode([strip_markers(t) or t for t in texts]).astype(np.float32)

    def _score(self, texts: list[str], vecs: np.ndarray) -> dict[str, np.ndarray]:
        toks = [self.tokens(t) for t in texts]
        syn_main = self._main_matcher.scores(toks)
        sem_main = vecs @ self.main_vectors_.T
        syn_sub = self._sub_matcher.scores(toks)
        sem_sub = vecs @ self.sub_vectors_.T
        return {
            "tokens": toks,
            "syn_main": syn_main,
            "sem_main": sem_main,
            "s_main": combine(self.alpha1, syn_main, sem_main),
            "syn_sub": syn_sub,
            "sem_sub": sem_sub,
            "s_sub": combine(self.alpha2, syn_sub, sem_sub),
        }

    def _add(self, actions: list[str]) -> bool:
        """Append items; score their new distinct texts. True when the pool changed."""
        new: dict[str, int] = {}
        base = len(self.texts_)
        rows = np.fromiter(
            (
                self.row_of_[a] if a in self.row_of_ else new.setdefault(a, base + len(new))
                for a in actions
            ),
            np.int64,
            len(actions),
        )
        texts = list(new)
        if texts:
            vecs = self._embed(texts)
            self.n_embedded_ += len(texts)
            sc = self._score(texts, vecs)
            main, score_main, sub, score_sub = self._levels(sc["s_main"], sc["s_sub"])
            self.texts_.extend(texts)
            self.row_of_.update(new)
            self.main_ = np.concatenate([self.main_, main])
            self.sub_ = np.concatenate([self.sub_, sub])
            self.score_main_ = np.concatenate([self.score_main_, score_main])
            self.score_sub_ = np.concatenate([self.score_sub_, score_sub])
            self.count_ = np.concatenate([self.count_, np.zeros(len(texts), np.int64)])
            self.aux_ = np.concatenate([self.aux_, np.full(len(texts), -1, np.int64)])
            un = np.flatnonzero(main < 0)
            self._add_to_pool(texts, main, vecs[un], [sc["tokens"][i] for i in un])
        np.add.at(self.count_, rows, 1)
        points = self.row_pool_[rows]
        points = points[points >= 0]
        np.add.at(self.pool_weight_, points, 1.0)
        self.item_rows_ = np.concatenate([self.item_rows_, rows])
        # new unassigned texts, or more copies of old ones (DBSCAN weights): the pool changed
        return bool(len(points))

    def _add_to_pool(
        self, texts: list[str], main: np.ndarray, vecs: np.ndarray, tokens: list[list[str]]
    ) -> None:
        """Map new rows to pool points; a text differing only by its index marker shares one.

        `vecs` and `tokens` hold the unassigned rows only (those with main < 0), in order.
        """
        row_pool = np.full(len(texts), -1, np.int64)
        fresh = []
        for k, i in enumerate(np.flatnonzero(main < 0).tolist()):
            key = strip_markers(texts[i]) or texts[i]
            point = self._pool_index.get(key)
            if point is None:
                point = self._pool_index[key] = len(self.pool_keys_)
                self.pool_keys_.append(key)
                self._pool_tokens.append(tokens[k])
                fresh.append(k)
            row_pool[i] = point
        self.row_pool_ = np.concatenate([self.row_pool_, row_pool])
        if fresh:
            self.pool_vectors_ = np.concatenate([self.pool_vectors_, vecs[fresh]])
            self.pool_weight_ = np.concatenate([self.pool_weight_, np.zeros(len(fresh))])
            self.pool_aux_ = np.concatenate([self.pool_aux_, np.full(len(fresh), -1, np.int64)])

    def _levels(self, s_main: np.ndarray, s_sub: np.ndarray):
        n = len(s_main)
        best = s_main.argmax(axis=1)
        score_main = s_main[np.arange(n), best].astype(np.float32)
        main = np.where(score_main > self.tau1, best, -1)  # "exceeds" tau1: strictly greater
        sub = np.full(n, NO_SUB, np.int64)
        score_sub = np.full(n, np.nan, np.float32)
        assigned = np.flatnonzero(main >= 0)
        if len(assigned) and len(self.sub_owner_):
            own = self.sub_owner_[None, :] == main[assigned][:, None]
            masked = np.where(own, s_sub[assigned], -np.inf)
            best_sub = masked.argmax(axis=1)
            top = masked[np.arange(len(assigned)), best_sub]
            has = np.isfinite(top)
            score_sub[assigned[has]] = top[has]
            sub[assigned] = np.where(has & (top > self.tau2), best_sub, -1)
        elif len(assigned):
            sub[assigned] = -1
        return main, score_main, sub, score_sub

    # -- auxiliary clusters --------------------------------------------------------------------
    def _cluster_pool(self, state: dict[str, np.ndarray] | None = None) -> None:
        n = len(self.pool_keys_)
        if not n:
            self.aux_clusters_, self._aux_members = {}, {}
            return
        seen = self._dbscan_seen
        if state is not None:
            labels = self._dbscan.set_state(self.pool_vectors_, state)
        elif seen == 0:
            labels = self._dbscan.fit(self.pool_vectors_, self.pool_weight_)
        else:
            extra = self.pool_weight_[:seen] - self._weight_seen[:seen]
            grown = np.flatnonzero(extra > 0)
            labels = self._dbscan.insert(
                self.pool_vectors_[seen:], self.pool_weight_[seen:], grown, extra[grown]
            )
        self._dbscan_seen = n
        self._weight_seen = self.pool_weight_.copy()
        self.pool_aux_ = self._stable_ids(labels)
        rows = np.flatnonzero(self.row_pool_ >= 0)
        self.aux_[rows] = self.pool_aux_[self.row_pool_[rows]]
        self._describe_clusters(self.pool_aux_)

    def _stable_ids(self, labels: np.ndarray) -> np.ndarray:
        """Map DBSCAN labels to cluster ids; a cluster keeps the id most of its weight had."""
        old = self.pool_aux_
        ids = np.full(len(labels), -1, np.int64)
        taken: set[int] = set()
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(labels.max() + 2))
        for k in range(labels.max() + 1):
            members = order[bounds[k] : bounds[k + 1]]
            votes: dict[int, float] = {}
            for o, w in zip(
                old[members].tolist(), self.pool_weight_[members].tolist(), strict=True
            ):
                if o >= 0 and o not in taken:
                    votes[o] = votes.get(o, 0.0) + w
            if votes:
                cid = min(votes, key=lambda o: (-votes[o], o))
            else:
                cid = self.next_aux_id_
                self.next_aux_id_ += 1
            taken.add(cid)
            ids[members] = cid
        return ids

    def _describe_clusters(self, ids: np.ndarray) -> None:
        order = np.argsort(ids, kind="stable")
        cluster_ids = sorted({int(i) for i in ids if i >= 0})
        bounds = dict(zip(*np.unique(ids[order], return_index=True), strict=True))
        members: dict[int, frozenset[int]] = {}
        groups = []
        for cid in cluster_ids:
            start = bounds[cid]
            stop = start + int((ids == cid).sum())
            pts = order[start:stop]
            members[cid] = frozenset(pts.tolist())
            c: Counter = Counter()
            for j in pts.tolist():
                w = int(self.pool_weight_[j])
                for t in self._pool_tokens[j]:
                    c[t] += w
            groups.append(c)
        keywords = ctfidf_keywords(groups, top_k=5)
        clusters: dict[int, AuxCluster] = {}
        to_name: list[ClusterSummary] = []
        for cid, kws in zip(cluster_ids, keywords, strict=True):
            pts = sorted(members[cid], key=lambda j: (-self.pool_weight_[j], self.pool_keys_[j]))
            cl = AuxCluster(
                id=cid,
                label="",
                keywords=kws,
                size=int(self.pool_weight_[pts].sum()),
                n_texts=len(pts),
                examples=[self.pool_keys_[j] for j in pts[:5]],
            )
            prev = self.aux_clusters_.get(cid)
            if prev is not None and self._aux_members.get(cid) == members[cid]:
                cl.label = prev.label  # unchanged cluster: keep its (possibly LLM) name
            else:
                to_name.append(ClusterSummary(cid, cl.size, kws, cl.examples))
            clusters[cid] = cl
        if to_name:
            names = self.namer_.name_clusters(to_name)
            for summary, name in zip(to_name, names, strict=True):
                clusters[summary.id].label = name
        self.aux_clusters_ = clusters
        self._aux_members = members

    # -- results -------------------------------------------------------------------------------
    def _row_fields(self, r: int) -> tuple[str | None, str | None, float | None, int | None]:
        m = int(self.main_[r])
        s = int(self.sub_[r])
        main = self.main_names_[m] if m >= 0 else None
        sub = None if s == NO_SUB else (self.sub_names_[s] if s >= 0 else OTHER)
        ssub = float(self.score_sub_[r])
        a = int(self.aux_[r])
        return main, sub, (None if np.isnan(ssub) else ssub), (a if a >= 0 else None)

    def assignments(self, start: int = 0, stop: int | None = None) -> list[Assignment]:
        """One `Assignment` per input item in input order (fit, then each incremental batch)."""
        self._check_fitted()
        out = []
        for r in self.item_rows_[start:stop].tolist():
            main, sub, ssub, aux = self._row_fields(r)
            out.append(Assignment(self.texts_[r], main, sub, float(self.score_main_[r]), ssub, aux))
        return out

    def records(self, start: int = 0, stop: int | None = None) -> list[dict[str, Any]]:
        """`assignments` as JSON-ready dicts (`action, main, sub, score_main, score_sub,
        aux_cluster`)."""
        return [a.to_dict() for a in self.assignments(start, stop)]

    def tool_of(self, sub_name: str | None, main_name: str | None) -> str | None:
        if sub_name is None or main_name is None or sub_name == OTHER:
            return None
        for (m, s), tool in zip(self.ontology_.leaves(), self.sub_tools_, strict=True):
            if m.name == main_name and s.name == sub_name:
                return tool
        return None

    def to_arrow(self, start: int = 0, stop: int | None = None) -> pa.Table:
        """Items as a table: item, action, main, sub, tool, score_main, score_sub, aux_cluster."""
        self._check_fitted()
        rows = self.item_rows_[start:stop]
        main_names = np.array([*self.main_names_, None], dtype=object)
        sub_names = np.array([*self.sub_names_, None, OTHER], dtype=object)  # −2 → None, −1 → other
        tools = np.array([*self.sub_tools_, None, None], dtype=object)
        ssub = self.score_sub_[rows]
        aux = self.aux_[rows]
        return pa.table(
            {
                "item": pa.array(np.arange(len(rows)) + start, pa.int64()),
                "action": pa.array([self.texts_[r] for r in rows.tolist()], pa.string()),
                "main": pa.array(main_names[self.main_[rows]], pa.string()),
                "sub": pa.array(sub_names[self.sub_[rows]], pa.string()),
                "tool": pa.array(tools[self.sub_[rows]], pa.string()),
                "score_main": pa.array(self.score_main_[rows], pa.float32()),
                "score_sub": pa.array(ssub, pa.float32(), mask=np.isnan(ssub)),
                "aux_cluster": pa.array(aux, pa.int64(), mask=aux < 0),
            }
        )

    def hierarchy(self, max_actions: int | None = None) -> dict[str, Any]:
        """main → sub → distinct actions (count, scores), then the unassigned pool."""
        self._check_fitted()
        mains = []
        for mi, m in enumerate(self.ontology_.main_categories):
            in_main = np.flatnonzero(self.main_ == mi)
            subs = []
            sub_ids = [j for j in range(len(self.sub_names_)) if self.sub_owner_[j] == mi]
            for j, name in [(j, self.sub_names_[j]) for j in sub_ids] + [(-1, OTHER)]:
                rows = in_main[self.sub_[in_main] == j]
                if j == -1 and not len(rows):
                    continue
                rows = rows[np.lexsort((-self.score_sub_[rows], -self.count_[rows]))]
                subs.append(
                    {
                        "name": name,
                        "tool": self.sub_tools_[j] if j >= 0 else None,
                        "size": int(self.count_[rows].sum()),
                        "actions": [
                            {
                                "action": self.texts_[r],
                                "count": int(self.count_[r]),
                                "score_main": round(float(self.score_main_[r]), 4),
                                "score_sub": None
                                if np.isnan(self.score_sub_[r])
                                else round(float(self.score_sub_[r]), 4),
                            }
                            for r in rows[:max_actions].tolist()
                        ],
                    }
                )
            mains.append(
                {"name": m.name, "size": int(self.count_[in_main].sum()), "subcategories": subs}
            )
        unassigned = self.main_ < 0
        return {
            "main_categories": mains,
            "unassigned": {
                "size": int(self.count_[unassigned].sum()),
                "aux_clusters": [c.to_dict() for c in self.aux_clusters_.values()],
                "noise": int(self.count_[unassigned & (self.aux_ < 0)].sum()),
            },
        }

    def summary(self) -> dict[str, Any]:
        self._check_fitted()
        n = self.n_items_
        counts = self.count_
        assigned = int(counts[self.main_ >= 0].sum())
        other = int(counts[self.sub_ == -1].sum())
        in_aux = int(counts[self.aux_ >= 0].sum())
        return {
            "items": n,
            "distinct_texts": len(self.texts_),
            "assigned": assigned,
            "assigned_to_sub": assigned - other,
            "other": other,
            "unassigned": n - assigned,
            "in_aux_clusters": in_aux,
            "noise": n - assigned - in_aux,
            "aux_clusters": len(self.aux_clusters_),
            "pool_texts": len(self.pool_keys_),
            "encoder": self.encoder_.name,
        }

    # -- restoring a fitted state (incremental runs across processes) --------------------------
    def restore(
        self,
        actions: Sequence[str],
        main: Sequence[str | None],
        sub: Sequence[str | None],
        score_main: Sequence[float],
        score_sub: Sequence[float | None],
        aux_cluster: Sequence[int | None],
        aux_clusters: Sequence[AuxCluster] = (),
        dbscan_state: dict[str, np.ndarray] | None = None,
    ) -> HierarchicalClusterer:
        """Rebuild a fitted state from stored per-item assignments, without re-scoring.

        Only the unassigned pool is re-embedded (from the cache). DBSCAN resumes from
        `dbscan_state` (see `dbscan_state()`) when given and matching, else re-clusters the
        pool once; either way the clusters, ids and names come back as stored.
        """
        actions = _check_actions(actions, "stored assignments")
        self._setup(actions)
        self._reset()
        main_index = {n: i for i, n in enumerate(self.main_names_)}
        sub_index = {(int(self.sub_owner_[j]), n): j for j, n in enumerate(self.sub_names_)}
        rows = np.empty(len(actions), np.int64)
        m_arr, s_arr, sm_arr, ss_arr, a_arr = [], [], [], [], []
        for i, text in enumerate(actions):
            r = self.row_of_.get(text)
            if r is None:
                r = self.row_of_[text] = len(self.texts_)
                self.texts_.append(text)
                if main[i] is None:
                    mi, si = -1, NO_SUB
                else:
                    if main[i] not in main_index:
                        raise ConfigError(
                            f"stored assignment {i}: main category {main[i]!r} is not in the "
                            "ontology; run a full clustering instead of an incremental one"
                        )
                    mi = main_index[main[i]]
                    si = -1 if sub[i] in (None, OTHER) else sub_index.get((mi, sub[i]), -1)
                m_arr.append(mi)
                s_arr.append(si)
                sm_arr.append(score_main[i])
                ss_arr.append(np.nan if score_sub[i] is None else score_sub[i])
                a_arr.append(-1 if aux_cluster[i] is None else int(aux_cluster[i]))
            rows[i] = r
        self.main_ = np.array(m_arr, np.int64)
        self.sub_ = np.array(s_arr, np.int64)
        self.score_main_ = np.array(sm_arr, np.float32)
        self.score_sub_ = np.array(ss_arr, np.float32)
        self.aux_ = np.array(a_arr, np.int64)
        self.count_ = np.bincount(rows, minlength=len(self.texts_)).astype(np.int64)
        self.item_rows_ = rows
        un = np.flatnonzero(self.main_ < 0)
        un_texts = [self.texts_[r] for r in un.tolist()]
        self._add_to_pool(
            self.texts_, self.main_, self._embed(un_texts), [self.tokens(t) for t in un_texts]
        )
        np.add.at(self.pool_weight_, self.row_pool_[un], self.count_[un].astype(np.float64))
        self.pool_aux_[self.row_pool_[un]] = self.aux_[un]  # the stored ids, to be kept
        self.aux_clusters_ = {c.id: c for c in aux_clusters}
        self._aux_members = {
            cid: frozenset(np.flatnonzero(self.pool_aux_ == cid).tolist())
            for cid in self.aux_clusters_
        }
        known = [int(a) for a in self.aux_ if a >= 0] + list(self.aux_clusters_)
        self.next_aux_id_ = max(known, default=-1) + 1
        if dbscan_state is not None and str(dbscan_state.get("pool_sha256")) != self._pool_digest():
            dbscan_state = None  # saved for another pool: rebuild
        self._cluster_pool(dbscan_state)
        return self

    def _pool_digest(self) -> str:
        return hashlib.sha256("\n".join(self.pool_keys_).encode()).hexdigest()

    def dbscan_state(self) -> dict[str, np.ndarray]:
        """DBSCAN's O(N) state over the pool (and a digest of the pool's texts), for
        `restore` in another process."""
        self._check_fitted()
        if self._dbscan_seen:
            state = self._dbscan.get_state()
        else:
            empty = np.zeros(0, np.int64)
            state = {"w": empty, "cnt": empty, "comp": empty, "adj": np.zeros((0, 2), np.int64)}
        return {**state, "pool_sha256": np.array(self._pool_digest())}
