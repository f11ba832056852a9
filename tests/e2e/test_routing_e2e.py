"""Pod networking over BGP with the real agent: nodes in network namespaces, gobgpd per node,
pods wired by the real CNI plugins with the conf the agent wrote, real packets."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from kube_router_lab.cluster import Cluster, ClusterNode, ClusterSpec

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

AGENT_FLAGS = (
    "--run-service-proxy=false",
    "--run-firewall=false",
    "--routes-sync-period=5s",
    "--injected-routes-sync-period=2s",
    "--bgp-graceful-restart",
)
PROBE_S = 0.25
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
            AGENTS[n.name] = c.start_agent(n, *AGENT_FLAGS)
        yield c


AGENTS: dict[str, subprocess.Popen[bytes]] = {}


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


async def test_a_route_deleted_by_hand_comes_back(mesh: Cluster) -> None:
    c = mesh
    n1, n2 = c.nodes[0], c.nodes[1]
    cidr = n2.pod_cidrs[0]
    c.run(n1, "ip", "route", "del", cidr)
    assert cidr not in routes(c, n1)
    await eventually(lambda: cidr in routes(c, n1), 15, f"{cidr} back on {n1.name}")


async def test_an_agent_restart_with_graceful_restart_keeps_traffic_flowing(mesh: Cluster) -> None:
    c = mesh
    src, dst = c.pod("default", "p0"), c.pod("default", "p1")
    node = c.nodes[1]  # dst's node: its agent restarts
    lost = 0
    proc = AGENTS[node.name]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    AGENTS[node.name] = c.start_agent(node, *AGENT_FLAGS)
    deadline = time.monotonic() + 12
    probes = 0
    while time.monotonic() < deadline:
        probes += 1
        if not await c.reaches(src, dst, "tcp", 80, "ipv4"):
            lost += 1
        await asyncio.sleep(PROBE_S)
    assert lost == 0, f"{lost} of {probes} probes failed across the restart"
    assert "adopted" in (node.dir / "agent.log").read_text()


async def test_a_deleted_nodes_routes_are_withdrawn(mesh: Cluster) -> None:
    c = mesh
    gone = c.nodes[2]
    cidr = gone.pod_cidrs[0]
    AGENTS.pop(gone.name).send_signal(signal.SIGTERM)
    c.server.store.delete("nodes", None, gone.name)
    for n in c.nodes[:2]:
        await eventually(lambda n=n: cidr not in routes(c, n), 30, f"{cidr} gone from {n.name}")
