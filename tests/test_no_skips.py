"""The suite's no-skip rule, checked on a synthetic suite run in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_synthetic.py").write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no_skips", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(HERE), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_skipped_test_fails_with_its_reason(tmp_path):
    out = _run(
        tmp_path,
        "import pytest\n"
        "def test_ok():\n    pass\n"
        "def test_skips():\n    pytest.skip('data not found at /nowhere')\n"
        "@pytest.mark.skipif(True, reason='extra missing')\n"
        "def test_marked():\n    pass\n"
        "@pytest.mark.xfail(strict=True, reason='known bug')\n"
        "def test_known_bug():\n    assert False\n",
    )
    assert out.returncode == 1, out.stdout
    summary = out.stdout.strip().splitlines()[-1]
    # a skip in the test fails it; a skip mark fails its setup (an error); xfail stays
    assert summary.startswith("1 failed, 1 passed, 1 xfailed, 1 error"), summary
    assert "allows no skips" in out.stdout and "data not found at /nowhere" in out.stdout
    assert "extra missing" in out.stdout


def test_a_module_skipped_at_import_fails(tmp_path):
    out = _run(tmp_path, "import pytest\npytest.importorskip('no_such_module_xyz')\n")
    assert out.returncode != 0, out.stdout
    assert "allows no skips" in out.stdout and "no_such_module_xyz" in out.stdout
