"""Quality filter: real and ordinary query photos pass; dark, blurred and tiny photos fail."""

from __future__ import annotations

import pytest
from PIL import Image, ImageFilter

from revision.vision.images import load_image
from revision.vision.quality import QualityReport, QualityThresholds, measure, reasons
from revision.vision.query_photos import make_low_quality, make_query_photo


@pytest.fixture(scope="module")
def photos(hm_dir) -> list[Image.Image]:
    paths = sorted((hm_dir / "images").glob("*/*.jpg"))[250::500][:20]
    assert len(paths) == 20
    return [load_image(p) for p in paths]


def test_real_catalog_photos_pass(photos):
    for photo in photos:
        report = measure(photo)
        assert reasons(report) == [], report
        assert 0 <= report.nsfw <= 1
        assert (report.width, report.height) == (224, 336)


@pytest.mark.parametrize("severity", ["mild", "medium"])
def test_ordinary_query_photos_pass(photos, severity):
    for i, photo in enumerate(photos):
        report = measure(make_query_photo(photo, severity, seed=i), nsfw=False)
        assert reasons(report) == [], report


@pytest.mark.parametrize("kind", ["dark", "blurred", "tiny"])
def test_low_quality_photos_fail_for_the_right_reason(photos, kind):
    for i, photo in enumerate(photos):
        report = measure(make_low_quality(photo, kind, seed=i), nsfw=False)
        assert kind in reasons(report), report  # each kind is named after its reason


def test_blur_falls_as_the_photo_softens(photos):
    photo = photos[0]
    scores = [
        measure(photo.filter(ImageFilter.GaussianBlur(r)), nsfw=False).blur for r in (0, 1, 3, 8)
    ]
    assert scores == sorted(scores, reverse=True)


def test_brightness_figures_on_flat_images():
    black = measure(Image.new("RGB", (100, 100), "black"), nsfw=False)
    assert (black.brightness, black.dark_fraction, black.bright_fraction) == (0, 1, 0)
    assert black.nsfw is None
    assert "dark" in reasons(black)
    white = measure(Image.new("RGB", (100, 100), "white"), nsfw=False)
    assert (white.brightness, white.dark_fraction, white.bright_fraction) == (255, 0, 1)
    assert "overexposed" in reasons(white)


def test_reasons_follow_the_thresholds(photos, tmp_path):
    path = tmp_path / "photo.jpg"
    photos[0].save(path)
    report = measure(path, nsfw=False)
    assert reasons(report) == []
    assert reasons(report, QualityThresholds(min_side=300)) == ["tiny"]
    flagged = QualityReport(**{**report.__dict__, "nsfw": 0.95})
    assert reasons(flagged) == ["nsfw"]
    assert reasons(flagged, QualityThresholds(max_nsfw=0.99)) == []


def test_thresholds_reject_an_empty_brightness_band():
    with pytest.raises(ValueError, match="min_brightness"):
        QualityThresholds(min_brightness=200, max_brightness=100)
