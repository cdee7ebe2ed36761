"""A request as the planner sees it, assembled the same way offline (training data) and online.

Train/serve skew is the quiet killer of learned components, so there is one assembly: the
query photo's raw embedding, the top-K results (each product's raw image embedding, its title
embedding, and scalars: similarity, rank, log price against its type's median, whether the
price is known), and a context vector from the user's history before the request (what the
service can know when the request arrives: never the request's own follow-ups).

`ProductFeatures` holds the per-product arrays, built once from the catalog and its caches
(`revision planner data` builds it, the service loads it); `context_vector` turns a
`RequestContext` into numbers; `request_features` puts them together.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from revision.errors import MissingArtifactError
from revision.logs.context import RequestContext
from revision.planner._base import RESULT_SCALARS, K, PlannerFeatures
from revision.warehouse import Warehouse

ARTIFACT = ("planner", "products")
CONTEXT_DIM = 32
TITLE_ENCODER = "minilm"  # English titles; 384-d, fast on CPU
AUDIENCE_SLOTS = 8
_PAST = (
    "sort_price=asc",
    "sort_price=desc",
    "open_details=material",
    "open_details=care",
    "filter_department",
    "filter_colour",
    "text_query",
    "reupload",
)


class ProductFeatures:
    """Per product (rows aligned with `ids`): raw image embedding, title embedding, log price
    ratio to the type's median (0 when unknown), whether the price is known."""

    def __init__(self, ids, image, title, level, known, audiences):
        self.ids = list(ids)
        self.row = {pid: i for i, pid in enumerate(self.ids)}
        self.image = np.asarray(image, np.float32)
        self.title = np.asarray(title, np.float32)
        self.level = np.asarray(level, np.float32)
        self.known = np.asarray(known, np.float32)
        self.audiences = list(audiences)

    @classmethod
    def build(cls, warehouse: Warehouse) -> ProductFeatures:
        """From the catalog, `revision index build`'s image embeddings and the text encoder."""
        from revision.catalog.schema import load_products
        from revision.tables import IMAGE_HASHES
        from revision.text.embed import get_text_encoder
        from revision.vision.embeddings import ImageEmbedder

        if not warehouse.exists(IMAGE_HASHES):
            raise MissingArtifactError(
                f"no image index in {warehouse.root}: run `revision index build` first"
            )
        products = load_products(warehouse)
        hashes = warehouse.read_pandas(IMAGE_HASHES)
        hash_of = dict(zip(hashes["product_id"], hashes["image_hash"], strict=True))
        embedder = ImageEmbedder(warehouse)
        keep = [
            bool(hash_of.get(p)) and hash_of[p] in embedder.cache for p in products["product_id"]
        ]
        products = products[keep].reset_index(drop=True)
        image = embedder.cache.get([hash_of[p] for p in products["product_id"]])
        titles = products["title"].fillna("").astype(str).tolist()
        title = get_text_encoder(TITLE_ENCODER, warehouse=warehouse).encode(titles)
        price = products["price"].astype(float)
        median = price.groupby(products["category"].fillna("")).transform("median")
        level = np.log(price / median).replace([np.inf, -np.inf], np.nan)
        audiences = products["index_group"].dropna().value_counts().index[:AUDIENCE_SLOTS]
        return cls(
            products["product_id"].tolist(),
            image,
            title,
            level.fillna(0.0).to_numpy(),
            price.notna().to_numpy(),
            sorted(audiences),
        )

    # -- persistence -----------------------------------------------------------------------------
    def save(self, warehouse: Warehouse) -> Path:
        folder = warehouse.artifact_dir(*ARTIFACT)
        tmp = folder / "features.tmp.npz"
        np.savez(
            tmp,
            image=self.image.astype(np.float16),
            title=self.title.astype(np.float16),
            level=self.level,
            known=self.known,
        )
        tmp.replace(folder / "features.npz")
        (folder / "meta.json").write_text(
            json.dumps({"ids": self.ids, "audiences": self.audiences}), encoding="utf-8"
        )
        return folder

    @classmethod
    def load(cls, warehouse: Warehouse, folder: str | Path | None = None) -> ProductFeatures:
        """The features `revision planner data` built (or those in `folder`, a published
        copy; relative folders start at the warehouse)."""
        folder = (
            warehouse.resolve(folder) if folder else warehouse.root.joinpath("artifacts", *ARTIFACT)
        )
        if not (folder / "features.npz").is_file():
            raise MissingArtifactError(
                f"no planner product features in {folder}: run `revision planner data` first"
            )
        arrays = np.load(folder / "features.npz")
        meta = json.loads((folder / "meta.json").read_text("utf-8"))
        return cls(
            meta["ids"],
            arrays["image"],
            arrays["title"],
            arrays["level"],
            arrays["known"],
            meta["audiences"],
        )

    def results(self, results: Sequence[tuple[str, float, int]], k: int = K):
        """(images, titles, scalars, mask) for the first `k` (product, score, rank) results;
        unknown products stay masked."""
        images = np.zeros((k, self.image.shape[1]), np.float32)
        titles = np.zeros((k, self.title.shape[1]), np.float32)
        scalars = np.zeros((k, len(RESULT_SCALARS)), np.float32)
        mask = np.zeros(k, bool)
        for j, (pid, score, rank) in enumerate(list(results)[:k]):
            row = self.row.get(pid)
            if row is None:
                continue
            images[j], titles[j] = self.image[row], self.title[row]
            scalars[j] = (score, rank / k, self.level[row], self.known[row])
            mask[j] = True
        return images, titles, scalars, mask


def context_vector(ctx: RequestContext | None, audiences: Sequence[str]) -> np.ndarray:
    """The user's history before the request (and whether it continues a session) as
    `CONTEXT_DIM` numbers; zeros for a user without history."""
    out = np.zeros(CONTEXT_DIM, np.float32)
    if ctx is None:
        return out
    h = ctx.history
    requests = h.get("requests", 0.0)
    values = [
        math.log1p(requests),
        math.log1p(h.get("orders", 0.0)),
        math.log1p(h.get("clicks", 0.0)),
        h.get("no_clicks", 0.0) / requests if requests else 0.0,
        h.get("order_level", 0.0),
        float(h.get("order_priced", 0.0) > 0),
        h.get("click_level", 0.0),
        float(h.get("click_priced", 0.0) > 0),
    ]
    total = sum(ctx.groups.values())
    values += [ctx.groups.get(a, 0) / total if total else 0.0 for a in audiences[:AUDIENCE_SLOTS]]
    values += [0.0] * (AUDIENCE_SLOTS - min(len(audiences), AUDIENCE_SLOTS))
    values += [math.log1p(ctx.past_events.get(k, 0)) for k in _PAST]
    values += [
        float(ctx.prev_gap_s is not None),
        float(bool(ctx.prev_no_click)),
        math.log1p(ctx.prev_gap_s or 0.0) / 10,
    ]
    out[: len(values)] = values
    return out


def request_features(
    products: ProductFeatures,
    query_embedding: np.ndarray,
    results: Sequence[tuple[str, float, int]],
    ctx: RequestContext | None,
    context: np.ndarray | None = None,
) -> PlannerFeatures:
    """One request's features: the query's raw embedding, its top-K results, the context
    (from `ctx`, or an already computed `context` vector)."""
    images, titles, scalars, mask = products.results(results)
    return PlannerFeatures(
        query=np.asarray(query_embedding, np.float32),
        result_images=images,
        result_titles=titles,
        result_scalars=scalars,
        result_mask=mask,
        context=context if context is not None else context_vector(ctx, products.audiences),
    )
