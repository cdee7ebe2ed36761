"""revision.text: preprocessing, tokenising (jieba), encoders, e5 calibration, embedding cache."""

from __future__ import annotations

import numpy as np
import pytest

from revision.errors import ConfigError
from revision.text import (
    CachedEncoder,
    CenteredEncoder,
    E5Encoder,
    EmbeddingCache,
    MiniLMEncoder,
    TextEncoder,
    choose_encoder,
    get_text_encoder,
    has_cjk,
    preprocess,
    strip_markers,
    tokenize,
)
from revision.text.embed import text_key
from revision.warehouse import Warehouse


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("1. Refine search condition", "Refine search condition"),
        ("(2) Supplement cheaper products", "Supplement cheaper products"),
        ("2) Summarise results", "Summarise results"),
        ("[3] Show care details", "Show care details"),
        ("① 展示其他颜色", "展示其他颜色"),
        ("⑵ Label target products", "Label target products"),
        ("一、补充更便宜的商品", "补充更便宜的商品"),
        ("（４）询问用户偏好", "询问用户偏好"),
        ("【5】按颜色筛选", "按颜色筛选"),
        ("Step 2: label target products", "label target products"),
    ],
)
def test_strip_markers(raw, clean):
    assert strip_markers(raw) == clean


def test_punctuation_removed_but_words_and_numbers_kept():
    assert preprocess("Women's T-shirt, colour: black!") == "Women's T shirt colour black"
    assert tokenize("Show 1.5 kg items; then 2) stop") == [
        "show",
        "1.5",
        "kg",
        "items",
        "2",
        "stop",
    ]


def test_english_tokens_drop_stopwords_unless_asked():
    assert tokenize("1. Search by text description") == ["search", "text", "description"]
    assert tokenize("Search by text", stopwords=False) == ["search", "by", "text"]
    assert tokenize("Search by text", stopwords=["text"]) == ["search", "by"]


def test_chinese_goes_through_jieba():
    # jieba splits the run into words; 更 and 的 are function words
    assert tokenize("补充更便宜的商品") == ["补充", "便宜", "商品"]
    assert tokenize("展示其他颜色") == ["展示", "其他", "颜色"]
    assert tokenize("按颜色筛选结果；再总结") == ["颜色", "筛选", "结果", "再", "总结"]
    # mixed text: Latin run by regex, CJK run by jieba
    assert tokenize("Show 其他颜色 variants") == ["show", "其他", "颜色", "variants"]


def test_has_cjk_and_auto_choice():
    assert has_cjk("补充") and not has_cjk("Refine search")
    assert choose_encoder(["Refine search", "Show care"]) == "minilm"
    assert choose_encoder(["Refine search", "展示其他颜色"]) == "e5-centered"


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown text encoder 'bert'.*minilm.*e5-centered"):
        get_text_encoder("bert")
    with pytest.raises(ConfigError, match="texts"):
        get_text_encoder("auto")


class CountingEncoder(TextEncoder):
    """Deterministic fake model that records what it was asked to embed."""

    name = "counting"
    dim = 8

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen.extend(texts)
        rng = [np.random.default_rng(abs(hash(t)) % 2**32).normal(size=self.dim) for t in texts]
        x = np.array(rng, np.float32).reshape(len(texts), self.dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cache_embeds_each_distinct_text_once_across_runs(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    base = CountingEncoder()
    enc = CachedEncoder(base, EmbeddingCache(wh))
    v1 = enc.encode(["a", "b", "a", "c", "b"])
    assert base.seen == ["a", "b", "c"]  # duplicates embedded once
    assert np.allclose(v1[0], v1[2]) and np.allclose(v1[1], v1[4])
    # a new process (new cache object) finds them in the warehouse
    base2 = CountingEncoder()
    enc2 = CachedEncoder(base2, EmbeddingCache(wh))
    v2 = enc2.encode(["c", "d", "a"])
    assert base2.seen == ["d"]
    assert np.allclose(v2[0], v1[3]) and np.allclose(v2[2], v1[0])
    assert wh.exists("cache/text_embeddings")


def test_cache_merges_many_small_files(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    enc = CachedEncoder(CountingEncoder(), EmbeddingCache(wh, max_files=3))
    for t in "abcdef":
        enc.encode([t])
    cache = EmbeddingCache(wh, max_files=3)
    found, vecs = cache.get("counting", [text_key(t) for t in "abcdef"])
    assert found.all() and vecs.shape == (6, 8)
    files = list((wh.table_dir("cache/text_embeddings") / "encoder=counting").glob("*.parquet"))
    assert len(files) == 1


# -- real models (each encoder object loads its own, on first use) -------------------------------

RELATED = [
    ("Show other colour variants", "Show the same design in different colours"),
    ("Summarise results", "Give a short summary of the search results"),
    ("Show material details", "Display fabric composition"),
]
CROSS = [
    ("补充更便宜的商品", "Supplement cheaper products"),
    ("展示其他颜色", "Show other colour variants"),
]
UNRELATED = [
    ("Supplement cheaper products", "Show care details"),
    ("The weather is nice today", "Refine search condition"),
    ("补充更便宜的商品", "询问用户偏好"),
    ("展示其他颜色", "Summarise results"),
    ("Label target products", "Ask a preference question"),
]


def _cos(enc: TextEncoder, pairs) -> np.ndarray:
    a = enc.encode([p[0] for p in pairs])
    b = enc.encode([p[1] for p in pairs])
    return (a * b).sum(1)


@pytest.fixture(scope="session")
def e5() -> E5Encoder:
    return E5Encoder()


def test_minilm_is_a_unit_norm_sentence_bert():
    enc = MiniLMEncoder()
    v = enc.encode(["Refine search condition", "Narrow down the search filters"])
    assert v.shape == (2, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert _cos(enc, RELATED).min() > 0.4
    assert _cos(enc, UNRELATED[:2]).max() < 0.3


def test_raw_e5_cosines_are_high_even_for_unrelated_phrases(e5):
    # the reason CenteredEncoder exists: with these, eps = 0.5 would merge everything
    assert _cos(e5, UNRELATED).min() > 0.7


def test_centred_e5_makes_cosines_mean_what_sentence_bert_cosines_mean(e5):
    enc = CenteredEncoder(e5)
    assert enc.name == "e5-centered"
    v = enc.encode(["a phrase", "另一个短语"])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    unrelated, related, cross = _cos(enc, UNRELATED), _cos(enc, RELATED), _cos(enc, CROSS)
    assert unrelated.max() < 0.3  # well inside DBSCAN's eps = 0.5 distance: not neighbours
    assert related.min() > 0.4
    assert cross.min() > 0.4  # English–Chinese paraphrases still meet
    assert related.mean() - unrelated.mean() > 0.3


def test_get_text_encoder_wraps_cache_and_centres(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    enc = get_text_encoder("e5-centered", warehouse=wh)
    assert isinstance(enc, CenteredEncoder) and isinstance(enc.base, CachedEncoder)
    auto = get_text_encoder("auto", texts=["Refine search"], warehouse=wh)
    assert auto.name == "minilm" and not auto.multilingual


def test_e5_prefixes_and_an_engine_that_owns_its_threads(e5, monkeypatch):
    import os

    from revision.text import E5Model, MemoEncoder

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    model = E5Model(threads=1)
    passages = E5Encoder(prefix="passage", model=model)
    queries = E5Encoder(model=model)
    assert (passages.name, queries.name) == ("e5-passage", "e5")
    text = "black striped cotton top"
    p, q = passages.encode([text])[0], queries.encode([text])[0]
    assert not np.allclose(p, q) and p @ q > 0.8  # two prefixes, one meaning
    np.testing.assert_allclose(q, e5.encode([text])[0], atol=1e-6)  # "e5" = query prefix
    assert model.threads == 1 and "OMP_NUM_THREADS" not in os.environ
    assert get_text_encoder("e5-passage").name == "e5-passage"
    with pytest.raises(ConfigError, match="valid: query, passage"):
        E5Encoder(prefix="document")

    memo = MemoEncoder(counting := CountingEncoder(), size=2)
    first = memo.encode(["a", "b", "a"])
    assert counting.seen == ["a", "b"] and np.allclose(first[0], first[2])
    memo.encode(["c"])  # evicts "a", the least recently used
    memo.encode(["b", "a"])
    assert counting.seen == ["a", "b", "c", "a"]
    memo.clear()
    memo.encode(["b"])
    assert counting.seen[-1] == "b"


# -- the product-text vocabulary -----------------------------------------------------------------


def test_one_vocabulary_for_mining_and_tools():
    from revision.text.vocabulary import (
        CARE_BY_MATERIAL,
        DELICATE,
        MATERIALS,
        care_phrases,
        care_sentences,
        materials_in,
    )

    assert list(MATERIALS) == sorted(MATERIALS, key=lambda m: (-len(m), m))  # longest first
    assert set(MATERIALS) >= DELICATE | {"merino", "rib-knit", "metal"}
    assert set(CARE_BY_MATERIAL) <= set(MATERIALS)
    assert materials_in("Top in organic cotton jersey with merino wool trims") == [
        "organic cotton",
        "jersey",
        "merino wool",
    ]
    assert materials_in("A cotton-blend top") == []  # part of a longer word, not the fibre
    assert care_phrases("Hand-wash only. Washing at 30°C. Do not bleach.") == [
        "hand-wash",
        "washing at 30°c",
        "do not bleach",
    ]
    assert care_sentences("Top in linen. Machine washable. Easy-iron finish.") == [
        "Machine washable.",
        "Easy-iron finish.",
    ]
    assert care_phrases("Environmentally friendly") == []
