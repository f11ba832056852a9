"""Shared by every tier.

- The independent oracles under ``tests/oracle`` are importable as ``oracle.*``.
- Under ``CI=true`` a skipped test fails instead: a tier that cannot run there (not root, no
  br_netfilter, no gobgpd, no VM kernel, no qemu) is a broken CI machine or set-up, not a
  reason to pass. The report keeps the skip's reason. A local run still skips and says why.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

CI = os.environ.get("CI", "").lower() == "true"


def skip_reason(report: pytest.TestReport) -> str:
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true: this test would have been skipped ({skip_reason(report)}); under CI a tier "
            "that cannot run fails the run (run without CI=true to skip it locally)"
        )


def pytest_report_header(config: pytest.Config) -> str:
    return "CI=true: skips fail the run" if CI else "local run: tiers this machine lacks skip"
