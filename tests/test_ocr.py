"""OCR reads large printed brand and label text, in reading order, with sane boxes and scores."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw, ImageFont

from revision.errors import InputError
from revision.vision.ocr import OcrLine, OcrReader


def _squash(text: str) -> str:
    """RapidOCR sometimes drops spaces between words: compare without them."""
    return "".join(text.split()).upper()


@pytest.fixture(scope="module")
def label() -> Image.Image:
    img = Image.new("RGB", (720, 420), "white")
    draw = ImageDraw.Draw(img)
    draw.text((40, 30), "REVISION", fill="black", font=ImageFont.load_default(size=72))
    draw.text((40, 160), "COTTON 100%", fill="black", font=ImageFont.load_default(size=56))
    small = ImageFont.load_default(size=48)
    draw.text((460, 290), "RIGHT", fill="black", font=small)  # drawn first, read second
    draw.text((40, 290), "LEFT", fill="black", font=small)
    return img


@pytest.fixture(scope="module")
def lines(label) -> list[OcrLine]:
    return OcrReader().read(label)


def test_reads_brand_and_label_text(lines):
    texts = [_squash(line.text) for line in lines]
    assert texts == ["REVISION", "COTTON100%", "LEFT", "RIGHT"]


def test_boxes_lie_inside_the_image_and_scores_are_probabilities(lines, label):
    for line in lines:
        assert len(line.box) == 4
        for x, y in line.box:
            assert 0 <= x <= label.width
            assert 0 <= y <= label.height
        assert 0 < line.score <= 1


def test_text_keeps_rows(label, tmp_path):
    path = tmp_path / "label.png"
    label.save(path)
    rows = OcrReader().text(path).split("\n")
    assert [_squash(row) for row in rows] == ["REVISION", "COTTON100%", "LEFTRIGHT"]


def test_min_score_drops_weaker_lines(lines, label):
    weakest = min(line.score for line in lines)
    stricter = OcrReader(min_score=min(1.0, weakest + 1e-6)).read(label)
    assert len(stricter) < len(lines)
    assert all(line.score > weakest for line in stricter)


def test_blank_photo_has_no_text():
    buf = io.BytesIO()
    Image.new("RGB", (224, 336), (240, 240, 240)).save(buf, format="JPEG")
    assert OcrReader().read(buf.getvalue()) == []
    assert OcrReader().text(buf.getvalue()) == ""


def test_bad_input_is_an_input_error(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(InputError, match=r"broken\.jpg"):
        OcrReader().read(path)


def test_min_score_must_be_a_probability():
    with pytest.raises(ValueError, match="min_score"):
        OcrReader(min_score=1.5)
