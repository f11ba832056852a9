"""Shared fixtures: an in-process lab API server and a client for it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kube_router.k8s.client import KubeClient
from kube_router_lab.apiserver import LabServer


@pytest.fixture
async def lab() -> AsyncIterator[LabServer]:
    server = LabServer("127.0.0.1", 0, bookmark_interval=0.2)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def kube(lab: LabServer, tmp_path: Path) -> AsyncIterator[KubeClient]:
    path = tmp_path / "kubeconfig"
    lab.write_kubeconfig(path)
    client = await KubeClient.from_flags(kubeconfig=str(path))
    try:
        yield client
    finally:
        await client.close()


GOBGPD_START_S = 10.0


@pytest.fixture(scope="module")
def gobgpd_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One gobgpd per test module, API on a unix socket, no BGP listener until a test starts
    BGP; each test starts it afresh with StopBgp/StartBgp. Modules skip when gobgpd is absent."""
    sock = tmp_path_factory.mktemp("gobgpd") / "api.sock"
    argv = ["gobgpd", "--api-hosts", f"unix://{sock}", "--pprof-disable", "-l", "warn"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + GOBGPD_START_S
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
