"""Plug-in point of the clustering stage: how an auxiliary cluster gets its name.

`KeywordNamer` (embedded, deterministic) joins the cluster's top c-TF-IDF keywords;
`revision.clustering.llm.LLMNamer` asks an OpenAI-compatible backend when one is configured.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class ClusterSummary:
    """What a namer sees of a cluster: its size, top keywords and most frequent texts."""

    id: int
    size: int
    keywords: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)


class ClusterNamer:
    """Base class: `name_clusters(clusters)` returns one short name per cluster."""

    name = "base"

    def name_clusters(self, clusters: Sequence[ClusterSummary]) -> list[str]:
        raise NotImplementedError


class KeywordNamer(ClusterNamer):
    """Name = the top `n` keywords joined by " / " (the most frequent text if none)."""

    name = "keywords"

    def __init__(self, n: int = 3):
        self.n = n

    def name_clusters(self, clusters: Sequence[ClusterSummary]) -> list[str]:
        out = []
        for c in clusters:
            if c.keywords:
                out.append(" / ".join(c.keywords[: self.n]))
            else:
                out.append((c.examples[0] if c.examples else f"cluster {c.id}")[:60])
        return out


def ctfidf_keywords(groups: Sequence[Counter], top_k: int = 5) -> list[list[str]]:
    """Top keywords per group by class-based TF-IDF (BERTopic's c-TF-IDF).

    score(t, c) = tf(t, c) · log(1 + A / f(t)), with tf the token's share of group c, f(t) its
    count over all groups and A the average number of tokens per group. Words common to every
    group score low, words frequent in one group high. One-character tokens (stray letters,
    digits) are never keywords.

    >>> ctfidf_keywords([Counter(shoes=3, match=1), Counter(match=1, stock=2, x=9)], top_k=1)
    [['shoes'], ['stock']]
    """
    total: Counter = Counter()
    for g in groups:
        total.update(g)
    if not total:
        return [[] for _ in groups]
    avg = sum(total.values()) / max(len(groups), 1)
    out = []
    for g in groups:
        n = sum(g.values()) or 1
        scored = sorted(
            ((c / n) * math.log(1 + avg / total[t]), t) for t, c in g.items() if len(t) > 1
        )
        scored.sort(key=lambda st: (-st[0], st[1]))
        out.append([t for _, t in scored[:top_k]])
    return out
