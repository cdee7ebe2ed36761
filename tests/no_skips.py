"""`make test` allows no skips: a skipped test or module is reported as a failure.

A suite that skips when its data or an extra is missing passes on a machine that tested
nothing (93 of 298 tests once skipped silently without the H&M data). Whatever a test needs
is either there or the run fails, saying what to install or where the data goes. Expected
failures (`xfail(strict=True)`) stay what they are: they are not skips.

Loaded by tests/conftest.py; `tests/test_no_skips.py` checks it on a synthetic suite.
"""

from __future__ import annotations

import pytest

MESSAGE = "skipped, and this suite allows no skips (install what it needs): "


def _reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = MESSAGE + _reason(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        report.outcome = "failed"
        report.longrepr = MESSAGE + _reason(report.longrepr)
