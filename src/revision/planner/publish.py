"""Publishing a planner: what the running service loads, and hot-reloads when it changes.

The weekly pipeline (or a person, `revision planner publish`) copies a trained checkpoint and
the product features next to a small manifest under `artifacts/published/`:

    artifacts/published/current.json   {"version", "checkpoint", "toollist_digest", ...}
    artifacts/published/<version>/     the checkpoint folder and the features it was built with

Writing the manifest is the last, atomic step, so a service that polls it never sees half a
publication. A manifest whose tool list differs from the warehouse's current one is refused
(its tool indices would be misread).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from revision import toollist
from revision.errors import MissingArtifactError
from revision.planner.checkpoint import load_checkpoint
from revision.planner.features import ARTIFACT as FEATURES
from revision.warehouse import Warehouse

FOLDER = ("published",)
MANIFEST = "current.json"


@dataclass
class Publication:
    version: str  # the checkpoint's content hash
    checkpoint: str  # folder, relative to the warehouse
    features: str  # folder of the product features, relative to the warehouse
    toollist_digest: str
    created: str
    trigger_threshold: float | None = None  # relevance below which the service triggers
    notes: dict = field(default_factory=dict)  # evaluation figures, the data build, …

    def as_dict(self) -> dict:
        return asdict(self)


def manifest_path(warehouse: Warehouse) -> Path:
    return warehouse.root.joinpath("artifacts", *FOLDER, MANIFEST)


def publish(
    warehouse: Warehouse,
    checkpoint: str | Path,
    *,
    trigger_threshold: float | None = None,
    notes: dict | None = None,
) -> Publication:
    """Copy `checkpoint` and the product features into a new published version."""
    doc = toollist.load(warehouse)
    ckpt = load_checkpoint(checkpoint, expected_toollist_digest=doc.digest)
    features = warehouse.root.joinpath("artifacts", *FEATURES)
    if not (features / "features.npz").is_file():
        raise MissingArtifactError(
            f"no product features in {features}: run `revision planner data`"
        )
    target = warehouse.artifact_dir(*FOLDER, ckpt.version)
    for name, source in (("checkpoint", Path(ckpt.path)), ("features", features)):
        dest = target / name
        if not dest.exists():
            tmp = target / f".{name}.{uuid.uuid4().hex}"
            shutil.copytree(source, tmp)
            tmp.rename(dest)
    publication = Publication(
        version=ckpt.version,
        checkpoint=warehouse.relative(target / "checkpoint"),
        features=warehouse.relative(target / "features"),
        toollist_digest=doc.digest,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        trigger_threshold=trigger_threshold,
        notes=dict(notes or {}),
    )
    path = manifest_path(warehouse)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(publication.as_dict(), indent=2), encoding="utf-8")
    tmp.replace(path)
    return publication


def load_publication(warehouse: Warehouse) -> Publication:
    path = manifest_path(warehouse)
    if not path.is_file():
        raise MissingArtifactError(
            f"no published planner in {path.parent}: train one and run `revision planner publish`"
        )
    return Publication(**json.loads(path.read_text("utf-8")))
