import numpy as np
import pytest

from revision.vision.embeddings import ImageEmbedder
from revision.vision.encoder import EfficientNetLite0, get_image_encoder
from revision.vision.images import load_image
from revision.warehouse import Warehouse


@pytest.fixture(scope="module")
def photos(hm_dir):
    return sorted((hm_dir / "images" / "011").glob("*.jpg"))[:6]


def test_onnx_matches_pytorch_and_vectors_are_normalised(photos):
    images = [load_image(p) for p in photos[:3]]
    onnx = EfficientNetLite0(runtime="onnx").encode(images)
    eager = EfficientNetLite0(runtime="torch").encode(images)
    assert onnx.shape == (3, 1280) and onnx.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-5)
    assert np.abs(onnx - eager).max() < 1e-4
    # different products are different vectors, the same photo the same vector
    assert onnx[0] @ onnx[1] < 0.999
    np.testing.assert_allclose(EfficientNetLite0().encode(images[:1])[0], onnx[0], atol=1e-6)


class CountingEncoder:
    def __init__(self, inner):
        self.inner, self.name, self.dim, self.calls = inner, inner.name, inner.dim, 0

    def encode(self, images):
        self.calls += len(images)
        return self.inner.encode(images)


def test_embeddings_are_cached_by_content_across_runs(photos, tmp_path):
    wh = Warehouse(tmp_path / "wh")
    counting = CountingEncoder(get_image_encoder("colour-hist"))
    first, hashes = ImageEmbedder(wh, counting).embed_paths([str(p) for p in photos])
    assert counting.calls == len(photos)
    copy = tmp_path / "same-bytes-other-name.jpg"
    copy.write_bytes(photos[0].read_bytes())
    again = CountingEncoder(get_image_encoder("colour-hist"))  # a fresh process, same warehouse
    vectors, hashes2 = ImageEmbedder(wh, again).embed_paths([str(copy), *map(str, photos)])
    assert again.calls == 0
    np.testing.assert_array_equal(vectors[1:], first)
    np.testing.assert_array_equal(vectors[0], first[0])
    assert hashes2[1:] == hashes


def test_unreadable_image_is_reported_and_the_batch_goes_on(photos, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    errors = []
    vectors, hashes = ImageEmbedder(
        Warehouse(tmp_path / "wh"), get_image_encoder("colour-hist")
    ).embed_paths([str(bad), str(photos[0])], on_error=lambda p, e: errors.append((p, e)))
    assert [p for p, _ in errors] == [str(bad)] and "bad.jpg" in str(errors[0][1])
    assert hashes[0] == "" and not vectors[0].any() and vectors[1].any()
