"""Query-photo generator: deterministic per seed, real JPEGs, harder severities stray further."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from revision.vision.images import load_image
from revision.vision.query_photos import (
    LOW_QUALITY_KINDS,
    PARAMS,
    SEVERITIES,
    make_low_quality,
    make_query_photo,
    query_photo_bytes,
)


@pytest.fixture(scope="module")
def photos(hm_dir) -> list[Image.Image]:
    paths = sorted((hm_dir / "images").glob("*/*.jpg"))[::500][:20]
    assert len(paths) == 20
    return [load_image(p) for p in paths]


@pytest.mark.parametrize("severity", SEVERITIES)
def test_same_seed_same_bytes_other_seed_other_bytes(photos, severity):
    photo = photos[3]
    first = query_photo_bytes(photo, severity, seed=7)
    assert query_photo_bytes(photo.copy(), severity, seed=7) == first
    assert query_photo_bytes(photo, severity, seed=8) != first


@pytest.mark.parametrize("severity", SEVERITIES)
def test_output_is_a_real_jpeg_of_about_the_input_size(photos, severity):
    photo = photos[5]
    data = query_photo_bytes(photo, severity, seed=1)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "JPEG"
    assert decoded.size == photo.size
    out = make_query_photo(photo, severity, seed=1)
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(decoded.convert("RGB")))


def test_harder_severities_stray_further_from_the_catalog_photo(photos):
    def mean_difference(severity: str) -> float:
        diffs = [
            np.abs(
                np.asarray(make_query_photo(p, severity, seed=i), dtype=np.float32)
                - np.asarray(p, dtype=np.float32)
            ).mean()
            for i, p in enumerate(photos)
        ]
        return float(np.mean(diffs))

    mild, medium, hard = (mean_difference(s) for s in SEVERITIES)
    assert 0 < mild < medium < hard


@pytest.mark.parametrize(("background_p", "low", "high"), [(0.0, 0, 0), (1.0, 12, 20)])
def test_background_replacement(photos, monkeypatch, background_p, low, high):
    # Neutral light, so only a new background can move the corner colour far from the studio's.
    params = dataclasses.replace(
        PARAMS["medium"],
        exposure=((1.0, 1.0),),
        contrast=(1.0, 1.0),
        temperature=0.0,
        background_p=background_p,
    )
    monkeypatch.setitem(PARAMS, "medium", params)

    def corner(img: Image.Image) -> np.ndarray:
        return np.median(np.asarray(img)[3:12, 3:12].reshape(-1, 3), axis=0)

    moved = sum(
        np.abs(corner(make_query_photo(p, "medium", seed=i)) - corner(p)).max() > 40
        for i, p in enumerate(photos)
    )
    assert low <= moved <= high  # pale products keep their studio backdrop


def test_unknown_severity_lists_the_valid_ones(photos):
    with pytest.raises(ValueError, match=r"'extreme'.*mild, medium, hard"):
        make_query_photo(photos[0], "extreme", seed=0)


@pytest.mark.parametrize("kind", LOW_QUALITY_KINDS)
def test_low_quality_makers_are_deterministic(photos, kind):
    a = make_low_quality(photos[2], kind, seed=4)
    assert a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(make_low_quality(photos[2], kind, seed=4)))
    assert not np.array_equal(np.asarray(a), np.asarray(make_low_quality(photos[2], kind, seed=5)))


def test_low_quality_kinds_do_what_they_say(photos):
    photo = photos[0]
    dark = np.asarray(make_low_quality(photo, "dark", seed=0).convert("L"), dtype=np.float32)
    assert dark.mean() < 30
    tiny = make_low_quality(photo, "tiny", seed=0)
    assert max(tiny.size) <= 56
    off_a = make_low_quality(photos[0], "off_topic", seed=3)
    off_b = make_low_quality(photos[1], "off_topic", seed=3)
    assert off_a.size == photo.size
    assert np.array_equal(np.asarray(off_a), np.asarray(off_b))  # the input is ignored


def test_unknown_low_quality_kind_lists_the_valid_ones(photos):
    with pytest.raises(ValueError, match="dark, blurred, tiny, off_topic"):
        make_low_quality(photos[0], "grainy", seed=0)
