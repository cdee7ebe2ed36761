"""Fit the projection adapter on the catalog's own photos and rebuild the index with it.

Products whose variant group falls in the evaluation split (a fixed fifth, by hash) never
train the adapter, so the search benchmark and the report below are measured on designs the
adapter has not seen.
"""

from __future__ import annotations

import zlib

import numpy as np

from revision.catalog.schema import load_products
from revision.search.engine import ADAPTER, SearchEngine, build_index
from revision.warehouse import Warehouse


def is_holdout(variant_group: str | None) -> bool:
    """The fixed evaluation fifth of variant groups (stable across runs and machines)."""
    return zlib.crc32(str(variant_group).encode()) % 5 == 0


def adapt_index(
    warehouse: Warehouse,
    *,
    products: int = 3000,
    eval_products: int = 300,
    epochs: int = 10,
    seed: int = 0,
) -> dict:
    from revision.vision.adapter import ProjectionAdapter, evaluate, make_training_pairs

    engine = SearchEngine.open(warehouse)
    catalog = load_products(warehouse).set_index("product_id", drop=False)
    catalog = catalog.loc[[p for p in engine.index.ids_]]
    holdout = catalog["variant_group"].map(is_holdout)
    pairs = make_training_pairs(
        engine, catalog, n_products=products, seed=seed, exclude=catalog.index[holdout]
    )
    raw = engine.raw_vectors
    adapter = ProjectionAdapter(epochs=epochs, seed=seed).fit(pairs.queries, pairs.catalog(raw))
    adapter.save(warehouse.artifact(*ADAPTER))

    probe = make_training_pairs(
        engine,
        catalog[holdout],
        n_products=eval_products,
        seed=seed + 1,
        description="held-out photos",
    )
    report = {
        "train_photos": len(pairs.queries),
        "train_s": round(adapter.fit_seconds_, 1),
        "eval_photos": len(probe.queries),
    }
    for severity in sorted(set(probe.severities)):
        rows = np.array([s == severity for s in probe.severities])
        report[severity] = {
            "base": evaluate(None, raw, probe.queries[rows], probe.rows[rows]),
            "adapted": evaluate(adapter, raw, probe.queries[rows], probe.rows[rows]),
        }
    report["index"] = build_index(warehouse)
    return report
