"""Clustering benchmark: the paper's ablations (Tables V and VII) and the 100k scaling run.

1. Ablations. `score_settings(pairs)` clusters (action text, hidden intent) pairs under every
   alpha/tau setting of Table V and every DBSCAN metric of Table VII and scores the predicted
   groups (main/sub leaf, auxiliary cluster, or a singleton for noise) against the hidden intents
   with purity, NMI and ARI, plus coverage (share assigned to a main category). Until the
   simulator and the miner produce mined signals with hidden intents, it is fed SYNTHETIC_SET:
   paraphrased actions for 10 intents (8 the shipped ontology covers, 2 it does not), in English
   and Chinese, written by hand for this benchmark.
2. Scaling. 100,000 actions generated from templates (realistic duplication: canonical texts
   are frequent, paraphrases rare; about a third fall outside the ontology) are clustered in
   full, then 10,000 more incrementally. Embedding is excluded from the timings: every distinct
   text is embedded once into the warehouse cache first (its time is reported separately), so
   the timed runs read vectors from the cache. Peak memory: the process's max RSS and the
   tracemalloc peak of the clustering call. A separate stress test runs the bounded DBSCAN on a
   synthetic unassigned pool of up to 50,000 distinct points.

Run by `make bench`; writes markdown to stdout and JSON to bench/out/clustering.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from revision.clustering import HierarchicalClusterer, load_ontology
from revision.clustering.dbscan import dbscan
from revision.text import EmbeddingCache, get_text_encoder, strip_markers
from revision.warehouse import Warehouse

# -- the synthetic paraphrase set ------------------------------------------------------------------

SYNTHETIC_SET: dict[str, list[str]] = {
    "cheaper": [
        "Supplement cheaper products", "Add more affordable options",
        "Show lower-priced alternatives",
        "Supplement budget versions of this item", "Include cheaper dresses of the same type",
        "Add items in a lower price range", "Offer inexpensive alternatives",
        "Supplement discounted similar products", "Show similar items at a lower price",
        "Add budget-friendly choices", "补充更便宜的商品", "增加平价的同类商品",
        "推荐价格更低的款式",
        "补充性价比高的商品", "展示低价替代品", "补充实惠的选择",
    ],
    "premium": [
        "Supplement premium products", "Add luxury alternatives", "Show higher-end versions",
        "Supplement designer items of the same style", "Include more expensive options",
        "Add high-quality premium brands", "Offer upscale alternatives",
        "Show pricier versions of this bag", "Supplement luxury products in the same category",
        "Add premium materials versions", "补充高端商品", "增加奢侈品牌的同款",
        "推荐更贵的高档款式",
        "补充高品质的商品", "展示高端替代品", "补充更贵的选择",
    ],
    "other_colour": [
        "Show other colour variants", "Show this dress in other colours",
        "Display the other colourways of this design", "Show the same design in different colors",
        "List colour variants of the matched product", "Offer the same model in other shades",
        "Show available colors for this item", "Expand to the other colour versions",
        "Show this jacket in black and navy", "Show the other color options",
        "展示其他颜色", "展示同款其他颜色", "显示这款的其他配色", "展示同一设计的不同颜色",
        "列出商品的颜色变体", "推荐同款不同色",
    ],
    "same_pattern": [
        "Refine search by pattern", "Filter results to the same striped pattern",
        "Narrow the results to the floral print", "Refine search condition to the same pattern",
        "Restrict results to checked patterns", "Filter by the printed pattern of the query",
        "Show only items with the same dotted pattern", "Refine by the plaid pattern",
        "Narrow down to striped items", "Filter results by print type",
        "按图案筛选结果", "筛选相同条纹的商品", "细化搜索条件为同样的花纹", "只看印花相同的商品",
        "按格子图案筛选", "缩小到同样图案的结果",
    ],
    "material": [
        "Show material details", "Display fabric composition", "Show the material information",
        "Display what the item is made of", "Show the fabric of each result",
        "List the material composition", "Display cotton and polyester content",
        "Show textile details for the results", "Show whether it is real leather",
        "Display the materials used", "展示材质信息", "显示面料成分", "展示商品的材料",
        "显示每个结果的材质", "展示面料详情", "说明是否真皮",
    ],
    "care": [
        "Show care details", "Show washing instructions", "Display care instructions for the coat",
        "Show how to wash this item", "Display laundry and ironing information",
        "Show cleaning instructions", "Show whether it can be machine washed",
        "Display dry clean requirements", "Show the care label information",
        "Display washing temperature details", "显示洗涤保养说明", "展示洗涤说明", "显示护理信息",
        "展示清洗方法", "显示是否可以机洗", "展示保养详情",
    ],
    "preference": [
        "Ask a preference question", "Ask the user which size they prefer",
        "Ask whether the user wants the bag or the shoes",
        "Clarify which item in the photo matters",
        "Ask the user to choose between the two products", "Ask which colour the user prefers",
        "Ask a clarification question about the intent", "Ask the user what they are looking for",
        "Ask which style the user likes", "Ask the user to confirm the target item",
        "询问用户偏好", "询问用户想要哪一件", "询问用户喜欢的款式", "澄清用户想找的商品",
        "请用户选择目标商品", "确认用户的需求",
    ],
    "exact_item": [
        "Label target products", "Highlight the exact match",
        "Mark the target product with a label",
        "Highlight the identical item among the results", "Tag the exact product from the photo",
        "Label the matching product", "Mark results identical to the query",
        "Highlight the same product in the list", "Badge the exact match",
        "Flag the target item in the results", "标注目标商品", "标记同款商品",
        "突出显示完全匹配的商品",
        "标注照片中的商品", "标记目标结果", "高亮同一商品",
    ],
    "matching_accessories": [  # not in the shipped ontology
        "Recommend matching shoes", "Recommend matching accessories",
        "Suggest accessories to complete the outfit", "Suggest shoes that go with this dress",
        "Recommend a bag to match the outfit", "Suggest jewellery to pair with the top",
        "Recommend items that complete the look", "Suggest a matching belt",
        "推荐搭配的鞋子", "推荐搭配饰品", "推荐配套的包", "推荐完整的穿搭",
    ],
    "stock": [  # not in the shipped ontology
        "Check stock availability", "Check whether the size is in stock", "Check stock levels",
        "Verify availability of the item", "Check if the product is sold out",
        "Check inventory for the requested size", "Confirm the item is available",
        "Check availability in nearby stores", "查询库存", "检查尺码是否有货", "确认商品是否售罄",
        "查看库存情况",
    ],
}  # fmt: skip


def synthetic_pairs() -> list[tuple[str, str]]:
    return [(text, intent) for intent, texts in SYNTHETIC_SET.items() for text in texts]


# -- ablations (Tables V and VII) ----------------------------------------------------------------

SETTINGS = {  # Table V
    "Ours": dict(alpha1=0.7, alpha2=0.6, tau1=0.40, tau2=0.35),
    "High precision": dict(alpha1=0.7, alpha2=0.6, tau1=0.55, tau2=0.50),
    "High recall": dict(alpha1=0.7, alpha2=0.6, tau1=0.30, tau2=0.25),
    "Syntax-dominant": dict(alpha1=0.9, alpha2=0.8, tau1=0.40, tau2=0.35),
    "Semantic-dominant": dict(alpha1=0.4, alpha2=0.3, tau1=0.40, tau2=0.35),
}
METRICS = {"Cosine": "cosine", "L2": "euclidean", "L1": "manhattan"}  # Table VII


def purity(truth: Sequence[str], pred: Sequence[str]) -> float:
    """Share of items whose predicted group's majority intent is their own."""
    groups: dict[str, dict[str, int]] = {}
    for t, p in zip(truth, pred, strict=True):
        groups.setdefault(p, {}).setdefault(t, 0)
        groups[p][t] += 1
    return sum(max(c.values()) for c in groups.values()) / max(len(truth), 1)


def predicted_groups(model: HierarchicalClusterer, noise_as_one: bool = False) -> list[str]:
    """Leaf, auxiliary cluster, or noise: a singleton each, or one shared group when
    `noise_as_one` (then fragmenting into noise cannot buy purity)."""
    out = []
    for i, a in enumerate(model.assignments()):
        if a.main is not None:
            out.append(f"{a.main}/{a.sub}")
        elif a.aux_cluster is not None:
            out.append(f"aux:{a.aux_cluster}")
        else:
            out.append("noise" if noise_as_one else f"noise:{i}")
    return out


def scores(truth: Sequence[str], pred: Sequence[str], model=None) -> dict[str, float]:
    out = {
        "purity": round(purity(truth, pred), 4),
        "nmi": round(float(normalized_mutual_info_score(truth, pred)), 4),
        "ari": round(float(adjusted_rand_score(truth, pred)), 4),
        "groups": len(set(pred)),
    }
    if model is not None:
        s = model.summary()
        out["coverage"] = round(s["assigned"] / max(s["items"], 1), 4)
        out["other"] = round(s["other"] / max(s["items"], 1), 4)
    return out


def score_settings(
    pairs: Sequence[tuple[str, str]], encoder, ontology=None, noise_as_one: bool = False
) -> dict:
    """Every Table V setting and every Table VII metric on (action, hidden intent) pairs."""
    texts = [p[0] for p in pairs]
    truth = [p[1] for p in pairs]
    onto = ontology or load_ontology()
    result: dict = {"n": len(pairs), "intents": len(set(truth)), "encoder": encoder.name}
    result["settings"] = {}
    for name, params in SETTINGS.items():
        model = HierarchicalClusterer(onto, encoder=encoder, **params).fit(texts)
        pred = predicted_groups(model, noise_as_one)
        result["settings"][name] = {**params, **scores(truth, pred, model)}
    result["metrics_pipeline"] = {}
    result["metrics_dbscan_only"] = {}
    vecs = encoder.encode(texts)
    for name, metric in METRICS.items():
        model = HierarchicalClusterer(onto, encoder=encoder, metric=metric).fit(texts)
        pred = predicted_groups(model, noise_as_one)
        result["metrics_pipeline"][name] = scores(truth, pred, model)
        labels = dbscan(vecs, eps=0.5, min_samples=2, metric=metric)
        noise = ["n"] * len(labels) if noise_as_one else [f"n{i}" for i in range(len(labels))]
        pred = [f"c{k}" if k >= 0 else noise[i] for i, k in enumerate(labels)]
        result["metrics_dbscan_only"][name] = scores(truth, pred)
    return result


# -- scaling -------------------------------------------------------------------------------------

VERBS = {
    "cheaper": ["Supplement", "Add", "Show", "Include", "Offer", "Recommend"],
    "premium": ["Supplement", "Add", "Show", "Include", "Offer", "Recommend"],
    "colour": ["Show", "Display", "List", "Expand to", "Offer"],
    "refine": ["Refine search by", "Filter results by", "Narrow the results to", "Restrict to"],
    "material": ["Show", "Display", "List", "Explain"],
    "care": ["Show", "Display", "Explain", "List"],
    "ask": ["Ask", "Clarify", "Ask the user", "Confirm"],
    "label": ["Label", "Highlight", "Mark", "Tag", "Flag"],
    "accessories": ["Recommend", "Suggest", "Propose", "Find"],
    "stock": ["Check", "Verify", "Confirm", "Look up"],
    "delivery": ["Estimate", "Show", "Compute", "Display"],
    "reviews": ["Summarise customer", "Show customer", "Display buyer", "Collect user"],
}
OBJECTS = {
    "cheaper": ["cheaper products", "affordable options", "budget alternatives",
                "lower-priced items", "discounted versions"],
    "premium": ["premium products", "luxury alternatives", "high-end versions",
                "designer options", "pricier items"],
    "colour": ["other colour variants", "the other colourways", "different colour versions",
               "other color options", "the same design in other colours"],
    "refine": ["the same pattern", "the striped print", "the same brand", "the product type",
               "the same department", "the colour of the query"],
    "material": ["material details", "fabric composition", "the material information",
                 "textile details"],
    "care": ["care details", "washing instructions", "care instructions", "cleaning guidance"],
    "ask": ["a preference question", "which size they prefer", "which item matters",
            "what colour they want"],
    "label": ["the target products", "the exact match", "the identical item",
              "the matching product"],
    "accessories": ["matching shoes", "matching accessories", "a matching bag",
                    "jewellery to pair with it", "items to complete the outfit"],
    "stock": ["stock availability", "whether the size is in stock", "inventory levels",
              "availability in stores"],
    "delivery": ["delivery time", "shipping cost", "delivery options", "the arrival date"],
    "reviews": ["reviews", "ratings", "feedback", "opinions"],
}  # fmt: skip
QUALIFIERS = ["", "", "", " for this dress", " for the jacket", " of the same type",
              " for the query item", " in the results", " for women", " for men",
              " for the shoes", " for this bag", " from the photo", " in the same category",
              " for the top results", " like the query"]  # fmt: skip
PREFIXES = ["", "", "", "", "1. ", "2. ", "(1) ", "① "]


def synthetic_actions(n: int, seed: int) -> list[str]:
    """`n` action strings with a Zipf-like repetition of template combinations."""
    rng = np.random.default_rng(seed)
    intents = list(VERBS)
    weights = np.array([10, 6, 9, 8, 6, 5, 5, 5, 4, 4, 3, 3], float)
    weights /= weights.sum()
    out = []
    picks = rng.choice(len(intents), size=n, p=weights)
    for k in picks:
        intent = intents[k]
        verbs, objs = VERBS[intent], OBJECTS[intent]
        # low indices are much more likely: canonical phrasings dominate, as in mined data
        v = verbs[min(int(rng.zipf(1.6)) - 1, len(verbs) - 1)]
        o = objs[min(int(rng.zipf(1.6)) - 1, len(objs) - 1)]
        q = QUALIFIERS[int(rng.integers(len(QUALIFIERS)))]
        p = PREFIXES[int(rng.integers(len(PREFIXES)))]
        tail = f" #{int(rng.zipf(1.3))}" if rng.random() < 0.35 else ""  # long tail of variants
        out.append(f"{p}{v} {o}{q}{tail}")
    return out


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scaling(warehouse: Warehouse, n: int, n_inc: int, encoder_name: str = "minilm") -> dict:
    full_actions = synthetic_actions(n, seed=1)
    inc_actions = synthetic_actions(n_inc, seed=2)
    cache = EmbeddingCache(warehouse)
    encoder = get_text_encoder(encoder_name, cache=cache)
    # what the clusterer embeds: each distinct text without its index marker
    distinct = list(dict.fromkeys(strip_markers(t) for t in full_actions + inc_actions))
    started = time.perf_counter()
    encoder.encode(distinct)  # fills the cache: the timed runs below embed nothing
    embed_s = time.perf_counter() - started
    onto = load_ontology()
    HierarchicalClusterer(onto, encoder=encoder).fit(full_actions[:1000])  # warm label vectors
    gc.collect()
    rss_before = _rss_mib()

    started = time.perf_counter()
    model = HierarchicalClusterer(onto, encoder=encoder).fit(full_actions)
    full_s = time.perf_counter() - started
    rss_full = _rss_mib()
    summary = model.summary()
    pool = len(model.pool_keys_)
    largest = max((c.size for c in model.aux_clusters_.values()), default=0)

    started = time.perf_counter()
    model.assign_incremental(inc_actions)
    inc_s = time.perf_counter() - started
    inc_summary = model.summary()

    # memory of the clustering call alone (tracemalloc slows Python code: a separate, untimed run)
    gc.collect()
    tracemalloc.start()
    HierarchicalClusterer(onto, encoder=encoder).fit(full_actions)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "n": n,
        "distinct_texts": summary["distinct_texts"],
        "encoder": encoder.name,
        "embedded_texts": len(distinct),
        "embedding_s_all_distinct": round(embed_s, 1),
        "full_s": round(full_s, 2),
        "full_tracemalloc_peak_mib": round(peak / 2**20, 1),
        "process_max_rss_mib_before": round(rss_before, 1),
        "process_max_rss_mib_after_full": round(rss_full, 1),
        "assigned": summary["assigned"],
        "unassigned": summary["unassigned"],
        "pool_distinct": pool,
        "aux_clusters": summary["aux_clusters"],
        "largest_aux_share_of_unassigned": round(largest / max(summary["unassigned"], 1), 3),
        "n_incremental": n_inc,
        "incremental_s": round(inc_s, 2),
        "incremental_new_distinct": inc_summary["distinct_texts"] - summary["distinct_texts"],
        "pool_distinct_after_incremental": len(model.pool_keys_),
    }


def dbscan_stress(sizes: Sequence[int], dim: int = 384, seed: int = 0) -> list[dict]:
    """Bounded DBSCAN on an unassigned pool of distinct points (clustered, unit vectors)."""
    out = []
    for n in sizes:
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(max(n // 200, 2), dim))
        x = centres[rng.integers(len(centres), size=n)] + rng.normal(scale=0.045, size=(n, dim))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        gc.collect()
        tracemalloc.start()
        started = time.perf_counter()
        labels = dbscan(x, eps=0.5, min_samples=2)
        took = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out.append(
            {
                "pool": n,
                "seconds": round(took, 2),
                "tracemalloc_peak_mib": round(peak / 2**20, 1),
                "dense_matrix_would_be_mib": round(n * n * 4 / 2**20, 1),
                "clusters": int(labels.max() + 1),
            }
        )
    return out


# -- output --------------------------------------------------------------------------------------


def _table(rows: dict, cols: list[str]) -> list[str]:
    lines = ["| setting | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return lines


def markdown(result: dict) -> str:
    lines = [
        "## Clustering",
        "",
        f"{result.get('cpu_count')} CPUs; 1-minute load average {result.get('loadavg_start')} at "
        f"the start, {result.get('loadavg_end')} at the end (other work shares the machine).",
        "",
    ]
    for key, title in (
        ("ablation_mixed", "English + Chinese"),
        ("ablation_english", "English only"),
    ):
        ab = result.get(key)
        if not ab:
            continue
        lines += [
            f"### Ablation on the synthetic paraphrase set ({title}: {ab['n']} actions, "
            f"{ab['intents']} hidden intents, encoder {ab['encoder']})",
            "",
            "Table V settings (α1/α2, τ1/τ2); groups = main/sub leaf, auxiliary cluster, or "
            "singleton noise:",
            "",
            *_table(
                {
                    f"{k} ({v['alpha1']}/{v['alpha2']}, {v['tau1']:.2f}/{v['tau2']:.2f})": v
                    for k, v in ab["settings"].items()
                },
                ["purity", "nmi", "ari", "coverage", "other", "groups"],
            ),
            "",
            "Table VII DBSCAN metric (eps = 0.5, min_samples = 2), full pipeline and DBSCAN alone "
            "over all actions:",
            "",
            *_table(
                {f"{k} (pipeline)": v for k, v in ab["metrics_pipeline"].items()}
                | {f"{k} (DBSCAN only)": v for k, v in ab["metrics_dbscan_only"].items()},
                ["purity", "nmi", "ari", "groups"],
            ),
            "",
        ]
    sc = result.get("scaling")
    if sc:
        lines += [
            f"### Scaling ({sc['n']:,} actions, {sc['distinct_texts']:,} distinct, encoder "
            f"{sc['encoder']}; embedding excluded)",
            "",
            "| measure | value |",
            "|---|---|",
            f"| full run | {sc['full_s']} s |",
            f"| full run, tracemalloc peak | {sc['full_tracemalloc_peak_mib']} MiB |",
            f"| process max RSS (models loaded) | {sc['process_max_rss_mib_after_full']} MiB |",
            f"| assigned / unassigned | {sc['assigned']:,} / {sc['unassigned']:,} |",
            f"| unassigned pool (distinct) → aux clusters | {sc['pool_distinct']:,} → "
            f"{sc['aux_clusters']} (largest holds {sc['largest_aux_share_of_unassigned']:.0%} of "
            "the unassigned) |",
            f"| incremental {sc['n_incremental']:,} ({sc['incremental_new_distinct']:,} new "
            f"distinct) | {sc['incremental_s']} s |",
            f"| embedding {sc['embedded_texts']:,} distinct texts once (cached, not in the "
            f"timings) | {sc['embedding_s_all_distinct']} s |",
            "",
        ]
    st = result.get("dbscan_stress")
    if st:
        lines += [
            "Bounded DBSCAN on a synthetic unassigned pool of distinct points:",
            "",
            "| pool | seconds | tracemalloc peak MiB | dense N×N would be MiB | clusters |",
            "|---|---|---|---|---|",
            *[
                f"| {r['pool']:,} | {r['seconds']} | {r['tracemalloc_peak_mib']} | "
                f"{r['dense_matrix_would_be_mib']:,} | {r['clusters']} |"
                for r in st
            ],
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", default="bench/out/warehouse",
                        help="warehouse for the embedding cache (kept between runs)")  # fmt: skip
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--n-incremental", type=int, default=10_000)
    parser.add_argument("--stress", default="10000,25000", help="pool sizes, comma-separated")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--out", default="bench/out/clustering.json")
    args = parser.parse_args()
    wh = Warehouse(args.warehouse)
    cache = EmbeddingCache(wh)
    pairs = synthetic_pairs()
    result: dict = {"cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
    if not args.skip_ablation:
        result["ablation_mixed"] = score_settings(
            pairs, get_text_encoder("auto", texts=[p[0] for p in pairs], cache=cache)
        )
        english = [p for p in pairs if p[0].isascii()]
        result["ablation_english"] = score_settings(
            english, get_text_encoder("minilm", cache=cache)
        )
    if not args.skip_scaling:
        result["scaling"] = scaling(wh, args.n, args.n_incremental)
        result["dbscan_stress"] = dbscan_stress([int(s) for s in args.stress.split(",") if s])
    result["loadavg_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(markdown(result))


if __name__ == "__main__":
    main()
