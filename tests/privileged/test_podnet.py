"""The real-packet harness itself: pods reach each other, and an iptables rule is obeyed."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kube_router_lab.podnet import PodNetwork


@pytest.fixture
async def podnet(tmp_path: Path) -> AsyncIterator[PodNetwork]:
    net = PodNetwork(f"kp{uuid.uuid4().hex[:5]}", tmp_path)
    try:
        net.build_nodes()
        net.add_pod("x", "a")
        net.add_pod("x", "b")
        net.add_pod("y", "a", node="remote")
        await net.start_agents()
        yield net
    finally:
        net.teardown()


async def test_everything_reaches_everything_without_rules(podnet: PodNetwork) -> None:
    matrix = await podnet.matrix()
    assert len(matrix) == 3 * 2 * 2 * 2
    assert all(matrix.values()), [k for k, ok in matrix.items() if not ok]


async def test_a_forward_rule_on_the_node_cuts_bridged_and_routed_traffic(
    podnet: PodNetwork,
) -> None:
    xa, xb, _ya = podnet.pods
    # Reject TCP/80 to x/b in the node namespace's FORWARD chain: bridged (x/a -> x/b, via
    # br_netfilter) and routed (y/a on the remote node -> x/b) traffic both pass through it.
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            podnet.node_netns,
            "iptables",
            "-A",
            "FORWARD",
            "-d",
            xb.ip,
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "REJECT",
        ],
        check=True,
    )
    matrix = await podnet.matrix()
    denied = sorted(k for k, ok in matrix.items() if not ok)
    assert denied == [("x/a", "x/b", "tcp", 80), ("y/a", "x/b", "tcp", 80)]
    assert await podnet.probe(xb, xa, "tcp", 80)
