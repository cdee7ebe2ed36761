"""A learned linear projection that makes image embeddings robust to user-photo nuisances.

The frozen encoder (EfficientNet-Lite0, ImageNet features) spends much of its vector on what a
phone photo changes: framing, background, light, blur, JPEG. `ProjectionAdapter` learns a
linear map on top of it from the catalog's own photos: every training pair is (encoded
simulated query photo of a product, encoded catalog photo of the same product), and an InfoNCE
loss pulls each query towards its own catalog vector and away from every other one (the other
pairs in the batch, plus optionally the whole catalog as a bank of negatives). No consumer
photos and no labels beyond product ids are needed. `bench/exp_adapter.py` measures it.

Trade-offs:
- Linear, initialised at the identity and weight-decayed towards it, so it starts exactly at
  the base model and can only move as far as the data justifies; one (d x d) matrix per side
  costs ~0.1 ms per query, nothing next to the ~5-15 ms encoder.
- `mode="asymmetric"` (the default, most accurate) learns one map per side; `"shared"` one map
  for both. Both change the catalog vectors, so the index must be rebuilt from
  `transform_catalog(vectors)` whenever the adapter changes. `"query"` maps only queries and
  leaves the catalog (and the index) untouched: a few points less recall, no re-indexing.
- In-batch negatives are enough: contrasting every query with the whole catalog
  (`fit(negatives=...)`) was no better in "query" mode and ~8x slower, and with a catalog map
  the stale bank lets training push positives away from it (validation loss diverges after a
  few epochs; best-epoch selection then keeps an early, weaker map).
- Trained on simulated photos (`revision.vision.query_photos`), so it learns the simulator's
  nuisances; held-out products (and their variant groups) must be excluded from training for
  an honest number, which `make_training_pairs(exclude=...)` does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from revision.progress import progress
from revision.vision.images import load_image
from revision.vision.query_photos import SEVERITIES, make_query_photo

MODES = ("query", "shared", "asymmetric")
_FORMAT = "revision-projection-adapter/1"
_SAME = 1.0 - 1e-5  # cosine above which two catalog vectors count as the same photo


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class ProjectionAdapter:
    """Linear query (and optionally catalog) projection trained with InfoNCE.

    Parameters
    - mode: "query" (map queries only; catalog vectors unchanged), "shared" (one map for both
      sides) or "asymmetric" (one map per side).
    - dim_out: output size; None keeps the input size (identity init). A smaller size starts
      from the top principal directions of the catalog vectors (not available in "query" mode).
    - rank: None learns a full (d x dim_out) update; an int learns a low-rank update
      W = W0 + U V (fewer parameters, stronger regularisation).
    - epochs, batch_size, lr, weight_decay: AdamW on the update (W - W0), so the decay pulls
      the map back towards its initialisation.
    - temperature: InfoNCE softmax temperature on cosine similarities.
    - val_fraction: share of training pairs (grouped by catalog photo) held out to pick the
      best epoch; 0 trains on everything and keeps the last epoch.
    - seed, threads: reproducibility and CPU threads for PyTorch. One thread is the default:
      on 2 shared cores two PyTorch threads were 2-5x slower than one.

    Fitted attributes: `query_weight_` (d x dim_out), `catalog_weight_` (d x dim_out, None in
    "query" mode), `history_` (per-epoch train/val loss), `best_epoch_`, `fit_seconds_`.
    """

    def __init__(
        self,
        mode: str = "asymmetric",
        dim_out: int | None = None,
        rank: int | None = None,
        epochs: int = 10,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        temperature: float = 0.05,
        val_fraction: float = 0.1,
        seed: int = 0,
        threads: int = 1,
        verbose: bool = False,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        if mode == "query" and dim_out is not None:
            raise ValueError('mode="query" keeps the catalog vectors, so dim_out must be None')
        self.mode = mode
        self.dim_out = dim_out
        self.rank = rank
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.temperature = temperature
        self.val_fraction = val_fraction
        self.seed = seed
        self.threads = threads
        self.verbose = verbose
        self.query_weight_: np.ndarray | None = None
        self.catalog_weight_: np.ndarray | None = None
        self.history_: list[dict] = []
        self.best_epoch_: int | None = None
        self.fit_seconds_: float | None = None

    # -- parameters ----------------------------------------------------------------------------
    def get_params(self) -> dict:
        keys = (
            "mode",
            "dim_out",
            "rank",
            "epochs",
            "batch_size",
            "lr",
            "weight_decay",
            "temperature",
            "val_fraction",
            "seed",
            "threads",
            "verbose",
        )
        return {k: getattr(self, k) for k in keys}

    @property
    def fitted(self) -> bool:
        return self.query_weight_ is not None

    # -- inference -----------------------------------------------------------------------------
    def transform_query(self, X: np.ndarray) -> np.ndarray:
        """Project query vectors (n, d) or (d,) and L2-normalise."""
        return self._apply(X, self._check_fitted())

    def transform_catalog(self, X: np.ndarray) -> np.ndarray:
        """Project catalog vectors; in "query" mode they are only re-normalised."""
        self._check_fitted()
        if self.catalog_weight_ is None:
            return _normalise(X)
        return self._apply(X, self.catalog_weight_)

    @staticmethod
    def _apply(X: np.ndarray, W: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        return _normalise(X @ W)

    def _check_fitted(self) -> np.ndarray:
        if self.query_weight_ is None:
            raise RuntimeError("ProjectionAdapter is not fitted; call fit() or load() first")
        return self.query_weight_

    # -- training ------------------------------------------------------------------------------
    def fit(
        self, query_vecs: np.ndarray, catalog_vecs: np.ndarray, negatives: np.ndarray | None = None
    ) -> ProjectionAdapter:
        """Learn the map from aligned pairs: row i of `query_vecs` shows the product whose
        catalog photo is row i of `catalog_vecs` (rows may repeat a product).

        `negatives` (optional, (m, d)) is a bank of extra catalog vectors every query is
        contrasted with, typically the whole catalog; entries equal to a query's own catalog
        vector are masked. In "query" mode the bank is exact; otherwise it is re-projected
        without gradient once per epoch (a stale bank, as in MoCo), which is unstable (see the
        module notes): leave it None unless mode="query".
        """
        import torch

        started = time.perf_counter()
        Q = _normalise(query_vecs)
        C = _normalise(catalog_vecs)
        if Q.ndim != 2 or Q.shape != C.shape:
            raise ValueError(f"query_vecs {Q.shape} and catalog_vecs {C.shape} must match (n, d)")
        bank = None if negatives is None else _normalise(negatives)
        if bank is not None and bank.shape[1] != Q.shape[1]:
            raise ValueError(f"negatives have dim {bank.shape[1]}, pairs have {Q.shape[1]}")

        rng = np.random.default_rng(self.seed)
        photo = _photo_ids(C)
        train, val = _split(photo, self.val_fraction, rng)
        own = None if bank is None else _bank_matches(C, bank)

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            net = _build_net(self, Q.shape[1], C if bank is None else np.vstack([C, bank]), rng)
            self._train(net, Q, C, photo, bank, own, train, val, rng)
        finally:
            torch.set_num_threads(previous_threads)
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def _train(self, net, Q, C, photo, bank, own, train, val, rng) -> None:
        import torch

        torch.manual_seed(int(rng.integers(2**31)))
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        steps = max(1, self.epochs * int(np.ceil(len(train) / self.batch_size)))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.lr, total_steps=steps, pct_start=0.1, anneal_strategy="cos"
        )
        tQ, tC, tP = torch.from_numpy(Q), torch.from_numpy(C), torch.from_numpy(photo)
        tB = None if bank is None else torch.from_numpy(bank)
        best = (np.inf, net.export(), 0)
        self.history_ = []
        for epoch in range(1, self.epochs + 1):
            projected_bank = net.project_bank(tB)
            order = rng.permutation(train)
            total, count = 0.0, 0
            net.train()
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                if len(idx) < 2:
                    continue
                loss = self._loss(
                    net,
                    tQ[idx],
                    tC[idx],
                    tP[idx],
                    projected_bank,
                    None if own is None else own[idx],
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            record = {"epoch": epoch, "train_loss": total / max(count, 1)}
            if len(val):
                with torch.no_grad():
                    record["val_loss"] = self._eval_loss(
                        net, tQ, tC, tP, val, net.project_bank(tB), own
                    )
            self.history_.append(record)
            if self.verbose:
                print(json.dumps({k: round(v, 4) for k, v in record.items()}))
            score = record.get("val_loss", record["train_loss"])
            if not len(val) or score < best[0]:
                best = (score, net.export(), epoch)
        self.query_weight_, self.catalog_weight_ = best[1]
        self.best_epoch_ = best[2]

    def _eval_loss(self, net, tQ, tC, tP, val, projected_bank, own) -> float:
        total = 0.0
        for start in range(0, len(val), self.batch_size):
            idx = val[start : start + self.batch_size]
            if len(idx) < 2:
                continue
            loss = self._loss(
                net, tQ[idx], tC[idx], tP[idx], projected_bank, None if own is None else own[idx]
            )
            total += float(loss) * len(idx)
        return total / len(val)

    def _loss(self, net, q, c, photo, projected_bank, own):
        """InfoNCE of each query against its own catalog vector: in-batch catalog vectors and
        the bank are the negatives; in-batch duplicates of the positive and the positive's own
        bank entries are masked out."""
        import torch
        import torch.nn.functional as F

        qp = F.normalize(net.query(q), dim=1)
        cp = F.normalize(net.catalog(c), dim=1)
        logits = qp @ cp.T
        same = photo[:, None] == photo[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
        if projected_bank is not None:
            extra = qp @ projected_bank.T
            if own is not None:
                rows, cols = own
                extra = extra.index_put(
                    (torch.from_numpy(rows), torch.from_numpy(cols)), torch.tensor(float("-inf"))
                )
            logits = torch.cat([logits, extra], dim=1)
        target = torch.arange(len(q))
        return F.cross_entropy(logits / self.temperature, target)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write weights and parameters to an .npz (no pickle)."""
        W = self._check_fitted()
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": _FORMAT,
            "params": self.get_params(),
            "best_epoch": self.best_epoch_,
            "history": self.history_,
        }
        arrays = {"query_weight": W, "meta": np.array(json.dumps(meta))}
        if self.catalog_weight_ is not None:
            arrays["catalog_weight"] = self.catalog_weight_
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ProjectionAdapter:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"{path}: not a projection adapter ({meta.get('format')!r})")
            adapter = cls(**meta["params"])
            adapter.query_weight_ = np.array(data["query_weight"], dtype=np.float32)
            if "catalog_weight" in data:
                adapter.catalog_weight_ = np.array(data["catalog_weight"], dtype=np.float32)
        adapter.best_epoch_ = meta.get("best_epoch")
        adapter.history_ = meta.get("history", [])
        return adapter


def _photo_ids(C: np.ndarray) -> np.ndarray:
    """One id per distinct catalog vector, so repeated products share an id."""
    _, inverse = np.unique(C, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _split(photo: np.ndarray, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Train / validation pair indices, split by catalog photo so no product is in both."""
    groups = np.unique(photo)
    n_val = round(len(groups) * fraction) if fraction > 0 else 0
    if n_val == 0 or n_val >= len(groups):
        return np.arange(len(photo)), np.zeros(0, dtype=np.int64)
    held = rng.choice(groups, size=n_val, replace=False)
    is_val = np.isin(photo, held)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _bank_matches(C: np.ndarray, bank: np.ndarray, chunk: int = 2048):
    """Per pair, the bank rows equal to its catalog vector: a sparse (pair, bank_row) list
    stored per pair as two arrays so a batch can gather its own."""
    pairs = []
    for start in range(0, len(C), chunk):
        sims = C[start : start + chunk] @ bank.T
        r, c = np.nonzero(sims > _SAME)
        pairs.append((r + start, c))
    rows = np.concatenate([p[0] for p in pairs])
    cols = np.concatenate([p[1] for p in pairs])
    return _PairMask(len(C), rows, cols)


class _PairMask:
    """Indexable by a batch of pair indices -> (batch_row, bank_col) arrays to mask."""

    def __init__(self, n: int, rows: np.ndarray, cols: np.ndarray):
        order = np.argsort(rows, kind="stable")
        self.rows, self.cols = rows[order], cols[order]
        self.starts = np.searchsorted(self.rows, np.arange(n + 1))

    def __getitem__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = self.starts[idx + 1] - self.starts[idx]
        batch_rows = np.repeat(np.arange(len(idx)), counts)
        cols = (
            np.concatenate([self.cols[self.starts[i] : self.starts[i + 1]] for i in idx])
            if counts.sum()
            else np.zeros(0, dtype=np.int64)
        )
        return batch_rows.astype(np.int64), cols.astype(np.int64)


def _build_net(adapter: ProjectionAdapter, dim: int, catalog_sample: np.ndarray, rng):
    """The torch module: W = W0 + delta per side, delta full or low-rank, started at zero."""
    import torch

    dim_out = adapter.dim_out or dim
    if dim_out == dim:
        W0 = np.eye(dim, dtype=np.float32)
    else:  # top principal directions (uncentred: cosine geometry) of the catalog vectors
        _, _, vt = np.linalg.svd(
            catalog_sample[: min(len(catalog_sample), 20000)], full_matrices=False
        )
        W0 = np.ascontiguousarray(vt[:dim_out].T, dtype=np.float32)

    class Side(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w0", torch.from_numpy(W0.copy()))
            if adapter.rank is None:
                self.delta = torch.nn.Parameter(torch.zeros(dim, dim_out))
            else:
                u = rng.standard_normal((dim, adapter.rank)) / np.sqrt(dim)
                self.u = torch.nn.Parameter(torch.from_numpy(u.astype(np.float32)))
                self.v = torch.nn.Parameter(torch.zeros(adapter.rank, dim_out))

        def weight(self):
            if adapter.rank is None:
                return self.w0 + self.delta
            return self.w0 + self.u @ self.v

        def forward(self, x):
            if adapter.rank is None:
                return x @ self.weight()
            return x @ self.w0 + (x @ self.u) @ self.v

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = Side()
            self.c = (
                None
                if adapter.mode == "query"
                else (self.q if adapter.mode == "shared" else Side())
            )

        def query(self, x):
            return self.q(x)

        def catalog(self, x):
            return x if self.c is None else self.c(x)

        def project_bank(self, bank):
            if bank is None:
                return None
            if self.c is None:
                return bank
            with torch.no_grad():
                return torch.nn.functional.normalize(self.c(bank), dim=1)

        def export(self):
            with torch.no_grad():
                q = self.q.weight().numpy().astype(np.float32, copy=True)
                c = (
                    None
                    if self.c is None
                    else self.c.weight().numpy().astype(np.float32, copy=True)
                )
            return q, c

    return Net()


# -- evaluation -------------------------------------------------------------------------------


def evaluate(
    adapter: ProjectionAdapter | None,
    catalog_vecs: np.ndarray,
    query_vecs: np.ndarray,
    target_rows: Sequence[int],
    ks: Iterable[int] = (1, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """Exact-product recall@k of `query_vecs` against the full catalog (exact cosine search).

    `target_rows[i]` is the catalog row query i shows. A query counts as a hit at k when fewer
    than k catalog vectors score strictly higher than its target (ties go to the target, as an
    exact index could return either). `adapter=None` evaluates the base embeddings.
    """
    targets = np.asarray(target_rows, dtype=np.int64)
    if adapter is None:
        C, Q = _normalise(catalog_vecs), _normalise(query_vecs)
    else:
        C, Q = adapter.transform_catalog(catalog_vecs), adapter.transform_query(query_vecs)
    ranks = np.empty(len(Q), dtype=np.int64)
    for start in range(0, len(Q), chunk):
        scores = Q[start : start + chunk] @ C.T
        own = scores[np.arange(len(scores)), targets[start : start + chunk]]
        ranks[start : start + chunk] = (scores > own[:, None]).sum(axis=1)
    return {f"recall@{k}": float(np.mean(ranks < k)) for k in ks}


# -- training data ----------------------------------------------------------------------------


@dataclass
class TrainingPairs:
    """Encoded query photos and the catalog rows they show."""

    queries: np.ndarray  # (n, d) encoded simulated user photos
    rows: np.ndarray  # (n,) catalog row of each query's product
    product_ids: list[str]
    severities: list[str]
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    def catalog(self, catalog_vecs: np.ndarray) -> np.ndarray:
        """The positive catalog vector of every pair."""
        return np.asarray(catalog_vecs)[self.rows]

    def save(self, path: str | Path) -> None:
        np.savez(
            path,
            queries=self.queries,
            rows=self.rows,
            product_ids=np.array(self.product_ids),
            severities=np.array(self.severities),
            meta=np.array(json.dumps({"seconds": self.seconds, **self.meta})),
        )

    @classmethod
    def load(cls, path: str | Path) -> TrainingPairs:
        with np.load(path, allow_pickle=False) as d:
            meta = json.loads(str(d["meta"]))
            return cls(
                queries=d["queries"].astype(np.float32),
                rows=d["rows"].astype(np.int64),
                product_ids=d["product_ids"].tolist(),
                severities=d["severities"].tolist(),
                seconds=meta.pop("seconds", 0.0),
                meta=meta,
            )


def make_training_pairs(
    engine,
    products: pd.DataFrame,
    n_products: int = 3000,
    severities: Sequence[str] = ("medium", "hard"),
    views_per_product: int = 1,
    seed: int = 0,
    exclude: Iterable[str] = (),
    batch_size: int = 16,
    description: str = "adapter training photos",
) -> TrainingPairs:
    """Simulate and encode query photos of `n_products` random catalog products.

    - engine: a `SearchEngine` (or anything with `.encoder`, `.row_of` mapping product id to
      catalog row).
    - products: product table with `image_path` (and `variant_group`, if excluding), indexed
      by product id or with a `product_id` column.
    - exclude: product ids kept out of training (e.g. an evaluation set); every product in
      their variant groups is excluded too, so near-identical siblings do not leak.
    - Each product yields `views_per_product` photos per severity, from seeds derived from
      (seed, catalog row, view) and so disjoint from the benchmark's small integer seeds.

    Photo simulation for the next batch runs in a background thread while the current batch
    is encoded.
    """
    for s in severities:
        if s not in SEVERITIES:
            raise ValueError(f"unknown severity {s!r}; valid: {', '.join(SEVERITIES)}")
    started = time.perf_counter()
    table = (
        products
        if "product_id" not in products.columns
        else products.set_index("product_id", drop=False)
    )
    excluded = set(exclude)
    if excluded and "variant_group" in table.columns:
        groups = set(table.loc[table.index.intersection(list(excluded)), "variant_group"])
        excluded |= set(table.index[table["variant_group"].isin(groups)])
    eligible = [pid for pid in table.index if pid in engine.row_of and pid not in excluded]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(
        np.array(eligible, dtype=object), size=min(n_products, len(eligible)), replace=False
    )
    jobs = [
        (pid, sev, view)
        for pid in chosen
        for view in range(views_per_product)
        for sev in severities
    ]
    paths = table["image_path"]

    def render(batch):
        out = []
        for pid, sev, view in batch:
            row = engine.row_of[pid]
            photo_seed = int(np.random.SeedSequence([seed, row, view]).generate_state(1)[0])
            out.append(make_query_photo(load_image(paths[pid]), sev, photo_seed))
        return out

    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    vectors = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(render, batches[0]) if batches else None
        for i in progress(range(len(batches)), total=len(batches), description=description):
            photos = pending.result()
            if i + 1 < len(batches):
                pending = pool.submit(render, batches[i + 1])
            vectors.append(engine.encoder.encode(photos))
    dim = getattr(engine.encoder, "dim", 0)
    queries = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    return TrainingPairs(
        queries=queries.astype(np.float32),
        rows=np.array([engine.row_of[p] for p, _, _ in jobs], dtype=np.int64),
        product_ids=[str(p) for p, _, _ in jobs],
        severities=[s for _, s, _ in jobs],
        seconds=time.perf_counter() - started,
        meta={
            "seed": seed,
            "n_products": len(chosen),
            "views_per_product": views_per_product,
            "excluded": len(excluded),
        },
    )
