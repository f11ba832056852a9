"""Under CI=true a skipped test fails the run (tests/conftest.py); locally it skips, saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CASES = """
import pytest

def test_skips_inside():
    pytest.skip("no widget here")

@pytest.mark.skip(reason="tier lacks a kernel")
def test_skip_marker():
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False

def test_passes():
    pass
"""


def run(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(Path(__file__).parent.parent / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {**os.environ, "CI": ci}
    argv = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", str(tmp_path)]
    return subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("ci", "code", "expected"),
    [
        ("true", 1, ["no widget here", "tier lacks a kernel", "1 failed, 1 passed", "1 xfailed"]),
        ("", 0, ["SKIPPED", "no widget here", "tier lacks a kernel", "1 passed, 2 skipped"]),
    ],
)
def test_skips_fail_only_under_ci(tmp_path: Path, ci: str, code: int, expected: list[str]) -> None:
    result = run(tmp_path, ci)
    assert result.returncode == code, result.stdout + result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout
