"""Pod networking over BGP with the real agent: nodes in network namespaces, gobgpd per node,
pods wired by the real CNI plugins with the conf the agent wrote, real packets."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from kube_router.lab.cluster import Cluster, ClusterNode, ClusterSpec

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

AGENT_FLAGS = ("--run-service-proxy=false", "--run-firewall=false", "--routes-sync-period=5s")
# gobgpd retries a connection every 5-10 s: sessions take up to ~20 s in a slow run.
CONVERGE_S = 60.0


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


def routes(c: Cluster, n: ClusterNode) -> str:
    return c.run(n, "ip", "route", "show", "proto", "17")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    spec = ClusterSpec("kre2r", nodes=3)
    async with Cluster(spec, tmp_path_factory.mktemp("mesh")) as c:
        for n in c.nodes:
            c.write_cni_template(n)
            c.start_agent(n, *AGENT_FLAGS)
        yield c


async def test_pods_on_different_nodes_reach_each_other(mesh: Cluster) -> None:
    c = mesh
    pods = [await c.add_pod(n, "default", f"p{i}", {"app": "x"}) for i, n in enumerate(c.nodes)]
    for n in c.nodes:
        others = [cidr for m in c.nodes if m is not n for cidr in m.pod_cidrs]
        await eventually(
            lambda n=n, others=others: all(o in routes(c, n) for o in others),
            CONVERGE_S,
            f"{n.name} to learn {others}",
        )
    for src in pods:
        for dst in pods:
            if src is not dst:
                assert await c.reaches(src, dst, "tcp", 80, "ipv4"), (src.key, dst.key)
