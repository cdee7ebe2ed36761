"""Train the attribute heads on the catalog's own labels and report held-out accuracy.

Training rows are catalog photos plus simulated user photos of some training products, so the
heads hold up on the photos users actually send. The test split holds out whole variant groups;
accuracy is reported on its catalog photos and on medium-severity query photos made from them.

Vision knows no catalog and no index: the caller hands in the products (one row per photo,
with their labels), their raw embeddings and the encoder that made them (`revision vision
train-attributes` takes them from the search engine).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import GroupShuffleSplit

from revision.errors import InputError
from revision.progress import progress
from revision.vision.attributes import ATTRIBUTES, HEADS_PATH, AttributeHeads, heads_path
from revision.vision.embeddings import ImageEmbedder
from revision.vision.encoder import get_image_encoder
from revision.vision.images import load_image
from revision.vision.query_photos import make_query_photo
from revision.vision.understanding import head_features
from revision.warehouse import Warehouse

__all__ = ["HEADS_PATH", "heads_path", "train_attributes"]


def train_attributes(
    warehouse: Warehouse,
    products: pd.DataFrame,
    raw_vectors: np.ndarray,
    encode: Callable[[Image.Image], np.ndarray],
    *,
    augment: int = 2000,
    eval_queries: int = 300,
    test_size: float = 0.2,
    epochs: int = 30,
    seed: int = 0,
) -> dict:
    """Train the heads on `products` (columns `image_path`, `variant_group` and the
    attributes; row i is the photo whose raw embedding is `raw_vectors[i]`), save them under
    the warehouse's artifacts and return the held-out report. `encode(photo)` is the encoder
    that made `raw_vectors` (simulated user photos are encoded with it)."""
    products = products.reset_index(drop=True)
    if len(products) != len(raw_vectors):
        raise InputError(
            f"{len(products)} products but {len(raw_vectors)} raw embeddings: one row each"
        )
    missing = [c for c in ("image_path", "variant_group", *ATTRIBUTES) if c not in products]
    if missing:
        raise InputError(f"products lack column(s): {', '.join(missing)}")
    hist_encoder = get_image_encoder("colour-hist")
    hists, _ = ImageEmbedder(warehouse, hist_encoder).embed_paths(
        products["image_path"].tolist(), description="colour histograms"
    )
    features = head_features(np.asarray(raw_vectors), hists)
    labels = products[list(ATTRIBUTES)].reset_index(drop=True)

    split = GroupShuffleSplit(1, test_size=test_size, random_state=seed)
    train, test = next(split.split(features, groups=products["variant_group"].fillna("")))
    rng = np.random.default_rng(seed)

    def user_photos(rows: np.ndarray, description: str) -> np.ndarray:
        out = []
        for i, row in enumerate(progress(rows, total=len(rows), description=description)):
            photo = make_query_photo(
                load_image(products["image_path"].iloc[row]),
                "medium",
                seed=seed * 1_000_003 + int(row) + i,
            )
            out.append(head_features(encode(photo), hist_encoder.encode([photo])[0]))
        return np.stack(out) if out else np.zeros((0, features.shape[1]), np.float32)

    extra = rng.choice(train, size=min(augment, len(train)), replace=False)
    probe = rng.choice(test, size=min(eval_queries, len(test)), replace=False)
    extra_x = user_photos(extra, "user photos for training")
    probe_x = user_photos(probe, "user photos for evaluation")

    heads = AttributeHeads(epochs=epochs, seed=seed).fit(
        np.vstack([features[train], extra_x]),
        pd.concat([labels.iloc[train], labels.iloc[extra]], ignore_index=True),
    )
    report: dict = {
        "train_rows": int(len(train) + len(extra)),
        "test_products": len(test),
        "query_photos": len(probe),
        "attributes": {},
    }
    for attr, pred, truth in _accuracy_inputs(heads, features[test], labels.iloc[test]):
        q_pred = [p[attr][0] for p in heads.predict(probe_x)] if len(probe) else []
        q_truth = _normalised(heads, attr, labels.iloc[probe][attr])
        majority = truth.value_counts(normalize=True).iloc[0]
        report["attributes"][attr] = {
            "classes": len(heads.classes_[attr]),
            "accuracy": round(float((pred == truth).mean()), 4),
            "query_photo_accuracy": round(float(np.mean(np.array(q_pred) == q_truth)), 4)
            if len(probe)
            else None,
            "majority_baseline": round(float(majority), 4),
        }
    path = heads.save(heads_path(warehouse))
    report["path"] = str(path)
    path.with_suffix(".report.json").write_text(json.dumps(report, indent=2))
    return report


def _normalised(heads: AttributeHeads, attr: str, values: pd.Series) -> np.ndarray:
    known = set(heads.classes_[attr])
    return (
        values.fillna("unknown")
        .astype(str)
        .map(lambda v: v if v in known else "unknown")
        .to_numpy()
    )


def _accuracy_inputs(heads: AttributeHeads, x: np.ndarray, labels: pd.DataFrame):
    predictions = heads.predict(x)
    for attr in heads.attributes:
        pred = np.array([p[attr][0] for p in predictions])
        yield attr, pred, pd.Series(_normalised(heads, attr, labels[attr]))
