import numpy as np
import pandas as pd
import pytest
from PIL import Image

from revision.errors import InputError
from revision.vision.attributes import AttributeHeads, colour_histogram, heads_path
from revision.vision.training import train_attributes


def synthetic(n=600, seed=0):
    """Two attributes carried by separate feature directions, plus noise."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 3, n)
    kind = rng.integers(0, 4, n)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    x[:, 0:4] += 3 * colour[:, None]  # redundant across dims: the heads use input dropout
    x[:, 4:8] += 3 * kind[:, None]
    labels = pd.DataFrame(
        {"colour": [f"c{i}" for i in colour], "category": [f"k{i}" for i in kind]}
    )
    return x, labels


def test_heads_learn_save_and_reload(tmp_path):
    x, labels = synthetic()
    heads = AttributeHeads(attributes=("colour", "category"), hidden=32, epochs=30, batch_size=32)
    heads.fit(x[:500], labels[:500])
    assert heads.loss_history_[-1] < heads.loss_history_[0] * 0.7
    predicted = heads.predict(x[500:])
    for attr in ("colour", "category"):
        acc = np.mean([p[attr][0] for p in predicted] == labels[attr][500:].to_numpy())
        assert acc > 0.85, attr
    reloaded = AttributeHeads.load(heads.save(tmp_path / "heads.pt"))
    for attr, probs in heads.predict_proba(x[:5]).items():
        np.testing.assert_allclose(reloaded.predict_proba(x[:5])[attr], probs, atol=1e-6)


def test_numpy_inference_matches_the_torch_network_and_follows_refits():
    import torch

    x, labels = synthetic()
    heads = AttributeHeads(attributes=("colour", "category"), hidden=32, epochs=3, batch_size=32)
    heads.fit(x, labels)

    def torch_proba():
        inputs = torch.from_numpy((x[:50] - heads.mean_) / heads.scale_)
        with torch.inference_mode():
            return [torch.softmax(o, dim=1).numpy() for o in heads.model_(inputs)]

    for got, expected in zip(heads.predict_proba(x[:50]).values(), torch_proba(), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    before = heads.predict_proba(x[:50])["colour"]
    heads.epochs = 10
    heads.fit(x, labels)  # new weights: the cached numpy copy must not survive the refit
    assert not np.allclose(heads.predict_proba(x[:50])["colour"], before, atol=1e-3)
    for got, expected in zip(heads.predict_proba(x[:50]).values(), torch_proba(), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_colour_histogram_ignores_the_white_studio_background():
    red = Image.new("RGB", (100, 150), "white")
    red.paste((200, 20, 20), (30, 40, 70, 110))
    blue = Image.new("RGB", (100, 150), "white")
    blue.paste((20, 20, 200), (10, 10, 90, 140))
    big_red = Image.new("RGB", (100, 150), (200, 20, 20))
    h_red, h_blue, h_big = (colour_histogram(im) for im in (red, blue, big_red))
    assert h_red @ h_big > 0.9  # the size of the garment barely matters (only edge blending)
    assert h_red @ h_blue < 0.1


def test_train_attributes_reports_held_out_accuracy(built_warehouse, tmp_path):
    import shutil

    from revision.search.engine import SearchEngine
    from revision.warehouse import Warehouse

    warehouse = Warehouse(tmp_path / "wh")  # the shared warehouse is read-only
    shutil.copytree(built_warehouse.root, warehouse.root)
    engine = SearchEngine.open(warehouse)
    products = engine.products.loc[engine.index.ids_]
    report = train_attributes(
        warehouse,
        products,
        engine.raw_vectors,
        engine.encode,
        augment=40,
        eval_queries=20,
        epochs=25,
    )
    assert set(report["attributes"]) == {"colour", "category", "pattern", "index_group"}
    for r in report["attributes"].values():
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["query_photo_accuracy"] <= 1
    # even on a tiny catalog the heads beat always answering the most common type
    cat = report["attributes"]["category"]
    assert cat["accuracy"] > cat["majority_baseline"]
    assert report["path"] == str(heads_path(warehouse))


def test_train_attributes_wants_one_raw_embedding_per_product(built_warehouse):
    from revision.search.engine import SearchEngine

    engine = SearchEngine.open(built_warehouse)
    products = engine.products.loc[engine.index.ids_]
    with pytest.raises(InputError, match="one row each"):
        train_attributes(built_warehouse, products, engine.raw_vectors[:-1], engine.encode)
    with pytest.raises(InputError, match=r"lack column.*variant_group"):
        train_attributes(
            built_warehouse,
            products.drop(columns="variant_group"),
            engine.raw_vectors,
            engine.encode,
        )
