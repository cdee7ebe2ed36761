"""revision.clustering: scores, the two-level algorithm, DBSCAN, incremental runs, ontology."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from revision.clustering import (
    HierarchicalClusterer,
    KeywordMatcher,
    load_ontology,
    parse_ontology,
    synonym_score,
    token_matches,
)
from revision.clustering.dbscan import IncrementalDBSCAN, dbscan, pairwise_block, radius_graph
from revision.errors import ConfigError
from revision.text import EmbeddingCache, MiniLMEncoder, TextEncoder, get_text_encoder
from revision.text.embed import CachedEncoder
from revision.warehouse import Warehouse

# -- scores --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "keyword", "match"),
    [
        ("colours", "colour", True),  # keyword inside token
        ("search", "search condition", True),  # token inside keyword
        ("cheaper", "cheaper", True),
        ("tag", "tag", True),  # short tokens match exactly…
        ("vintage", "tag", False),  # …but not as substrings
        ("men", "garment", False),
        ("便宜", "便宜", True),
        ("更便宜", "便宜", True),  # 2 CJK characters are enough
        ("颜色", "色", False),  # one is not
        ("premium", "cheap", False),
    ],
)
def test_substring_equivalence(token, keyword, match):
    assert token_matches(token, keyword) is match


def test_synonym_score_worked_example():
    # "Supplement cheaper dresses": supplement ✓ (listed), cheaper ✓ (cheap ⊂ cheaper), dresses ✗
    assert synonym_score(["supplement", "cheaper", "dresses"], ["cheap", "supplement"]) == 2 / 3
    assert synonym_score(["show", "colour", "variants"], ["colour", "variant"]) == 2 / 3
    assert synonym_score([], ["x"]) == 0.0


def test_keyword_matcher_equals_the_definition():
    rng = np.random.default_rng(0)
    vocab = [
        "price",
        "cheaper",
        "colour",
        "colours",
        "variant",
        "show",
        "text",
        "便宜",
        "颜色",
        "x",
    ]
    labels = [["cheap", "price"], ["colour", "variant"], ["便宜"], ["text description"]]
    lists = [list(rng.choice(vocab, size=rng.integers(0, 5))) for _ in range(50)]
    got = KeywordMatcher(labels).scores(lists)
    want = np.array([[synonym_score(t, k) for k in labels] for t in lists])
    assert np.allclose(got, want)


# -- a hand-computed example with a controlled encoder ------------------------------------------


def _e(i: int, dim: int = 8) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[i] = 1.0
    return v


class TableEncoder(TextEncoder):
    """Vectors by exact text; any other text is a test bug."""

    name = "table"
    dim = 8

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def encode(self, texts):
        return np.array([self.table[t] for t in texts], np.float32).reshape(-1, self.dim)


WORKED_ONTOLOGY = {
    "main_categories": [
        {
            "name": "Price",
            "keywords": ["price", "cheaper"],
            "subcategories": [
                {
                    "name": "Cheaper",
                    "keywords": ["cheaper", "budget"],
                    "tool": "price_segmentation",
                },
                {"name": "Premium", "keywords": ["premium"]},
            ],
        },
        {
            "name": "Colour",
            "keywords": ["colour", "variant"],
            "subcategories": [{"name": "Variants", "keywords": ["variant"]}],
        },
    ]
}
WORKED_VECTORS = {
    # labels: the comma-joined keyword lists
    "price, cheaper": _e(0),
    "colour, variant": _e(1),
    "cheaper, budget": _e(2),
    "premium": _e(3),
    "variant": _e(1),
    # actions
    "Supplement cheaper dresses": 0.6 * _e(0) + 0.48 * _e(2) + 0.64 * _e(5),
    "Show colour variants": _e(1),
    "Translate the page": _e(7),
}


def _worked(**params) -> HierarchicalClusterer:
    onto = parse_ontology(WORKED_ONTOLOGY)
    model = HierarchicalClusterer(onto, encoder=TableEncoder(WORKED_VECTORS), **params)
    return model.fit(["Supplement cheaper dresses", "Show colour variants", "Translate the page"])


def test_worked_example_by_hand():
    a, b, c = _worked().assignments()
    # a: tokens [supplement, cheaper, dresses]; s_syn(Price) = 1/3, s_sem(Price) = 0.6
    #    s_0.7 = 0.7/3 + 0.3·0.6 = 0.41333 > 0.40 → Price
    #    s_syn(Cheaper) = 1/3, s_sem(Cheaper) = 0.48 → s_0.6 = 0.2 + 0.4·0.48 = 0.392 > 0.35
    assert (a.main, a.sub) == ("Price", "Cheaper")
    assert a.score_main == pytest.approx(0.7 / 3 + 0.3 * 0.6, abs=1e-6)
    assert a.score_sub == pytest.approx(0.6 / 3 + 0.4 * 0.48, abs=1e-6)
    # b: s_syn(Colour) = 2/3 (colour, variant ⊂ variants), s_sem = 1 → 0.7·2/3 + 0.3
    #    s_syn(Variants) = 1/3, s_sem = 1 → 0.6/3 + 0.4 = 0.6
    assert (b.main, b.sub) == ("Colour", "Variants")
    assert b.score_main == pytest.approx(0.7 * 2 / 3 + 0.3, abs=1e-6)
    assert b.score_sub == pytest.approx(0.6, abs=1e-6)
    # c: nothing matches, orthogonal vector → unassigned, no subcategory, singleton → no cluster
    assert (c.main, c.sub, c.score_sub, c.aux_cluster) == (None, None, None, None)
    assert c.score_main == pytest.approx(0.0, abs=1e-6)


def test_thresholds_behave_as_the_paper_says():
    # tau1 just above a's 0.4133: a becomes unassigned; b (0.7667) stays
    a, b, _ = _worked(tau1=0.42).assignments()
    assert a.main is None and b.main == "Colour"
    # tau2 above a's 0.392: a stays in Price but goes to its "other" bucket
    a, *_ = _worked(tau2=0.40).assignments()
    assert (a.main, a.sub) == ("Price", "other")
    assert a.score_sub == pytest.approx(0.392, abs=1e-6)
    # a syntax-dominant alpha1 = 0.9: 0.9/3 + 0.1·0.6 = 0.36 < 0.40 → unassigned
    a, *_ = _worked(alpha1=0.9).assignments()
    assert a.main is None and a.score_main == pytest.approx(0.36, abs=1e-6)


def test_bad_parameters_name_themselves():
    with pytest.raises(ConfigError, match="alpha1"):
        _worked(alpha1=1.5)
    with pytest.raises(ConfigError, match="metric"):
        _worked(metric="jaccard")
    with pytest.raises(ConfigError, match="min_samples"):
        _worked(min_samples=0)


# -- DBSCAN without the N × N matrix ---------------------------------------------------------


def _blobs(seed: int, n: int = 240, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.repeat(rng.normal(size=(8, dim)), n // 8, 0) + rng.normal(scale=0.6, size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("metric", "eps"), [("cosine", 0.3), ("euclidean", 0.75), ("manhattan", 2.2)]
)
def test_sparse_and_streaming_dbscan_equal_dense_sklearn(seed, metric, eps):
    x = _blobs(seed)
    w = np.random.default_rng(seed).integers(1, 3, len(x)).astype(float)
    dense = DBSCAN(eps=eps, min_samples=3, metric="precomputed").fit_predict(
        pairwise_block(x, x, metric), sample_weight=w
    )
    # a comparison worth making: several clusters (and some noise) in every setting
    assert len(set(dense) - {-1}) >= 4 and (dense == -1).any(), sorted(set(dense))
    assert (dbscan(x, eps, 3, metric, w) == dense).all()  # sparse radius graph
    assert (dbscan(x, eps, 3, metric, w, max_edges=10) == dense).all()  # streaming


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("min_samples", [2, 5])
@pytest.mark.parametrize("max_edges", [20_000_000, 10])  # sparse-graph fit / streaming fit
def test_insertions_equal_a_fit_on_the_union(seed, min_samples, max_edges):
    rng = np.random.default_rng(seed)
    x = _blobs(seed + 10)[rng.permutation(240)]
    model = IncrementalDBSCAN(0.3, min_samples, "cosine", max_edges)
    model.fit(x[:100])
    weights = np.ones(100)
    for start in range(100, 240, 35):
        grown = rng.choice(start, size=8, replace=False)
        extra = rng.integers(1, 3, size=8).astype(float)
        labels = model.insert(
            x[start : start + 35], np.ones(len(x[start : start + 35])), grown, extra
        )
        weights = np.concatenate([weights, np.ones(len(x[start : start + 35]))])
        np.add.at(weights, grown, extra)
    dense = DBSCAN(eps=0.3, min_samples=min_samples, metric="precomputed").fit_predict(
        pairwise_block(x, x, "cosine"), sample_weight=weights
    )
    assert (labels == dense).all()


def _line(*xs: float) -> np.ndarray:
    return np.array([[v, 0.0] for v in xs], np.float32)


@pytest.mark.parametrize("max_edges", [20_000_000, 1])
def test_border_point_between_two_clusters_goes_where_sklearn_puts_it(max_edges):
    # B = 1.0…1.3 comes first, A = 0.0…0.3 later; 0.65 is a border point of both (not core).
    # scikit-learn labels it with the cluster whose lowest core index is smallest: B.
    b, a, bridge = _line(1.0, 1.1, 1.2, 1.3), _line(0.0, 0.1, 0.2, 0.3), _line(0.65)
    x = np.concatenate([b, a, bridge])
    dense = DBSCAN(eps=0.36, min_samples=4).fit_predict(x)
    assert dense[-1] == dense[0] != dense[4]  # the tie went to B
    assert (IncrementalDBSCAN(0.36, 4, "euclidean", max_edges).fit(x) == dense).all()
    # inserted in three steps: bridge first touches only A's cores… then B arrives first in order
    model = IncrementalDBSCAN(0.36, 4, "euclidean", max_edges)
    model.fit(x[:1])  # one point of B
    model.insert(x[1:4])  # rest of B
    model.insert(x[4:8])  # A
    assert (model.insert(x[8:]) == dense).all()
    # merging clusters through a new point renumbers consistently
    joined = np.concatenate([x, _line(0.5, 0.8)])
    assert (
        model.insert(_line(0.5, 0.8)) == DBSCAN(eps=0.36, min_samples=4).fit_predict(joined)
    ).all()


def test_radius_graph_is_sparse_and_bounded():
    x = _blobs(0)
    g = radius_graph(x, 0.3)
    assert g.nnz < 0.2 * len(x) ** 2
    assert radius_graph(x, 0.3, max_edges=10) is None


def test_duplicates_as_weights_equal_copies():
    x = _blobs(3, n=80)
    w = np.random.default_rng(3).integers(1, 4, len(x))
    copies = np.repeat(x, w, axis=0)
    full = DBSCAN(eps=0.3, min_samples=3, metric="cosine").fit_predict(copies)
    weighted = np.repeat(dbscan(x, 0.3, 3, "cosine", w), w)
    assert adjusted_rand_score(full, weighted) == 1.0


# -- the shipped ontology with real encoders -------------------------------------------------

CANONICAL = {
    "Refine search condition": ("Search refinement", "search_refinement"),
    "Supplement premium products": ("Price adjustment", "price_segmentation"),
    "Supplement cheaper products": ("Price adjustment", "price_segmentation"),
    "Show other colour variants": ("Variant expansion", "variant_expansion"),
    "Search by text description": ("Textual search", "text_search"),
    "Summarise results": ("Result presentation", "result_summary"),
    "Label target products": ("Result presentation", "product_labeling"),
    "Show material details": ("Information display", "metadata_display"),
    "Show care details": ("Information display", "metadata_display"),
    "Ask a preference question": ("Interaction", "preference_question"),
    "Show same type in another department": ("Search refinement", "search_refinement"),
}


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder()


def test_default_ontology_binds_every_component():
    onto = load_ontology()
    tools = {s.tool for _, s in onto.leaves()}
    assert tools == {
        "search_refinement", "price_segmentation", "variant_expansion", "text_search",
        "result_summary", "product_labeling", "metadata_display", "preference_question",
    }  # fmt: skip
    assert any("便宜" in m.keywords for m in onto.main_categories)


def test_canonical_actions_reach_their_tools(minilm):
    model = HierarchicalClusterer(encoder=minilm).fit(list(CANONICAL))
    for a in model.assignments():
        main, tool = CANONICAL[a.action]
        assert a.main == main, a
        assert model.tool_of(a.sub, a.main) == tool, a
    subs = {a.action: a.sub for a in model.assignments()}
    assert subs["Supplement premium products"] == "Premium supplement"
    assert subs["Supplement cheaper products"] == "Cheaper supplement"
    assert subs["Show same type in another department"] == "Department refinement"


def test_chinese_actions_with_centred_e5():
    actions = ["① 补充更便宜的商品", "补充高端商品", "展示其他颜色", "询问用户偏好",
               "显示洗涤保养说明",
               "推荐搭配的鞋子", "Recommend matching shoes", "Translate the page"]  # fmt: skip
    enc = get_text_encoder("auto", texts=actions)
    assert enc.name == "e5-centered"
    got = {a.action: a for a in HierarchicalClusterer(encoder=enc).fit(actions).assignments()}
    assert (got["① 补充更便宜的商品"].main, got["① 补充更便宜的商品"].sub) == (
        "Price adjustment",
        "Cheaper supplement",
    )
    assert got["补充高端商品"].sub == "Premium supplement"
    assert got["展示其他颜色"].main == "Variant expansion"
    assert got["询问用户偏好"].main == "Interaction"
    assert got["显示洗涤保养说明"].sub == "Care details"
    # outside the ontology: the English and the Chinese phrasing share an auxiliary cluster
    shoes_zh, shoes_en = got["推荐搭配的鞋子"], got["Recommend matching shoes"]
    assert shoes_zh.main is None and shoes_en.main is None
    assert shoes_zh.aux_cluster is not None and shoes_zh.aux_cluster == shoes_en.aux_cluster
    assert got["Translate the page"].aux_cluster is None


# -- incremental --------------------------------------------------------------------------------

OLD = [
    "Refine search condition", "Supplement cheaper products", "Show other colour variants",
    "Add more affordable options", "Recommend matching shoes", "Check stock availability",
    "Summarise results", "Translate the page", "Supplement cheaper products",
    "Ask the user which size they prefer",
]  # fmt: skip
NEW = [
    "Recommend matching accessories", "Check whether the size is in stock", "Show care details",
    "Supplement cheaper products", "Add luxury alternatives", "Estimate delivery time",
    "Show delivery time to the user's city", "Translate the page", "Label target products",
]  # fmt: skip


def _aux_partition(records) -> list[str]:
    # noise points are singletons; clusters compared up to renaming
    return [f"c{r['aux_cluster']}" if r["aux_cluster"] is not None else f"n{i}"
            for i, r in enumerate(records) if r["main"] is None]  # fmt: skip


def test_incremental_equals_full_run_for_assigned_items(minilm, tmp_path):
    cache = EmbeddingCache(Warehouse(tmp_path / "wh"))
    enc = CachedEncoder(minilm, cache)
    inc = HierarchicalClusterer(encoder=enc).fit(OLD)
    before = inc.records()
    embedded_before = enc.n_encoded
    new_records = inc.assign_incremental(NEW)
    # only the new distinct texts were embedded; the repeated ones were not
    assert enc.n_encoded - embedded_before == len(set(NEW) - set(OLD))
    assert len(new_records) == len(NEW)
    after = inc.records()
    # old assignments did not change (aux ids of old unassigned items may, as DBSCAN re-ran)
    strip = [{k: v for k, v in r.items() if k != "aux_cluster"} for r in before]
    assert [{k: v for k, v in r.items() if k != "aux_cluster"} for r in after[: len(OLD)]] == strip
    full = HierarchicalClusterer(encoder=enc).fit(OLD + NEW).records()
    for r_inc, r_full in zip(after, full, strict=True):
        assert {k: r_inc[k] for k in ("action", "main", "sub", "score_main", "score_sub")} == {
            k: r_full[k] for k in ("action", "main", "sub", "score_main", "score_sub")
        }
    assert adjusted_rand_score(_aux_partition(after), _aux_partition(full)) == 1.0
    assert any(r["aux_cluster"] is not None for r in after)


def test_surviving_aux_clusters_keep_their_ids(minilm):
    model = HierarchicalClusterer(encoder=minilm).fit(OLD)
    shoes = model.assignments()[4]
    assert shoes.action == "Recommend matching shoes"
    # a second shoes-like action joins without renumbering the old clusters
    ids_before = {a.action: a.aux_cluster for a in model.assignments() if a.aux_cluster is not None}
    model.assign_incremental(["Recommend matching sneakers"])
    ids_after = {a.action: a.aux_cluster for a in model.assignments() if a.aux_cluster is not None}
    for action, cid in ids_before.items():
        assert ids_after[action] == cid


def test_assign_before_fit_is_an_error():
    with pytest.raises(ConfigError, match="not fitted"):
        HierarchicalClusterer().assign_incremental(["x"])


# -- ontology validation -----------------------------------------------------------------------


def _write(tmp_path, text: str):
    p = tmp_path / "onto.yaml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("main_categories: []", r"main_categories: .*at least 1"),
        ("main_categories:\n  - name: Price\n", r"main_categories\[0\]\.keywords: Field required"),
        (
            "main_categories:\n  - name: Price\n    keywords: price, cheaper\n",
            r"main_categories\[0\]\.keywords: must be a list",
        ),
        (
            "main_categories:\n  - name: Price\n    keywords: []\n",
            r"main_categories\[0\]\.keywords: needs at least one keyword",
        ),
        (
            "main_categories:\n  - name: A\n    keywords: [a]\n    subcategories:\n"
            "      - {name: B, keywords: [b]}\n      - {name: b, keywords: [c]}\n",
            r"main_categories\[0\]: subcategories\[1\]: duplicate name 'b'",
        ),
        (
            "main_categories:\n  - name: A\n    keywords: [a]\n    subcategories:\n"
            "      - {name: Other, keywords: [b]}\n",
            r"main_categories\[0\]\.subcategories\[0\]\.name: 'other' is reserved",
        ),
        (
            "main_categories:\n  - name: A\n    keywords: [a]\n    subcategories:\n"
            "      - {name: B, keywords: [b], tool: Price Tool}\n",
            r"main_categories\[0\]\.subcategories\[0\]\.tool",
        ),
        (
            "main_categories:\n  - name: A\n    keywords: [a\n",
            r"line \d+, column \d+.*not valid YAML",
        ),
        ("- just a list\n", r"expected a mapping with key 'main_categories'"),
    ],
)
def test_ontology_errors_name_file_and_key(tmp_path, yaml_text, message):
    path = _write(tmp_path, yaml_text)
    with pytest.raises(ConfigError, match=message) as err:
        load_ontology(path)
    assert str(path) in str(err.value)


def test_ontology_missing_file_and_extra_keys(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_ontology(tmp_path / "nope.yaml")
    onto = load_ontology(
        _write(
            tmp_path,
            "owner: search-team\nmain_categories:\n  - name: A\n    keywords: [Alpha,  beta ]\n"
            "    colour: blue\n    subcategories:\n      - {name: B, keywords: [b], key: b_tool}\n",
        )
    )
    assert onto.main_categories[0].keywords == ["alpha", "beta"]  # normalised
    assert onto.model_extra == {"owner": "search-team"}  # more keys may be added
    assert onto.main_categories[0].subcategories[0].model_extra == {"key": "b_tool"}
