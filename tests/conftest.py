"""Shared fixtures: every test gets its own warehouse; nothing is written to the working tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HM_DIR = Path(os.environ.get("REVISION_HM_DIR", REPO.parent / "shared" / "data" / "hm"))


@pytest.fixture(autouse=True)
def isolated_warehouse(tmp_path, monkeypatch):
    """Point $REVISION_HOME at a fresh temp dir so tests never touch ./.revision."""
    home = tmp_path / "warehouse"
    monkeypatch.setenv("REVISION_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def hm_dir() -> Path:
    if not (HM_DIR / "articles.csv").exists():
        pytest.skip(f"H&M data not found at {HM_DIR}")
    return HM_DIR
