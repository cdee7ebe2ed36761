"""Run mining batches on Ray Data: the same batches, files and commit protocol as the local loop.

Trade-off: the driver assembles each batch's inputs (cheap dictionary lookups) and ships them
as JSON, and a pool of actors, each holding one analyst (models loaded once per actor), analyses
and writes whole batches. That keeps one batch = one file = one done marker, which is what makes
a killed run resumable, at the price of Ray's own shuffling being unused. On a cluster the
warehouse must be a path every node can reach (a shared or mounted file system).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Any

from revision.errors import MissingExtraError
from revision.logs.context import RequestContext
from revision.mining._base import Analysis, MiningInput, Product, get_analyst
from revision.progress import progress
from revision.settings import get_settings
from revision.warehouse import Warehouse


def encode_batch(inputs: list[MiningInput], failed: list[Analysis]) -> str:
    return json.dumps(
        {
            "inputs": [asdict(x) for x in inputs],
            "failed": [[a.request_id, a.stage, a.error] for a in failed],
        }
    )


def decode_batch(payload: str) -> tuple[list[MiningInput], list[Analysis]]:
    data = json.loads(payload)
    inputs = [
        MiningInput(
            request_id=x["request_id"],
            image=x["image"],
            image_hash=x["image_hash"],
            results=tuple(Product(**p) for p in x["results"]),
            context=_context(x.get("context")),
        )
        for x in data["inputs"]
    ]
    failed = [Analysis.failed(rid, stage, error) for rid, stage, error in data["failed"]]
    return inputs, failed


def _context(data: dict | None) -> RequestContext | None:
    if data is None:
        return None
    data = dict(data)
    data["events"] = [tuple(e) for e in data.get("events", [])]
    return RequestContext(**data)


class BatchWorker:
    """A Ray Data actor: one analyst, many batches."""

    def __init__(self, root: str, partition: dict[str, str], backend: str, options: dict):
        self.warehouse = Warehouse(root)
        self.partition = partition
        self.backend = backend
        self.analyst = get_analyst(backend, self.warehouse, **options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        from revision.mining.runner import analyse_batch, write_batch

        out: dict[str, list] = {"index": [], "counts": []}
        for index, payload in zip(batch["index"], batch["payload"], strict=True):
            inputs, failed = decode_batch(str(payload))
            analyses = analyse_batch(self.analyst, inputs, failed)
            counts = write_batch(self.warehouse, self.partition, int(index), analyses, self.backend)
            out["index"].append(int(index))
            out["counts"].append(json.dumps(counts))
        return out


def run_batches_ray(
    warehouse: Warehouse,
    state,
    jobs: Iterable[tuple[int, list[MiningInput], list[Analysis]]],
    total: int,
    backend: str,
    options: dict[str, Any],
    workers: int = 2,
) -> Iterator[tuple[int, dict[str, int]]]:
    """Yield (batch index, counts) as Ray finishes batches (in any order)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingExtraError("ray[data]", "ray") from None
    started_here = not ray.is_initialized()
    address = get_settings().ray_address
    if started_here and address:
        ray.init(address=address, log_to_driver=False)  # an existing cluster
    elif started_here:  # a local cluster sized to the workers
        ray.init(
            num_cpus=max(1, workers),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO lines
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours is on stderr already
        items = [
            {"index": i, "payload": encode_batch(inputs, failed)} for i, inputs, failed in jobs
        ]
        if not items:
            return
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            BatchWorker,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
            fn_constructor_kwargs={
                "root": str(warehouse.root),
                "partition": state.partition(),
                "backend": backend,
                "options": options,
            },
            num_cpus=1,
        )
        for row in progress(dataset.iter_rows(), total=total, description="mining on Ray"):
            yield int(row["index"]), json.loads(row["counts"])
    finally:
        if started_here:
            ray.shutdown()
