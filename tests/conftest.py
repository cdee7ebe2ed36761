"""Shared fixtures: every test gets its own warehouse; nothing is written to the working tree."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest

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


@pytest.fixture(scope="session")
def hm_dir() -> Path:
    if not (HM_DIR / "articles.csv").exists():
        pytest.skip(f"H&M data not found at {HM_DIR}")
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
    return warehouse
