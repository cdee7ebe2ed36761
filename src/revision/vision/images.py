"""Safe image loading: every stage decodes catalog and user images through `load_image`.

Trade-off: we always force a full decode, a few milliseconds more than PIL's lazy open, so that
a truncated, corrupt or oversized file fails here with its name instead of deep inside a model.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from revision.errors import InputError

MAX_PIXELS = 100_000_000
"""Refuse images above this many pixels (100 MP): larger is a decompression bomb, not a photo."""

ImageSource = str | os.PathLike[str] | bytes
ImageInput = ImageSource | Image.Image

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


def _read(path_or_bytes: ImageSource, source: str | None) -> tuple[bytes, str]:
    """Return the raw bytes and the name to put in error messages."""
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        return bytes(path_or_bytes), source or "image bytes"
    name = source or os.fspath(path_or_bytes)
    path = Path(path_or_bytes)
    try:
        return path.read_bytes(), name
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not an image file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read file ({exc.strerror or exc})") from None


def _too_big(name: str, width: int, height: int) -> InputError:
    mp = width * height / 1e6
    return InputError(
        f"{name}: image is {width}x{height} ({mp:.0f} MP), "
        f"above the {MAX_PIXELS / 1e6:.0f} MP limit"
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten transparency onto white (studio convention) rather than PIL's black."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path_or_bytes: ImageInput, *, source: str | None = None) -> Image.Image:
    """Decode a file, bytes or PIL image into a fully loaded RGB image, upright per EXIF.

    Raises `InputError` naming the file (or `source`) when it is missing, empty, not an image,
    truncated or corrupt, or larger than `MAX_PIXELS`.
    """
    if isinstance(path_or_bytes, Image.Image):
        name = source or "image"
        if path_or_bytes.width * path_or_bytes.height > MAX_PIXELS:
            raise _too_big(name, *path_or_bytes.size)
        try:
            return _to_rgb(path_or_bytes)
        except _DECODE_ERRORS as exc:  # a lazily opened image can still be truncated
            raise InputError(f"{name}: truncated or corrupt image ({exc})") from None

    data, name = _read(path_or_bytes, source)
    if not data:
        raise InputError(f"{name}: empty file (0 bytes)")
    with warnings.catch_warnings():
        # We apply our own pixel limit below; PIL's lower default would only warn.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            # PIL refuses before we see the size; its message carries the pixel count.
            match = re.search(r"\((\d+) pixels\)", str(exc))
            mp = f"{int(match.group(1)) / 1e6:.0f} MP" if match else "too many pixels"
            raise InputError(
                f"{name}: image has {mp}, above the {MAX_PIXELS / 1e6:.0f} MP limit"
            ) from None
        except UnidentifiedImageError:
            raise InputError(f"{name}: not an image (unrecognised format)") from None
        except _DECODE_ERRORS as exc:
            raise InputError(f"{name}: cannot read image header ({exc})") from None
        if img.width * img.height > MAX_PIXELS:  # checked before any pixel is decoded
            raise _too_big(name, img.width, img.height)
        try:
            img.load()
        except _DECODE_ERRORS as exc:
            raise InputError(f"{name}: truncated or corrupt {img.format} image ({exc})") from None
    try:
        img = ImageOps.exif_transpose(img)
    except (*_DECODE_ERRORS, KeyError, TypeError):
        pass  # a broken orientation tag should not reject an otherwise good photo
    return _to_rgb(img)


def content_hash(path_or_bytes: ImageSource) -> str:
    """SHA-256 hex of the raw file bytes: the cache key for anything computed from an image."""
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        return hashlib.sha256(path_or_bytes).hexdigest()
    name = os.fspath(path_or_bytes)
    digest = hashlib.sha256()
    try:
        with open(name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read file ({exc.strerror or exc})") from None
    return digest.hexdigest()
