"""The paper's scores: synonym overlap, semantic similarity, and their alpha-combination.

    s_syn(a, l)   = |{t in tokens(a) : t matches some k in K_l}| / |tokens(a)|
    s_sem(a, l)   = cos(emb(a), emb(", ".join(K_l)))
    s_alpha(a, l) = alpha * s_syn(a, l) + (1 - alpha) * s_sem(a, l)

"Substring equivalence": a token matches a keyword when they are equal, or one contains the
other and the shorter one is long enough to mean something (4 characters for Latin words,
2 for CJK). Without that floor `tag` would match `vintage` and `色` every colour word; an exact
match always counts, so short keywords still work. The semantic label text leaves out CJK
keywords when the encoder is English-only (MiniLM reads them as unknown tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from revision.text.tokenize import has_cjk

MIN_SUBSTRING_LATIN = 4
MIN_SUBSTRING_CJK = 2


def _floor(text: str) -> int:
    return MIN_SUBSTRING_CJK if has_cjk(text) else MIN_SUBSTRING_LATIN


def token_matches(token: str, keyword: str) -> bool:
    """Substring equivalence between one token and one keyword (both lower-case).

    >>> token_matches("colours", "colour"), token_matches("search", "search condition")
    (True, True)
    >>> token_matches("vintage", "tag"), token_matches("tag", "tag")
    (False, True)
    """
    if token == keyword:
        return True
    short, long_ = (token, keyword) if len(token) <= len(keyword) else (keyword, token)
    return len(short) >= _floor(short) and short in long_


def synonym_score(tokens: Sequence[str], keywords: Sequence[str]) -> float:
    """Fraction of `tokens` that match at least one keyword; 0.0 for no tokens.

    >>> synonym_score(["supplement", "cheaper", "dresses"], ["cheap", "price", "supplement"])
    0.6666666666666666
    """
    if not tokens:
        return 0.0
    hits = sum(any(token_matches(t, k) for k in keywords) for t in tokens)
    return hits / len(tokens)


class KeywordMatcher:
    """Vectorised `synonym_score` of many token lists against many labels.

    Each distinct token is compared with the keywords once (memoised), then the per-action
    scores are one sparse product: (actions × tokens) counts @ (tokens × labels) matches.
    """

    def __init__(self, keyword_lists: Sequence[Sequence[str]]):
        self.keyword_lists = [list(k) for k in keyword_lists]
        self._keywords = sorted({k for ks in self.keyword_lists for k in ks})
        kw_index = self._index = {k: i for i, k in enumerate(self._keywords)}
        # keyword × label incidence
        rows = [kw_index[k] for ks in self.keyword_lists for k in ks]
        cols = [j for j, ks in enumerate(self.keyword_lists) for _ in ks]
        self._kw_label = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, cols)),
            shape=(len(self._keywords), len(self.keyword_lists)),
        )
        self._kw_label.data[:] = 1.0
        self._kw_label_dense = self._kw_label.toarray() > 0
        # "token inside keyword": one C-level find over all keywords joined by newlines
        self._joined = "\n".join(self._keywords)
        self._starts = np.cumsum([0] + [len(k) + 1 for k in self._keywords[:-1]])
        # "keyword inside token": only keywords long enough to count as a substring
        self._inner = [(i, k) for i, k in enumerate(self._keywords) if len(k) >= _floor(k)]
        self._memo: dict[str, np.ndarray] = {}

    @property
    def n_labels(self) -> int:
        return len(self.keyword_lists)

    def token_labels(self, token: str) -> np.ndarray:
        """Boolean (n_labels,) vector: which labels' keyword lists this token matches."""
        hit = self._memo.get(token)
        if hit is None:
            kws = {i for i, k in self._inner if len(k) < len(token) and k in token}
            if len(token) >= _floor(token) and "\n" not in token:
                pos = self._joined.find(token)
                while pos >= 0:
                    kws.add(int(np.searchsorted(self._starts, pos, side="right")) - 1)
                    pos = self._joined.find(token, pos + 1)
            else:
                exact = self._index.get(token)
                if exact is not None:
                    kws.add(exact)
            hit = self._kw_label_dense[sorted(kws)].any(axis=0)
            self._memo[token] = hit
        return hit

    def scores(self, token_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """(n_actions, n_labels) float32 synonym scores."""
        vocab: dict[str, int] = {}
        indptr = [0]
        indices: list[int] = []
        for toks in token_lists:
            for t in toks:
                indices.append(vocab.setdefault(t, len(vocab)))
            indptr.append(len(indices))
        n = len(token_lists)
        if not vocab:
            return np.zeros((n, self.n_labels), np.float32)
        counts = sp.csr_matrix(
            (np.ones(len(indices), np.float32), np.array(indices), np.array(indptr)),
            shape=(n, len(vocab)),
        )
        match = np.stack([self.token_labels(t) for t in vocab]).astype(np.float32)
        hits = np.asarray(counts @ match, dtype=np.float32)
        lengths = np.diff(np.array(indptr)).astype(np.float32)
        return hits / np.maximum(lengths, 1.0)[:, None]


def label_text(keywords: Sequence[str], multilingual: bool = True) -> str:
    """The text embedded for a label: its keywords joined with commas (the paper's
    "concatenation of K_l"); CJK keywords are left out for an English-only encoder."""
    kws = [k for k in keywords if multilingual or not has_cjk(k)] or list(keywords)
    return ", ".join(kws)


def semantic_scores(action_vecs: np.ndarray, label_vecs: np.ndarray) -> np.ndarray:
    """Cosine similarities of unit vectors: (n_actions, n_labels)."""
    return np.asarray(action_vecs, np.float32) @ np.asarray(label_vecs, np.float32).T


def combine(alpha: float, syn: np.ndarray, sem: np.ndarray) -> np.ndarray:
    """s_alpha = alpha * s_syn + (1 - alpha) * s_sem."""
    return alpha * syn + (1.0 - alpha) * sem
