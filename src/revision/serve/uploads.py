"""Uploaded photos: checked before any pixel is decoded, then kept by content for mining.

Checks, cheapest first, each failing with the HTTP status a client can act on and the field:
empty (422), over the size limit (413), not a JPEG, PNG or WebP by its first bytes whatever
its name or declared type says (415), more pixels than the limit by its header (413, a
decompression bomb never gets decoded), then the full decode of `revision.vision.images`
(422 for a truncated or corrupt file). A kept photo is stored under a name the server derives
from its SHA-256, never from anything the client sent, so no client string reaches a path.
"""

from __future__ import annotations

import io
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from revision.errors import InputError
from revision.vision.images import content_hash, load_image
from revision.warehouse import Warehouse

FIELD = "photo"
ACCEPTED = "JPEG, PNG or WebP"
UPLOADS = ("uploads",)  # under artifacts/
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
# Not images, but often sent as one: named so the error says what the file is.
_LOOKALIKES = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an office document)"),
    (b"GIF8", "a GIF image (not accepted)"),
    (b"\x00\x00\x00", "an ISO media file (HEIC or video)"),
    (b"<", "markup text (HTML, XML or SVG)"),
)


class UploadError(InputError):
    """An unusable upload: `status` is the HTTP status, `field` the form field at fault."""

    def __init__(self, message: str, status: int = 422, field: str = FIELD):
        super().__init__(message)
        self.status, self.field = status, field


def sniff(data: bytes) -> str | None:
    """The image format by its magic bytes ("JPEG", "PNG", "WEBP"), or None.

    >>> sniff(b"\\xff\\xd8\\xff\\xe0rest"), sniff(b"%PDF-1.7")
    ('JPEG', None)
    """
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _what(data: bytes) -> str:
    for magic, name in _LOOKALIKES:
        if data.startswith(magic):
            return name
    return "unrecognised content"


@dataclass(frozen=True)
class Photo:
    image: Image.Image
    data: bytes
    format: str  # JPEG | PNG | WEBP
    sha256: str

    @property
    def extension(self) -> str:
        return _EXTENSIONS[self.format]


def check_photo(data: bytes, *, max_bytes: int, max_pixels: int) -> Photo:
    """A decoded photo, or an `UploadError` saying what is wrong with the upload."""
    if not data:
        raise UploadError(f"{FIELD}: empty file (0 bytes)")
    if len(data) > max_bytes:
        raise UploadError(
            f"{FIELD}: {len(data):,} bytes, above the {max_bytes:,}-byte upload limit", 413
        )
    kind = sniff(data)
    if kind is None:
        raise UploadError(f"{FIELD}: not a {ACCEPTED} image ({_what(data)})", 415)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as header:  # reads the header only
                width, height = header.size
        except Image.DecompressionBombError:
            raise UploadError(
                f"{FIELD}: too many pixels (a decompression bomb), above the "
                f"{max_pixels / 1e6:g} MP limit",
                413,
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise UploadError(f"{FIELD}: unreadable {kind} header ({exc})") from None
    if width * height > max_pixels:
        raise UploadError(
            f"{FIELD}: {width}x{height} pixels ({width * height / 1e6:.0f} MP), above the "
            f"{max_pixels / 1e6:g} MP limit",
            413,
        )
    try:
        image = load_image(data, source=FIELD)
    except InputError as exc:
        raise UploadError(str(exc)) from None
    return Photo(image, data, kind, content_hash(data))


class UploadStore:
    """Photos kept by content under `artifacts/uploads/ab/<sha256>.<ext>` (written once,
    atomically), so that mining can read what users sent."""

    def __init__(self, warehouse: Warehouse):
        self.warehouse = warehouse
        self.root = warehouse.root.joinpath("artifacts", *UPLOADS)

    def path(self, photo: Photo) -> Path:
        return self.root / photo.sha256[:2] / f"{photo.sha256}.{photo.extension}"

    def keep(self, photo: Photo) -> str:
        """Store the photo (if new); its path relative to the warehouse, for the logs."""
        target = self.path(photo)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(photo.data)
            os.replace(tmp, target)
        return self.warehouse.relative(target)
