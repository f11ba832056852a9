"""Read the results of a pytest run from its JUnit XML (``--junitxml``), keyed by test id.

The VM tier runs its tests with pytest inside the guest and reports each one back as a test of
the host's session; this is the way back.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Outcome = Literal["passed", "failed", "skipped", "xfailed"]
XFAIL_TYPE = "pytest.xfail"


class JunitError(Exception):
    """The file is missing or is not JUnit XML."""


@dataclass(frozen=True)
class CaseResult:
    outcome: Outcome
    message: str = ""
    text: str = ""
    seconds: float = 0.0


def junit_key(nodeid: str) -> tuple[str, str]:
    """The (classname, name) pytest's junitxml writes for a node id.

    ``tests/vm/test_a.py::TestX::test_b[p::q]`` -> ``("tests.vm.test_a.TestX", "test_b[p::q]")``.
    """
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def _case(element: ET.Element) -> CaseResult:
    seconds = float(element.get("time") or 0.0)
    problems = [e for e in element if e.tag in ("failure", "error")]
    if problems:
        message = "; ".join(e.get("message") or e.tag for e in problems)
        text = "\n\n".join((e.text or e.get("message") or "").strip() for e in problems)
        return CaseResult("failed", message, text, seconds)
    skipped = element.find("skipped")
    if skipped is not None:
        outcome: Outcome = "xfailed" if skipped.get("type") == XFAIL_TYPE else "skipped"
        message = skipped.get("message") or ""
        return CaseResult(outcome, message, (skipped.text or "").strip(), seconds)
    return CaseResult("passed", seconds=seconds)


def parse(xml: str) -> dict[tuple[str, str], CaseResult]:
    """Every test case of a JUnit XML document, keyed as :func:`junit_key` keys node ids."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise JunitError(f"not XML: {err}") from err
    results: dict[tuple[str, str], CaseResult] = {}
    for element in root.iter("testcase"):
        key = (element.get("classname") or "", element.get("name") or "")
        results[key] = _case(element)
    return results


def read(path: Path) -> dict[tuple[str, str], CaseResult]:
    try:
        text = path.read_text()
    except OSError as err:
        raise JunitError(f"cannot read {path}: {err}") from err
    return parse(text)
