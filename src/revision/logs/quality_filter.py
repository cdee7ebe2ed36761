"""Low-quality filter for query photos: measured once per distinct photo, cached in the warehouse.

Trade-off: the cache (`logs/image_quality`) stores the raw figures, not the verdict, so new
thresholds apply without re-measuring; a photo is keyed by its `image_hash` (or its path when
the log has no hash), so a million requests that re-use a few thousand photos measure each photo
once (about 1 ms, or 30 ms with the NSFW classifier). Unreadable photos are never cached: a
wrong `--images` folder must not be remembered.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from revision.errors import InputError
from revision.progress import progress
from revision.tables import IMAGE_QUALITY
from revision.vision.quality import QualityReport, QualityThresholds, measure, reasons
from revision.warehouse import Warehouse

UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Verdict:
    quality: str  # reasons joined by ",", "" when the photo passes; "unreadable" when unread
    error: str | None = None  # why the photo could not be read

    @property
    def unreadable(self) -> bool:
        return self.error is not None


def image_key(image_hash: str | None, image: str | None) -> str:
    """The cache key: the content hash when the log has one, else the path as written."""
    return image_hash or image or ""


def resolve_image(image: str | None, roots: list[Path]) -> Path:
    """Absolute paths as they are; relative ones against `roots` in order (first that exists)."""
    if not image:
        raise InputError("request has no image")
    if "://" in image and not image.startswith("file://"):
        raise InputError(f"{image}: remote URI, not fetched (the pipeline runs offline)")
    path = Path(image.removeprefix("file://"))
    if path.is_absolute():
        return path
    candidates = [root / path for root in roots]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return candidates[0] if candidates else path


def _report(row: dict, nsfw: bool) -> QualityReport:
    return QualityReport(
        blur=row["blur"],
        brightness=row["brightness"],
        dark_fraction=row["dark_fraction"],
        bright_fraction=row["bright_fraction"],
        width=row["width"],
        height=row["height"],
        nsfw=row["nsfw"] if nsfw else None,
    )


def load_cache(warehouse: Warehouse) -> dict[str, dict]:
    if not warehouse.exists(IMAGE_QUALITY):
        return {}
    return {r["image_key"]: r for r in warehouse.read(IMAGE_QUALITY).to_pylist()}


def assess_images(
    warehouse: Warehouse,
    images: dict[str, str],
    *,
    nsfw: bool = True,
    thresholds: QualityThresholds | None = None,
    images_root: str | os.PathLike | None = None,
) -> tuple[dict[str, Verdict], int]:
    """Verdicts for `images` ({key: image path}); returns (verdicts, photos newly measured).

    Photos missing from the cache (or cached without an NSFW score when `nsfw` is on) are
    measured and added to `logs/image_quality`.
    """
    roots = [Path(images_root)] if images_root else []
    roots += [warehouse.root, Path.cwd()]
    cache = load_cache(warehouse)
    todo = [k for k in images if k not in cache or (nsfw and cache[k]["nsfw"] is None)]
    errors: dict[str, str] = {}
    fresh: list[dict] = []
    for key in progress(todo, description="measuring query photos"):
        try:
            path = resolve_image(images[key], roots)
            report = measure(path, nsfw=nsfw)
        except InputError as exc:
            errors[key] = str(exc)
            continue
        row = {
            "image_key": key,
            "image": images[key],
            "blur": report.blur,
            "brightness": report.brightness,
            "dark_fraction": report.dark_fraction,
            "bright_fraction": report.bright_fraction,
            "width": report.width,
            "height": report.height,
            "nsfw": report.nsfw,
        }
        fresh.append(row)
        cache[key] = row
    if fresh:
        table = pa.Table.from_pylist(list(cache.values()), schema=IMAGE_QUALITY.schema)
        warehouse.write(IMAGE_QUALITY, table.sort_by("image_key"))
    verdicts = {}
    for key in images:
        if key in errors:
            verdicts[key] = Verdict(UNREADABLE, errors[key])
        else:
            verdicts[key] = Verdict(",".join(reasons(_report(cache[key], nsfw), thresholds)))
    return verdicts, len(fresh)
