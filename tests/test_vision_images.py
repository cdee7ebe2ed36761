"""load_image: good photos decode to RGB; every kind of bad file is an InputError naming it."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image, ImageDraw, ImageFile

from revision.errors import InputError
from revision.vision.images import MAX_PIXELS, content_hash, load_image


@pytest.fixture(scope="module")
def real_jpeg(hm_dir):
    return sorted((hm_dir / "images").glob("*/*.jpg"))[0]


def _bomb_png(width: int, height: int) -> bytes:
    """A huge, almost constant bilevel image: tens of kilobytes on disk."""
    img = Image.new("1", (width, height), 1)
    ImageDraw.Draw(img).rectangle((10, 10, 300, 300), fill=0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_real_photo_loads_as_rgb(real_jpeg):
    img = load_image(real_jpeg)
    assert img.mode == "RGB"
    assert img.size == (224, 336)
    assert list(load_image(real_jpeg.read_bytes()).getdata()) == list(img.getdata())


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n")
    with pytest.raises(InputError, match=r"notes\.jpg: not an image"):
        load_image(path)


def test_truncated_jpeg(tmp_path, real_jpeg):
    data = real_jpeg.read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"half\.jpg: truncated or corrupt JPEG"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never relaxed globally


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(11_000, 10_000))
    assert path.stat().st_size < 200_000

    def no_decode(self):
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(InputError) as err:
        load_image(path)
    assert str(err.value) == f"{path}: image is 11000x10000 (110 MP), above the 100 MP limit"


def test_bomb_beyond_pils_own_limit(tmp_path):
    # PIL itself refuses above 2 x its MAX_IMAGE_PIXELS; the message must still name the file.
    path = tmp_path / "huge.png"
    path.write_bytes(_bomb_png(20_000, 10_000))
    with pytest.raises(InputError, match=r"huge\.png: image has 200 MP, above the 100 MP limit"):
        load_image(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.jpg: empty file"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"gone\.jpg: no such file"):
        load_image(tmp_path / "gone.jpg")


def test_bytes_errors_name_the_source():
    with pytest.raises(InputError, match=r"^upload 42: not an image"):
        load_image(b"GIF89a-but-not-really", source="upload 42")


def test_oversized_pil_image_is_refused():
    with pytest.raises(InputError, match=r"^query: image is 10001x10000"):
        load_image(Image.new("1", (10_001, 10_000)), source="query")
    assert MAX_PIXELS == 100_000_000


def test_transparency_is_flattened_onto_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((0, 0), (0, 0, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = load_image(buf.getvalue())
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 255)
    assert out.getpixel((3, 3)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # phone held upright: stored landscape, shown portrait
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), "red").save(buf, format="JPEG", exif=exif)
    assert load_image(buf.getvalue()).size == (20, 40)


def test_content_hash_is_sha256_of_the_file(tmp_path, real_jpeg):
    data = real_jpeg.read_bytes()
    expected = hashlib.sha256(data).hexdigest()
    assert content_hash(real_jpeg) == expected
    assert content_hash(data) == expected
    assert content_hash(data + b"\0") != expected
    with pytest.raises(InputError, match=r"nope\.jpg: no such file"):
        content_hash(tmp_path / "nope.jpg")
