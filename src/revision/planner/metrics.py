"""How a planner's plans and thinking compare with the references (paper Tables IV and VI).

Answers:
- **tool match**: per request, the overlap of the planned and reference tool sets (Jaccard:
  |A ∩ B| / |A ∪ B|; partial credit for a partly right plan), averaged, in percent;
- **order match**: the share of requests whose plan is the reference sequence exactly;
- **set match**: the share whose plan has the reference's tools in any order;
- **tools per plan**: the mean plan length (a planner that lists everything is no planner).

Thinking: BLEU-4, CIDEr, METEOR and ROUGE-L from pycocoevalcap (METEOR needs Java; it is left
out, with a note, where Java is missing), on text segmented with jieba where it holds Chinese;
plus a semantic score: an LLM judge through the chat client when one is configured, else the
cosine similarity of sentence embeddings.
"""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

_CJK = re.compile(r"[\u3400-\u9fff]")


def _pct(x: float) -> float:
    return round(100.0 * x, 2)


def answer_metrics(
    predicted: Sequence[Sequence[int]],
    reference: Sequence[Sequence[int]],
    categories: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Tool match, order match, set match (percent) and tools per plan, overall and per main
    category of the reference.

    >>> answer_metrics([[2, 6], [3]], [[2, 6], [3, 1]])["tool_match"]
    75.0
    """
    if len(predicted) != len(reference):
        raise ValueError("as many predictions as references are needed")
    rows = []
    for p, r in zip(predicted, reference, strict=True):
        a, b = set(p), set(r)
        jaccard = len(a & b) / len(a | b) if a | b else 1.0
        rows.append((jaccard, list(p) == list(r), a == b, len(p)))

    def summary(idx: Sequence[int]) -> dict[str, Any]:
        if not idx:
            return {"requests": 0}
        part = [rows[i] for i in idx]
        return {
            "requests": len(part),
            "tool_match": _pct(float(np.mean([x[0] for x in part]))),
            "order_match": _pct(float(np.mean([x[1] for x in part]))),
            "set_match": _pct(float(np.mean([x[2] for x in part]))),
            "tools_per_plan": round(float(np.mean([x[3] for x in part])), 3),
        }

    out = summary(range(len(rows)))
    if categories is not None:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(categories):
            groups[c or "(none)"].append(i)
        out["per_category"] = {c: summary(i) for c, i in sorted(groups.items())}
    return out


def _tokens(text: str) -> str:
    """Lower-cased words; Chinese segmented with jieba, so n-grams mean words in both."""
    if _CJK.search(text):
        import jieba

        return " ".join(w for w in jieba.lcut(text.lower()) if w.strip())
    return " ".join(re.findall(r"\w+|[^\w\s]", text.lower()))


def thinking_metrics(
    predicted: Sequence[str], reference: Sequence[str], *, judge=None
) -> dict[str, Any]:
    """BLEU-4, CIDEr, METEOR, ROUGE-L (x100) of the thinking texts, and a semantic score:
    `judge(predicted, reference) -> list[float in 0..1]` when given, else sentence-embedding
    cosine similarity."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not predicted:
        return {}
    gts = {str(i): [_tokens(r) or "."] for i, r in enumerate(reference)}
    res = {str(i): [_tokens(p) or "."] for i, p in enumerate(predicted)}
    out: dict[str, Any] = {
        "bleu4": round(100 * Bleu(4).compute_score(gts, res, verbose=0)[0][3], 2),
        "cider": round(100 * Cider().compute_score(gts, res)[0], 2),
        "rouge_l": round(100 * Rouge().compute_score(gts, res)[0], 2),
    }
    if shutil.which("java"):
        from pycocoevalcap.meteor.meteor import Meteor

        out["meteor"] = round(100 * Meteor().compute_score(gts, res)[0], 2)
    else:
        out["meteor"] = None
        out["note"] = "METEOR needs Java (apt install default-jre-headless)"
    if judge is not None:
        out["judge"] = round(100 * float(np.mean(judge(list(predicted), list(reference)))), 2)
        out["judge_kind"] = "llm"
    else:
        from revision.text.embed import get_text_encoder

        enc = get_text_encoder("auto", texts=[*predicted, *reference])
        a, b = enc.encode(list(predicted)), enc.encode(list(reference))
        out["judge"] = round(100 * float(np.mean(np.sum(a * b, axis=1))), 2)
        out["judge_kind"] = f"embedding cosine ({enc.name})"
    return out
