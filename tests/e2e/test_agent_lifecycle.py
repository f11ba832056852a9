"""The real `python -m kube_router` process in a lab node: healthy, synced, stops on signals.

The agent refuses to start with every controller off, and the routing controller must never
touch the host's namespace, so it runs where an agent belongs: in a node's network namespace
(a 1-node lab cluster), with the routing controller on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from kube_router_lab import underlay
from kube_router_lab.cluster import Cluster, ClusterSpec

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

HEALTH_PORT = 20244
INFORMERS = 6  # nodes, pods, services, endpointslices, namespaces, networkpolicies
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.1
FLAGS = ("--run-firewall=false", "--run-service-proxy=false")
GOBGP_API_PORT = 50051


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with Cluster(ClusterSpec("kre2a", nodes=1), tmp_path_factory.mktemp("life")) as c:
        c.write_cni_template(c.nodes[0])
        yield c


def gobgp_answers(c: Cluster) -> bool:
    argv = ("gobgp", "-p", str(GOBGP_API_PORT), "global")
    return "AS:" in c.run(c.nodes[0], *argv, check=False)


def healthz(c: Cluster) -> str:
    """The HTTP status of the node's /healthz, asked from inside its namespace."""
    node = c.nodes[0]
    url = f"http://{node.ip}:{HEALTH_PORT}/healthz"
    return c.run(node, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url, check=False)


async def wait_for(
    what: str, check: Callable[[], Awaitable[bool]], proc: subprocess.Popen[bytes] | None
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not await check():
        if proc is not None:
            assert proc.poll() is None, f"agent exited with {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(POLL_S)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_agent_is_healthy_synced_and_stops_cleanly_on_signal(
    cluster: Cluster, sig: signal.Signals
) -> None:
    c = cluster
    node = c.nodes[0]
    assert c.server.watch_count == 0
    log_name = f"agent-{sig.name}"
    proc = c.spawn(node, c.agent_argv(node, *FLAGS), log_name=log_name)
    try:

        async def healthy() -> bool:
            return await asyncio.to_thread(healthz, c) == "200"

        async def synced() -> bool:  # /healthz answers before the informers finish their lists
            return c.server.watch_count >= INFORMERS

        async def routing() -> bool:  # the routing controller runs gobgpd with its admin API
            started = "gobgpd started" in (node.dir / f"{log_name}.log").read_text()
            return started and await asyncio.to_thread(gobgp_answers, c)

        await wait_for("/healthz to answer 200", healthy, proc)
        await wait_for(f"{INFORMERS} watches", synced, proc)
        await wait_for("gobgpd's API", routing, proc)
        proc.send_signal(sig)
        rc = await asyncio.to_thread(proc.wait, STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (node.dir / f"{log_name}.log").read_text()
    assert rc == 0, log
    assert "informer caches synced" in log
    assert "stopped" in log and "Traceback" not in log
    assert underlay.netns_pids(node.netns) == []  # gobgpd went with it
    # Its watches end with it, so the next agent's count starts from zero.
    await wait_for("the watches to close", lambda: no_watches(c), None)


async def no_watches(c: Cluster) -> bool:
    return c.server.watch_count == 0
