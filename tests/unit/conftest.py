"""Shared fixtures: an in-process lab API server and a client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kube_router.k8s.client import KubeClient
from kube_router.lab.apiserver import LabServer


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
