"""Experiment: does a learned projection adapter make query photos find their product?

Trains `ProjectionAdapter` on simulated query photos of catalog products (excluding a held-out
evaluation sample and its variant groups) and reports exact-product recall@1/@10 of held-out
medium and hard query photos against the whole catalog, base embeddings vs adapter, plus the
time to generate the training photos, to train, and the added per-query latency.

    .venv/bin/python bench/exp_adapter.py --warehouse /tmp/wh1 --sample /tmp/sample.npy \
        --eval medium=/tmp/Qm.npy --eval hard=/tmp/Qh.npy --pairs-cache /tmp/pairs.npz

Without `--eval`, held-out query photos are generated here (seed scheme `seed * 100_003 + i`,
like bench/bench_search.py). `--modes` and `--sizes` sweep variants in one run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from revision.catalog.schema import load_products
from revision.search.engine import SearchEngine
from revision.vision.adapter import (
    ProjectionAdapter,
    TrainingPairs,
    evaluate,
    make_training_pairs,
)
from revision.vision.images import load_image
from revision.vision.query_photos import make_query_photo
from revision.warehouse import Warehouse


def held_out(engine, products, args) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The evaluation product ids and their encoded query photos per severity."""
    if args.sample:
        sample = np.load(args.sample)
    else:
        rng = np.random.default_rng(args.eval_seed)
        sample = rng.choice(np.array(engine.index.ids_), size=args.eval_n, replace=False)
    queries = {}
    for spec in args.eval or []:
        severity, path = spec.split("=", 1)
        queries[severity] = np.load(path)
        if len(queries[severity]) != len(sample):
            raise SystemExit(f"{path}: {len(queries[severity])} rows, sample has {len(sample)}")
    table = products.set_index("product_id")
    for severity in args.eval_severities:
        if severity not in queries:
            photos = [
                make_query_photo(
                    load_image(table.loc[pid, "image_path"]), severity, args.eval_seed * 100_003 + i
                )
                for i, pid in enumerate(sample)
            ]
            queries[severity] = np.concatenate(
                [engine.encoder.encode(photos[i : i + 16]) for i in range(0, len(photos), 16)]
            )
    return sample, queries


def training_pairs(engine, products, sample, args) -> TrainingPairs:
    cache = Path(args.pairs_cache) if args.pairs_cache else None
    if cache and cache.exists():
        pairs = TrainingPairs.load(cache)
        print(
            f"loaded {len(pairs.rows)} training pairs from {cache} "
            f"(generated in {pairs.seconds:.0f} s)"
        )
    else:
        pairs = make_training_pairs(
            engine,
            products,
            n_products=args.n_products,
            severities=tuple(args.severities),
            views_per_product=args.views,
            seed=args.seed,
            exclude=sample,
        )
        if cache:
            pairs.save(cache)
    leaked = set(pairs.product_ids) & set(sample.tolist())
    if leaked:
        raise SystemExit(f"{len(leaked)} held-out products are in the training pairs")
    return pairs


def query_latency_ms(adapter: ProjectionAdapter, dim: int, n: int = 2000) -> float:
    """Median added time to project one query vector (the catalog is projected offline)."""
    x = np.random.default_rng(0).standard_normal((1, dim)).astype(np.float32)
    adapter.transform_query(x)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        adapter.transform_query(x)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warehouse", default=None)
    ap.add_argument("--sample", help=".npy of held-out product ids (default: drawn here)")
    ap.add_argument(
        "--eval",
        action="append",
        metavar="SEVERITY=PATH",
        help=".npy of encoded held-out query photos, rows aligned with --sample",
    )
    ap.add_argument("--eval-severities", nargs="+", default=["medium", "hard"])
    ap.add_argument("--eval-n", type=int, default=300)
    ap.add_argument("--eval-seed", type=int, default=7)
    ap.add_argument("--n-products", type=int, default=3000)
    ap.add_argument("--views", type=int, default=1)
    ap.add_argument("--severities", nargs="+", default=["medium", "hard"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs-cache", help="reuse / write the generated training pairs here")
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help="also train on the first N products' pairs (data-size sweep)",
    )
    ap.add_argument(
        "--modes", nargs="+", default=["asymmetric"], choices=["query", "shared", "asymmetric"]
    )
    ap.add_argument("--rank", type=int, default=None)
    ap.add_argument("--dim-out", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument(
        "--bank",
        action="store_true",
        help="also contrast with the whole catalog (default: in-batch negatives only)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", help="write the last adapter trained here (.npz)")
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = ap.parse_args(argv)

    warehouse = Warehouse(args.warehouse)
    engine = SearchEngine.open(warehouse)
    products = load_products(warehouse)
    catalog = engine.index.vectors_
    sample, queries = held_out(engine, products, args)
    targets = np.array([engine.row_of[p] for p in sample])
    pairs = training_pairs(engine, products, sample, args)

    rows = []
    base = {s: evaluate(None, catalog, q, targets) for s, q in queries.items()}
    rows.append({"model": "base", "pairs": 0, **_flat(base)})
    products_in_order = list(dict.fromkeys(pairs.product_ids))
    sizes = sorted(set(args.sizes or []) | {len(products_in_order)})
    adapter = None
    for size in sizes:
        keep = set(products_in_order[:size])
        mask = np.array([p in keep for p in pairs.product_ids])
        for mode in args.modes:
            adapter = ProjectionAdapter(
                mode=mode,
                dim_out=None if mode == "query" else args.dim_out,
                rank=args.rank,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                weight_decay=args.weight_decay,
                temperature=args.temperature,
                val_fraction=args.val_fraction,
                seed=args.seed,
                threads=args.threads,
            )
            adapter.fit(
                pairs.queries[mask],
                pairs.catalog(catalog)[mask],
                negatives=catalog if args.bank else None,
            )
            scores = {s: evaluate(adapter, catalog, q, targets) for s, q in queries.items()}
            rows.append(
                {
                    "model": _name(mode, args),
                    "pairs": int(mask.sum()),
                    **_flat(scores),
                    "train_s": round(adapter.fit_seconds_, 1),
                    "best_epoch": adapter.best_epoch_,
                    "query_ms": round(query_latency_ms(adapter, catalog.shape[1]), 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if args.save and adapter is not None:
        print(f"saved {adapter.save(args.save)}")

    print()
    print(
        f"Held-out: {len(sample)} products (never trained on, nor their variant groups); "
        f"catalog {len(catalog)} products, exact cosine search."
    )
    print(
        f"Training pairs: {len(pairs.rows)} photos of {len(products_in_order)} products "
        f"({', '.join(sorted(set(pairs.severities)))}), generated in {pairs.seconds:.0f} s "
        f"({pairs.seconds / max(1, len(pairs.rows)) * 1000:.0f} ms/photo)."
    )
    print()
    print(markdown(rows, list(queries)))
    if args.json:
        print(json.dumps(rows, indent=1))


def _name(mode: str, args) -> str:
    name = f"adapter:{mode}"
    if args.dim_out and mode != "query":
        name += f":d{args.dim_out}"
    if args.rank:
        name += f":r{args.rank}"
    return name + (":bank" if args.bank else "")


def _flat(scores: dict) -> dict:
    return {f"{s}_{k}": round(v, 4) for s, r in scores.items() for k, v in r.items()}


def markdown(rows: list[dict], severities: list[str]) -> str:
    cols = [f"{s}_{k}" for s in severities for k in ("recall@1", "recall@10")]
    head = ["model", "pairs", *cols, "train_s", "best_epoch", "query_ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(h, "")) for h in head) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
