"""Preprocessing and tokenisation of short action texts (paper §III-B(b)).

Index markers (`1.`, `(2)`, `①`, `[3]`, `2)`, `一、`) and punctuation are removed, then Latin
runs are split by a regex word tokenizer and CJK runs by jieba. Function words (`the`, `by`,
`的`, …) are dropped by default: the synonym score is a *fraction* of tokens, and a token that
can never be a keyword would only dilute it. A domain can add its own stop words (the ontology's
`stopwords:` key). Trade-off: a regex tokenizer keeps no morphology (`colours` ≠ `colour`), which
the synonym score's substring equivalence makes up for.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

# Markers that number the items of a list: at the start of the text (`1.`, `2)`, `一、`), or
# anywhere when they are bracketed or circled (`(2)`, `[3]`, `（4）`, `①`, `⑴`, `⒈`, `❶`).
_LEADING_MARKER = re.compile(
    r"^\s*(?:(?:step\s*)?\d{1,3}\s*[.)、:：．]|[一二三四五六七八九十]{1,3}\s*[、.．]|[a-z]\s*\))(?=\s|\D|$)",
    re.IGNORECASE,
)
_BRACKET_MARKER = re.compile(
    r"[(（\[【]\s*(?:\d{1,3}|[a-z]|[一二三四五六七八九十]{1,3})\s*[)）\]】]"
)
_CIRCLED = re.compile("[\u2460-\u24ff\u2776-\u2793\u3251-\u325f\u32b1-\u32bf]")
_SPACES = re.compile(r"\s+")
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_RUNS = re.compile("([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)")
_WORD = re.compile(r"[^\W_]+(?:['.][^\W_]+)*")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


ENGLISH_STOPWORDS = _words(
    """a an the and or nor but of to in on at by for from with without into onto about as than
    then so if is are was were be been being am do does did this that these those it its it's
    their them they there here i me my we our you your he she his her him please just also
    very more most some any all each per via up down out off over under again whether can
    could would should will may might must how what when where who whom only between among
    such"""
)
# Function words and particles; content words such as 其他 ("other") stay.
CHINESE_STOPWORDS = _words(
    """的 了 和 与 及 或 在 把 被 给 对 将 等 是 着 过 吗 呢 吧 啊 呀 也 都 就 还 而 并 更 很
    最 让 向 从 为 以 于 之 其 该 此 这 那 这些 那些 一些 一个 一下 个 请 按 是否 可以 每个 中 到"""
)
STOPWORDS = ENGLISH_STOPWORDS | CHINESE_STOPWORDS


def has_cjk(text: str) -> bool:
    """True when `text` contains a Chinese, Japanese or Korean character."""
    return bool(_CJK.search(text))


def strip_markers(text: str) -> str:
    """Remove list index markers: `1.`, `2)`, `(2)`, `[3]`, `（4）`, `【5】`, `①`, `⑴`, `一、`.

    >>> strip_markers("1. Refine search condition")
    'Refine search condition'
    >>> strip_markers("① 展示其他颜色 (2)")
    '展示其他颜色'
    """
    text = _CIRCLED.sub(" ", text)  # before NFKC, which would turn ① into a plain 1
    text = unicodedata.normalize("NFKC", text)  # full-width （４） and １． become ASCII
    text = _BRACKET_MARKER.sub(" ", text)
    text = _LEADING_MARKER.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


class _PunctuationTable(dict):
    """`str.translate` table filled on demand: punctuation and symbols → space, else itself."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        value = " " if unicodedata.category(ch)[0] in "PS" else ch
        self[code] = value
        return value


_TABLE = _PunctuationTable()
_APOSTROPHE = re.compile(r"(?<=[^\W_])['’](?=[^\W_])")
_DECIMAL = re.compile(r"(?<=\d)[.,](?=\d)")
_KEEP_APOSTROPHE, _KEEP_DECIMAL = "\ue000", "\ue001"  # private-use: not punctuation


def remove_punctuation(text: str) -> str:
    """Replace every Unicode punctuation or symbol character with a space (`T-shirt` → `T shirt`).

    Apostrophes inside words (`women's`) and decimal points inside numbers (`1.5`) are kept.
    """
    text = _DECIMAL.sub(_KEEP_DECIMAL, _APOSTROPHE.sub(_KEEP_APOSTROPHE, text))
    text = text.translate(_TABLE).replace(_KEEP_APOSTROPHE, "'").replace(_KEEP_DECIMAL, ".")
    return _SPACES.sub(" ", text).strip()


def preprocess(text: str) -> str:
    """Markers then punctuation removed, whitespace collapsed (case kept)."""
    return remove_punctuation(strip_markers(text))


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter is not for our users
    jieba.initialize()
    return jieba


def tokenize(
    text: str, *, stopwords: bool | Iterable[str] = True, preprocessed: bool = False
) -> list[str]:
    """Lower-cased tokens of `text`: regex words for Latin runs, jieba words for CJK runs.

    `stopwords=True` drops `STOPWORDS`; pass a collection to drop those instead (the default set
    is not added; a frozenset is used as is, so give it lower-case), or False to keep every
    token.

    >>> tokenize("1. Search by text description")
    ['search', 'text', 'description']
    """
    if not preprocessed:
        text = preprocess(text)
    text = text.lower()
    if stopwords is True:
        stop = STOPWORDS
    elif stopwords is False:
        stop = frozenset()
    elif isinstance(stopwords, frozenset):
        stop = stopwords
    else:
        stop = frozenset(w.lower() for w in stopwords)
    tokens: list[str] = []
    for i, run in enumerate(_RUNS.split(text)):
        if not run.strip():
            continue
        if i % 2:  # a CJK run (odd positions of a split on a capturing group)
            tokens.extend(w for w in _jieba().lcut(run) if w.strip())
        else:
            tokens.extend(_WORD.findall(run))
    return [t for t in tokens if t not in stop]
