"""The demo page (`/`), its two static files, sample photos and product thumbnails.

Nothing a client sends becomes a path: static files come from a fixed table, samples and
products are looked up by id in the catalog the service loaded, and their photos are read from
the paths the catalog stores.
"""

from __future__ import annotations

import io
import threading
import zlib
from functools import lru_cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse, Response

from revision.serve.deps import ApiError, ServiceDep
from revision.serve.schemas import ID, Sample
from revision.serve.service import RevisionService
from revision.vision.images import load_image
from revision.vision.query_photos import query_photo_bytes

router = APIRouter()
STATIC = {"page.js": "text/javascript", "page.css": "text/css"}
SAMPLES = 12
THUMB = 256
_lock = threading.Lock()
_samples: dict[int, list[tuple[str, str]]] = {}  # id(service) -> [(product_id, title)]


def _static(name: str) -> bytes:
    return resources.files("revision.serve").joinpath("static", name).read_bytes()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse(_static("index.html"))


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    return Response(status_code=204)


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in STATIC:
        raise ApiError(404, f"no static file {name!r}")
    return Response(_static(name), media_type=STATIC[name])


def samples_of(service: RevisionService) -> list[tuple[str, str]]:
    """A fixed spread of catalog products whose simulated user photos the page offers."""
    with _lock:
        found = _samples.get(id(service))
        if found is None:
            ids = sorted(service.engine.labels)
            step = max(1, len(ids) // SAMPLES)
            found = [(pid, service.engine.labels[pid][0]) for pid in ids[::step][:SAMPLES]]
            _samples[id(service)] = found
        return found


@router.get("/v1/samples", response_model=list[Sample], tags=["page"])
def samples(service: ServiceDep) -> list[Sample]:
    """Sample query photos (simulated user photos of catalog products)."""
    return [Sample(id=pid, title=title) for pid, title in samples_of(service)]


@lru_cache(maxsize=64)
def _sample_photo(path: str, product_id: str) -> bytes:
    seed = zlib.crc32(product_id.encode()) % 10_000
    return query_photo_bytes(load_image(path), "medium", seed=seed)


@router.get("/v1/samples/{sample_id}/photo", tags=["page"])
def sample_photo(sample_id: Annotated[str, Path(pattern=ID)], service: ServiceDep) -> Response:
    if sample_id not in dict(samples_of(service)):
        raise ApiError(404, f"sample_id {sample_id!r}: no such sample", "sample_id")
    path = str(service.engine.products.at[sample_id, "image_path"])
    return Response(_sample_photo(path, sample_id), media_type="image/jpeg")


@lru_cache(maxsize=2048)
def _thumbnail(path: str) -> bytes:
    image = load_image(path)
    image.thumbnail((THUMB, THUMB))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


@router.get("/v1/products/{product_id}/image", tags=["page"])
def product_image(product_id: Annotated[str, Path(pattern=ID)], service: ServiceDep) -> Response:
    """A catalog product's photo, as a thumbnail."""
    if product_id not in service.engine.labels:
        raise ApiError(404, f"product_id {product_id!r}: no such product", "product_id")
    path = str(service.engine.products.at[product_id, "image_path"])
    return Response(
        _thumbnail(path), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"}
    )
