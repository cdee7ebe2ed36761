"""ProjectionAdapter on synthetic embeddings: queries are noisy, rotated catalog vectors."""

from __future__ import annotations

import numpy as np
import pytest

from revision.vision.adapter import ProjectionAdapter, _normalise, evaluate

DIM = 32


def _world(n_catalog=600, n_train=400, noise=0.5, seed=0):
    """A catalog, a fixed "camera" distortion, and queries of known catalog rows."""
    rng = np.random.default_rng(seed)
    catalog = _normalise(rng.standard_normal((n_catalog, DIM)))
    # A fixed random rotation scrambles half of the axes: the base embedding then matches
    # queries poorly, while a linear map can undo it.
    rotation, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    distort = np.eye(DIM)
    distort[: DIM // 2, : DIM // 2] = rotation[: DIM // 2, : DIM // 2]
    distort, _ = np.linalg.qr(distort)

    def queries(rows):
        clean = catalog[rows] @ distort
        return _normalise(clean + noise * rng.standard_normal(clean.shape) / np.sqrt(DIM))

    rows = rng.permutation(n_catalog)
    train_rows, test_rows = rows[:n_train], rows[n_train:]
    return catalog, train_rows, queries(train_rows), test_rows, queries(test_rows)


@pytest.mark.parametrize("mode", ["query", "shared", "asymmetric"])
def test_fit_learns_and_generalises(mode):
    catalog, train_rows, train_q, test_rows, test_q = _world()
    adapter = ProjectionAdapter(
        mode=mode,
        epochs=40,
        batch_size=64,
        lr=1e-2,
        weight_decay=0.0,
        temperature=0.1,
        val_fraction=0.0,
        seed=1,
        threads=1,
    )
    adapter.fit(train_q, catalog[train_rows], negatives=catalog)

    losses = [h["train_loss"] for h in adapter.history_]
    assert losses[-1] < 0.7 * losses[0]
    assert not np.allclose(adapter.query_weight_, np.eye(DIM))
    base = evaluate(None, catalog, test_q, test_rows)
    tuned = evaluate(adapter, catalog, test_q, test_rows)
    assert tuned["recall@1"] > base["recall@1"] + 0.1
    assert tuned["recall@10"] >= base["recall@10"]
    out = adapter.transform_query(test_q[:5])
    assert out.dtype == np.float32 and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_low_rank_and_reduced_dim_and_validation():
    catalog, train_rows, train_q, test_rows, test_q = _world(seed=3)
    adapter = ProjectionAdapter(
        mode="asymmetric",
        dim_out=24,
        rank=8,
        epochs=30,
        batch_size=64,
        lr=1e-2,
        temperature=0.1,
        val_fraction=0.2,
        seed=0,
        threads=1,
    ).fit(train_q, catalog[train_rows])
    assert adapter.query_weight_.shape == (DIM, 24)
    assert adapter.transform_catalog(catalog).shape == (len(catalog), 24)
    assert 1 <= adapter.best_epoch_ <= 30
    assert all("val_loss" in h for h in adapter.history_)
    assert (
        evaluate(adapter, catalog, test_q, test_rows)["recall@1"]
        > evaluate(None, catalog, test_q, test_rows)["recall@1"]
    )


def test_untrained_start_is_identity():
    catalog, train_rows, train_q, test_rows, test_q = _world(seed=5)
    adapter = ProjectionAdapter(mode="shared", epochs=0, threads=1).fit(
        train_q, catalog[train_rows]
    )
    assert np.array_equal(adapter.query_weight_, np.eye(DIM, dtype=np.float32))
    assert evaluate(adapter, catalog, test_q, test_rows) == evaluate(
        None, catalog, test_q, test_rows
    )


@pytest.mark.parametrize("mode", ["query", "asymmetric"])
def test_save_load_round_trip(tmp_path, mode):
    catalog, train_rows, train_q, _, test_q = _world(seed=2)
    adapter = ProjectionAdapter(mode=mode, rank=4, epochs=3, batch_size=64, seed=4, threads=1)
    adapter.fit(train_q, catalog[train_rows])
    path = adapter.save(tmp_path / "adapter")
    assert path.suffix == ".npz"
    loaded = ProjectionAdapter.load(path)
    assert loaded.get_params() == adapter.get_params()
    assert np.array_equal(loaded.query_weight_, adapter.query_weight_)
    if mode == "query":
        assert loaded.catalog_weight_ is None
    else:
        assert np.array_equal(loaded.catalog_weight_, adapter.catalog_weight_)
    assert np.array_equal(loaded.transform_query(test_q), adapter.transform_query(test_q))
    assert np.array_equal(loaded.transform_catalog(catalog), adapter.transform_catalog(catalog))
    assert loaded.history_ == adapter.history_ and loaded.best_epoch_ == adapter.best_epoch_


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="mode"):
        ProjectionAdapter(mode="both")
    with pytest.raises(ValueError, match="dim_out"):
        ProjectionAdapter(mode="query", dim_out=8)
    with pytest.raises(RuntimeError, match="not fitted"):
        ProjectionAdapter().transform_query(np.zeros((1, DIM)))
    with pytest.raises(ValueError, match="must match"):
        ProjectionAdapter().fit(np.zeros((3, DIM)), np.zeros((4, DIM)))
