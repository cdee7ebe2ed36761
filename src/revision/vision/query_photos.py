"""Seeded generator that turns a catalog product photo into a plausible user query photo.

There are no consumer photos in our data (the H&M set holds studio product shots only), so every
query photo the simulator sends is derived from a catalog photo: reframed (crop, rotation,
perspective), the studio background sometimes replaced, relit, blurred, noised and finally
JPEG-compressed in memory so the artefacts are real. Trade-off: one cheap PIL + numpy pass
(a few ms per photo) instead of a realistic renderer; it reproduces the nuisances that hurt
retrieval, not the look of a real bedroom floor. `make_low_quality` makes the photos a real log
also holds and the low-quality filter must reject (dark, blurred, tiny) or cannot help with
(off-topic).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SEVERITIES = ("mild", "medium", "hard")
LOW_QUALITY_KINDS = ("dark", "blurred", "tiny", "off_topic")
BACKGROUND_STYLES = ("flat", "gradient", "texture")

_REF_SIDE = 336  # blur radii below are in pixels of a photo whose longer side is this long
_KEY_TOLERANCE = 24  # max channel distance from the studio colour that still counts as backdrop
_KEY_EDGE = 6  # a step of this many grey levels between neighbours is an outline, not backdrop
_FRAME = 2  # catalog photos often carry a darker 1-2 px resampling frame; it is backdrop
_PALE = 0.7  # above this backdrop-coloured share of the central box, keep the studio backdrop
_KEY_STEP = 4  # the border flood fill runs on a grid this much coarser, for speed


@dataclass(frozen=True)
class PhotoParams:
    """Ranges one severity samples from; a (lo, hi) pair is drawn uniformly."""

    crop: tuple[float, float]  # fraction of each side cut away (zoom in / partial framing)
    rotation: float  # max |degrees| the camera is rolled
    perspective: float  # max shift of each corner, as a fraction of the side (camera tilt)
    blur: tuple[float, float]  # Gaussian radius in pixels at a 336 px longer side
    noise: tuple[float, float]  # sensor noise sigma, grey levels
    exposure: tuple[tuple[float, float], ...]  # brightness gain ranges; one is picked
    contrast: tuple[float, float]
    temperature: float  # max |shift| of the red and blue gains (warm or cool light)
    background_p: float  # probability of replacing the studio background
    backgrounds: tuple[str, ...]  # styles drawn from BACKGROUND_STYLES
    jpeg_quality: tuple[int, int]


PARAMS: dict[str, PhotoParams] = {
    # A decent phone photo: framed a little differently, good light.
    "mild": PhotoParams(
        crop=(0.0, 0.08),
        rotation=4.0,
        perspective=0.02,
        blur=(0.0, 0.7),
        noise=(0.0, 2.0),
        exposure=((0.92, 1.04),),  # studio whites are already near 245: more gain blows them
        contrast=(0.92, 1.04),
        temperature=0.03,
        background_p=0.0,
        backgrounds=BACKGROUND_STYLES,
        jpeg_quality=(80, 95),
    ),
    # A typical one: tilted, a little soft, indoor light, sometimes on a bed or a table.
    "medium": PhotoParams(
        crop=(0.03, 0.18),
        rotation=10.0,
        perspective=0.06,
        blur=(0.3, 1.4),
        noise=(1.0, 5.0),
        exposure=((0.75, 1.06),),
        contrast=(0.8, 1.05),
        temperature=0.08,
        background_p=0.35,
        backgrounds=BACKGROUND_STYLES,
        jpeg_quality=(60, 85),
    ),
    # A poor one: badly framed, shaken, dark or blown out, heavily compressed.
    "hard": PhotoParams(
        crop=(0.1, 0.3),
        rotation=20.0,
        perspective=0.12,
        blur=(1.0, 2.5),
        noise=(4.0, 10.0),
        exposure=((0.4, 0.65), (1.25, 1.5)),
        contrast=(0.6, 0.95),
        temperature=0.15,
        background_p=0.6,
        backgrounds=BACKGROUND_STYLES,
        jpeg_quality=(35, 65),
    ),
}


def make_query_photo(image: Image.Image, severity: str, seed: int) -> Image.Image:
    """The user photo of `image` for (severity, seed), decoded from its JPEG bytes."""
    return _decode(query_photo_bytes(image, severity, seed))


def query_photo_bytes(image: Image.Image, severity: str, seed: int) -> bytes:
    """The JPEG bytes a user would upload; identical for the same (image, severity, seed).

    `seed` is any non-negative integer; severities draw from independent streams.
    """
    if severity not in PARAMS:
        raise ValueError(f"unknown severity {severity!r}; valid: {', '.join(SEVERITIES)}")
    p = PARAMS[severity]
    rng = np.random.default_rng([seed, SEVERITIES.index(severity)])
    img = image.convert("RGB")
    studio = _studio_colour(img)

    coeffs = _camera(img.size, rng, p)
    warped = _warp(img, coeffs, fill=tuple(int(v) for v in studio))
    if rng.random() < p.background_p and (mask := _backdrop_mask(img, studio)) is not None:
        # Key on the untouched photo, then move the mask with the camera: the ground itself is
        # generated at the output size, so it covers what the camera sees beyond the backdrop.
        style = p.backgrounds[rng.integers(len(p.backgrounds))]
        ground = _background(style, img.size, rng)
        backdrop = _warp(mask, coeffs, fill=255).filter(ImageFilter.GaussianBlur(1.2))
        warped = Image.composite(ground, warped, backdrop)
    img = warped
    radius = rng.uniform(*p.blur) * max(img.size) / _REF_SIDE
    if radius > 0.1:
        img = img.filter(ImageFilter.GaussianBlur(radius))

    gain = rng.uniform(*p.exposure[rng.integers(len(p.exposure))])
    contrast = rng.uniform(*p.contrast)
    warm = rng.uniform(-p.temperature, p.temperature)
    arr = _relight(np.asarray(img, dtype=np.float32), gain, contrast, warm)
    arr = _add_noise(arr, rng.uniform(*p.noise), rng)
    return _encode(arr, int(rng.integers(p.jpeg_quality[0], p.jpeg_quality[1] + 1)))


def make_low_quality(image: Image.Image, kind: str, seed: int) -> Image.Image:
    """A photo the log's quality filter should catch, JPEG round-tripped like real uploads.

    - "dark": shot with the light off: gain 0.04-0.11 plus low-light noise (mean luma < ~30).
    - "blurred": badly out of focus: Gaussian radius 3-5 % of the longer side.
    - "tiny": a thumbnail, longer side 24-56 px (not upscaled, so its size shows it).
    - "off_topic": a synthetic non-product picture (shapes on a textured ground) of the same
      size, ignoring `image`; it is sharp and well lit, so only relevance can reject it.
    """
    if kind not in LOW_QUALITY_KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(LOW_QUALITY_KINDS)}")
    rng = np.random.default_rng([seed, 100 + LOW_QUALITY_KINDS.index(kind)])
    img = image.convert("RGB")
    quality = int(rng.integers(70, 91))
    if kind == "dark":
        arr = _relight(np.asarray(img, dtype=np.float32), rng.uniform(0.04, 0.11), 0.9, 0.0)
        arr = _add_noise(arr, rng.uniform(2.0, 5.0), rng)
    elif kind == "blurred":
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.03, 0.05) * max(img.size)))
        arr = _add_noise(np.asarray(img, dtype=np.float32), 1.0, rng)
    elif kind == "tiny":
        scale = rng.uniform(24, 56) / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        arr = np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    else:
        arr = _off_topic(img.size, rng)
    return _decode(_encode(arr, quality))


# -- steps ------------------------------------------------------------------------------------


def _studio_colour(img: Image.Image) -> np.ndarray:
    """The studio backdrop: median of a pixel ring just inside the border (the outermost
    pixels of catalog photos are often a darker resampling frame)."""
    a = np.asarray(img)
    i = min(_FRAME, (min(a.shape[:2]) - 1) // 2)
    ring = np.concatenate([a[i], a[-1 - i], a[:, i], a[:, -1 - i]])
    return np.median(ring, axis=0).astype(np.float32)


def _camera(size: tuple[int, int], rng: np.random.Generator, p: PhotoParams) -> tuple:
    """Crop, roll and tilt as one perspective map, so the photo is resampled only once."""
    w, h = size
    c = rng.uniform(*p.crop)
    half = np.array([w, h]) * (1 - c) / 2
    centre = np.array([w, h]) / 2 + rng.uniform(-1, 1, 2) * np.array([w, h]) * c / 2
    theta = np.deg2rad(rng.uniform(-p.rotation, p.rotation))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    quad = corners @ rot.T + centre
    quad += rng.uniform(-p.perspective, p.perspective, (4, 2)) * np.array([w, h])
    return _homography([(0, 0), (w, 0), (w, h), (0, h)], quad)


def _homography(src, dst) -> tuple[float, ...]:
    """PIL's 8 perspective coefficients mapping output points `src` to input points `dst`."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    return tuple(np.linalg.solve(np.array(a, dtype=float), np.array(b, dtype=float)))


def _warp(img: Image.Image, coeffs: tuple, fill) -> Image.Image:
    return img.transform(
        img.size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=fill
    )


def _backdrop_mask(img: Image.Image, studio: np.ndarray) -> Image.Image | None:
    """255 where the studio backdrop is: near its colour and reachable from the border without
    crossing an edge; None when the product is too close to the backdrop to cut out.

    Approximate by design: soft shadows stay, and a pale garment whose outline fades into the
    backdrop can lose a patch. Pale products (white shirts, but also thin jewellery) keep their
    studio backdrop instead, like a white shirt photographed on a white bed.
    """
    h, w = img.height, img.width
    rgb = np.asarray(img, dtype=np.int16)
    close = np.abs(rgb - studio.astype(np.int16)).max(axis=2) < _KEY_TOLERANCE
    if close[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean() > _PALE:
        return None
    grey = rgb.sum(axis=2)
    edge = np.zeros((h, w), dtype=bool)
    edge[:, 1:] |= np.abs(np.diff(grey, axis=1)) > 3 * _KEY_EDGE
    edge[1:, :] |= np.abs(np.diff(grey, axis=0)) > 3 * _KEY_EDGE
    frame = np.ones((h, w), dtype=bool)
    frame[_FRAME:-_FRAME, _FRAME:-_FRAME] = False
    close |= frame
    edge &= ~frame
    reach = _reach_from_border(_pool(close, np.all) & ~_pool(edge, np.any))
    reach = reach.repeat(_KEY_STEP, axis=0).repeat(_KEY_STEP, axis=1)[:h, :w]
    return Image.fromarray((close & reach).astype(np.uint8) * 255)


def _pool(m: np.ndarray, reduce) -> np.ndarray:
    """Reduce each _KEY_STEP x _KEY_STEP block of a boolean map (edge blocks padded)."""
    k = _KEY_STEP
    h, w = m.shape
    padded = np.pad(m, ((0, -h % k), (0, -w % k)), mode="edge")
    return reduce(padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k), axis=(1, 3))


def _reach_from_border(candidate: np.ndarray) -> np.ndarray:
    """Cells of `candidate` 4-connected to the border (flood fill by repeated dilation),
    grown by one cell so the full-resolution test, not the grid, decides the outline."""
    reach = np.zeros_like(candidate)
    for side in (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1]):
        reach[side] = candidate[side]
    while True:
        grown = _dilate(reach) & candidate
        if np.array_equal(grown, reach):
            return _dilate(reach)
        reach = grown


def _dilate(m: np.ndarray) -> np.ndarray:
    out = m.copy()
    out[1:] |= m[:-1]
    out[:-1] |= m[1:]
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    return out


def _background(style: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A surface the product might lie on: a flat colour, a gradient or a textured ground."""
    w, h = size
    base = rng.uniform(40, 230, 3)
    if style == "flat":
        return Image.new("RGB", size, tuple(int(v) for v in base))
    if style == "gradient":
        # A linear gradient is the bilinear blend of its four corner colours.
        other = rng.uniform(40, 230, 3)
        phi = rng.uniform(0, 2 * np.pi)
        t = np.array([[0, 0], [1, 0], [0, 1], [1, 1]]) @ np.array([np.cos(phi), np.sin(phi)])
        t = ((t - t.min()) / np.ptp(t))[:, None]
        corners = (base * (1 - t) + other * t).reshape(2, 2, 3).astype(np.uint8)
        return Image.fromarray(corners).resize(size, Image.Resampling.BILINEAR)
    if style == "texture":
        coarse = rng.uniform(-30, 30, (rng.integers(3, 9), rng.integers(3, 9)))
        blotch = Image.fromarray((coarse + 128).astype(np.uint8)).resize(
            size, Image.Resampling.BICUBIC
        )
        grain = rng.standard_normal((h, w), dtype=np.float32) * 6
        light = np.asarray(blotch, dtype=np.float32) - 128 + grain
        return Image.fromarray(np.clip(base + light[..., None], 0, 255).astype(np.uint8))
    raise ValueError(f"unknown background style {style!r}; valid: {', '.join(BACKGROUND_STYLES)}")


def _relight(arr: np.ndarray, gain: float, contrast: float, warm: float) -> np.ndarray:
    """Exposure gain, contrast about the mean, and a warm (+) or cool (-) colour cast."""
    out = arr * gain
    mean = out.mean()
    out = (out - mean) * contrast + mean
    return out * np.array([1 + warm, 1.0, 1 - warm], dtype=np.float32)


def _add_noise(arr: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Luma-only noise: phone pipelines remove most chroma noise, and it is 3x cheaper."""
    if sigma <= 0:
        return arr
    noise = rng.standard_normal(arr.shape[:2], dtype=np.float32) * np.float32(sigma)
    return arr + noise[..., None]


def _off_topic(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random shapes on a random ground: a picture of nothing we sell."""
    w, h = size
    style = BACKGROUND_STYLES[rng.integers(len(BACKGROUND_STYLES))]
    img = _background(style, size, rng)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(4, 12)):
        x0, x1 = sorted(rng.uniform(-0.1, 1.1, 2) * w)
        y0, y1 = sorted(rng.uniform(-0.1, 1.1, 2) * h)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            points = [(float(x), float(y)) for x, y in rng.uniform(0, 1, (3, 2)) * (w, h)]
            draw.polygon(points, fill=colour)
    return np.asarray(img, dtype=np.float32)


def _encode(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8)).save(
        buf, format="JPEG", quality=quality
    )
    return buf.getvalue()


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")
