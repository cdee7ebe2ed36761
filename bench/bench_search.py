"""Search benchmark: query photos from catalog products at each severity.

Measures exact-product recall@1/@10, variant-group recall@10, per-query latency (decode +
encode + search, model loaded) p50/p99, index build time, and HNSW recall@10 against exact
search. Run by `make bench` after `make demo` has built the default warehouse.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

from revision.catalog.schema import load_products
from revision.search.adapt import is_holdout
from revision.search.engine import SearchEngine
from revision.search.index import VectorIndex
from revision.search.pipeline import SearchPipeline
from revision.vision.images import load_image
from revision.vision.query_photos import SEVERITIES, query_photo_bytes
from revision.warehouse import Warehouse


def run(warehouse: Warehouse, n: int, seed: int = 7) -> dict:
    engine = SearchEngine.open(warehouse)
    pipeline = SearchPipeline(engine)
    products = load_products(warehouse).set_index("product_id")
    rng = np.random.default_rng(seed)
    # held-out designs only: the projection adapter (if any) never trained on them
    held_out = [p for p in engine.index.ids_ if is_holdout(products.loc[p, "variant_group"])]
    sample = rng.choice(np.array(held_out), size=min(n, len(held_out)), replace=False)
    out: dict = {
        "products": len(engine.index),
        "queries_per_severity": len(sample),
        "adapter": "yes" if engine.adapter is not None else "no",
    }

    started = time.perf_counter()
    VectorIndex("hnsw").build(engine.index.vectors_, engine.index.ids_)
    out["hnsw_build_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    exact = engine.exact
    out["flat_build_s"] = round(time.perf_counter() - started, 3)

    pipeline.search(load_image(products.loc[sample[0], "image_path"]))  # warm up
    for severity in SEVERITIES:
        hits1 = hits10 = group10 = 0
        latencies, vectors = [], []
        for i, pid in enumerate(sample):
            photo = query_photo_bytes(
                load_image(products.loc[pid, "image_path"]), severity, seed=seed * 100_003 + i
            )
            response = pipeline.search(io.BytesIO(photo).getvalue(), top_k=10, source=pid)
            latencies.append(response.latency_ms)
            vectors.append(engine.project_query(engine.encode(load_image(photo))))
            ids = [h.product_id for h in response.results]
            hits1 += ids[:1] == [pid]
            hits10 += pid in ids
            group = products.loc[pid, "variant_group"]
            group10 += any(products.loc[r, "variant_group"] == group for r in ids if r != pid)
        has_variants = (
            products.loc[sample, "variant_group"]
            .map(products["variant_group"].value_counts())
            .gt(1)
            .sum()
        )
        queries = np.stack(vectors)
        _, approx = engine.index.search(queries, 10)
        _, truth = exact.search(queries, 10)
        overlap = np.mean([len(set(a) & set(t)) / 10 for a, t in zip(approx, truth, strict=True)])
        out[severity] = {
            "recall@1": round(hits1 / len(sample), 4),
            "recall@10": round(hits10 / len(sample), 4),
            "variant_recall@10": round(group10 / max(1, has_variants), 4),
            "latency_p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "latency_p99_ms": round(float(np.percentile(latencies, 99)), 2),
            "hnsw_recall@10_vs_exact": round(float(overlap), 4),
        }
    return out


def markdown(result: dict) -> str:
    lines = [
        f"Catalog: {result['products']} H&M products; {result['queries_per_severity']} query "
        "photos per severity of held-out designs (derived from catalog photos; no consumer "
        f"photos exist). Projection adapter: {result['adapter']}.",
        f"Index build: HNSW {result['hnsw_build_s']} s, exact {result['flat_build_s']} s.",
        "",
        "| severity | recall@1 | recall@10 | variant recall@10 | p50 ms | p99 ms "
        "| HNSW@10 vs exact |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in SEVERITIES:
        r = result[s]
        lines.append(
            f"| {s} | {r['recall@1']} | {r['recall@10']} | {r['variant_recall@10']} | "
            f"{r['latency_p50_ms']} | {r['latency_p99_ms']} | "
            f"{r['hnsw_recall@10_vs_exact']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warehouse", default=None)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--out", default="bench/out/search.json")
    args = parser.parse_args()
    result = run(Warehouse(args.warehouse), args.n)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
