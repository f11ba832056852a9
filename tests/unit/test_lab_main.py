"""``python -m kube_router_lab apiserver``: the lab's own command, the same flag syntax."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from kube_router_lab import __main__ as lab_main


@pytest.fixture
def lab_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str | None]]:
    calls: list[tuple[str, int, str | None]] = []

    async def serve(host: str, port: int, kubeconfig: str | None) -> None:
        calls.append((host, port, kubeconfig))

    monkeypatch.setattr(lab_main.apiserver, "serve", serve)
    return calls


def _one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_lab_apiserver_defaults(lab_calls: list[tuple[str, int, str | None]]) -> None:
    assert lab_main.main(["apiserver"]) == 0
    assert lab_calls == [("127.0.0.1", 6443, None)]


def test_lab_apiserver_arguments(lab_calls: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert lab_main.main(["apiserver", "--port=8081", "--kubeconfig", "k", "--host=::1"]) == 0
    assert lab_calls == [("::1", 8081, "k")]
    assert lab_main.main(["apiserver", "-h"]) == 0
    assert capsys.readouterr().out.startswith("Usage of python -m kube_router_lab apiserver:")
    for argv in ([], ["nope"], ["apiserver", "x"], ["apiserver", "--x"]):
        assert lab_main.main(argv) == 1
        assert _one_line(capsys.readouterr().err).startswith("python -m kube_router_lab: ")
    assert len(lab_calls) == 1


def test_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kube_router_lab", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "unknown command" in result.stderr
