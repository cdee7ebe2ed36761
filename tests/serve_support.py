"""A servable warehouse for the service's tests and benchmark: the catalog and its index, the
default tool list saved as the warehouse's own, the planner's product features, and a tiny
embedded planner trained on synthetic requests and published the way the pipeline publishes.

The synthetic planner learns a constant plan (the question, or the question and the summary
for a second version), so that a test can tell versions apart and the page always has a
question to answer. It is a real checkpoint, loaded and decoded by the service's own code.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from revision import toollist
from revision.tools._registry import default_tool_list

PLAN_V1 = ("preference_question",)
PLAN_V2 = ("result_summary", "preference_question")
PLAN_PAGE = ("result_summary", "metadata_display", "preference_question")
TINY = dict(
    d_model=48, n_layers=2, n_heads=4, ffn_hidden=96, max_thinking=8, max_answer=3,
)  # fmt: skip


def save_default_tool_list(warehouse) -> toollist.ToolListDoc:
    tools = default_tool_list()
    specs = [toollist.ToolSpec(e.index, e.title, e.description, e.component) for e in tools]
    return toollist.save(warehouse, specs)


def product_features(warehouse) -> None:
    from revision.planner.features import ProductFeatures

    ProductFeatures.build(warehouse).save(warehouse)


def text_index(warehouse) -> None:
    """What `revision index build` adds for the text-search tool."""
    from revision.search.engine import SearchEngine
    from revision.tools.builtin.text_search import build_text_index
    from revision.tools.catalog import catalog_arrays

    build_text_index(catalog_arrays(SearchEngine.open(warehouse)), show_progress=False)


def train_planner(out: Path, digest: str, components=PLAN_V1, seed: int = 0) -> Path:
    """A tiny checkpoint whose plan is `components` whatever the request."""
    import torch

    from revision.planner._base import K, PlannerFeatures, PlannerSample
    from revision.planner.model import PlannerConfig, PlannerModel
    from revision.planner.sft import SFTConfig, SFTTrainer
    from revision.planner.tokenizer import PlanTokenizer

    tools = default_tool_list()
    answer = [tools.index_of(c) for c in components]
    thinking = "ambiguous photo ask which " + " ".join(components)
    rng = np.random.default_rng(seed)
    samples = [
        PlannerSample(
            f"s{i}",
            PlannerFeatures(
                query=rng.normal(size=1280).astype(np.float32),
                result_images=rng.normal(size=(K, 1280)).astype(np.float32),
                result_titles=rng.normal(size=(K, 384)).astype(np.float32),
                result_scalars=rng.normal(size=(K, 4)).astype(np.float32),
                result_mask=np.ones(K, bool),
                context=rng.normal(size=32).astype(np.float32),
            ),
            thinking,
            answer,
            tools.live_indices(),
        )
        for i in range(64)
    ]
    tokenizer = PlanTokenizer.train([thinking] * 8, vocab_size=280, max_tool=16)
    config = PlannerConfig.for_tokenizer(tokenizer, **TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = PlannerModel(config)
        args = SFTConfig(
            out, batch_size=32, learning_rate=3e-3, num_threads=1, num_train_epochs=12, seed=seed
        )
        SFTTrainer(model, tokenizer, samples, args, digest).train()
    finally:
        torch.set_num_threads(threads)
    return out


def servable_warehouse(built, root: Path, tmp: Path, plan=PLAN_V1):
    """A writable copy of `built` with a tool list, product features, the text index and a
    published planner whose plan is `plan` (no trigger threshold: the test's settings or the
    warehouse's logs give it)."""
    from revision.planner.publish import publish
    from revision.warehouse import Warehouse

    shutil.copytree(built.root, root)
    warehouse = Warehouse(root)
    doc = save_default_tool_list(warehouse)
    product_features(warehouse)
    text_index(warehouse)
    publish(warehouse, train_planner(tmp / "planner", doc.digest, plan))
    return warehouse


_BASES: dict[tuple, object] = {}


def servable_base(built, tmp_path_factory, plan=PLAN_V1):
    """One servable warehouse per plan and test session (read-only: `copy` it to serve)."""
    key = (str(built.root), plan)
    if key not in _BASES:
        tmp = tmp_path_factory.mktemp("servable")
        _BASES[key] = servable_warehouse(built, tmp / "warehouse", tmp, plan)
    return _BASES[key]


def copy(warehouse, root: Path):
    """A writable copy of a warehouse (the service writes logs and uploads into it)."""
    from revision.warehouse import Warehouse

    shutil.copytree(warehouse.root, root, symlinks=True)
    return Warehouse(root)


def publish_plan(warehouse, tmp: Path, plan, seed: int = 1, **kwargs):
    """Train and publish a new planner version whose plan is `plan`."""
    from revision.planner.publish import publish

    doc = toollist.load(warehouse)
    return publish(warehouse, train_planner(tmp, doc.digest, plan, seed=seed), **kwargs)


class Gate:
    """Wraps a planner: each call signals `entered`, then waits for `release`."""

    def __init__(self, planner):
        self.planner = planner
        self.version, self.toollist_digest = planner.version, planner.toollist_digest
        self.entered, self.release, self.finished = (threading.Event() for _ in range(3))
        self.calls = 0

    def plan(self, request):
        self.calls += 1
        self.entered.set()
        self.release.wait(120)
        try:
            return self.planner.plan(request)
        finally:
            self.finished.set()


# -- real servers -----------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server(folder: Path):
    """A real redis-server on a free port; yields its URL. Fails (never skips) without it."""
    import pytest

    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed; install it with: apt-get install redis-server")
    import redis

    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(200):
            if proc.poll() is not None:
                pytest.fail(f"redis-server exited with code {proc.returncode}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail(f"redis-server did not answer on port {port}")
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def uvicorn_thread(app, port: int | None = None):
    """Serve `app` on loopback from a thread of this process; yields the base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def photo_bytes(path, size=(320, 400), fmt="JPEG") -> bytes:
    """A catalog photo, resized and re-encoded like a user's upload."""
    image = Image.open(path).convert("RGB").resize(size)
    out = io.BytesIO()
    image.save(out, fmt, quality=85)
    return out.getvalue()
