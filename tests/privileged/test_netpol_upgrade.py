"""Taking over our previous release's layout, with real packets, never opening denied traffic.

Our previous release (and upstream) kept both directions of a policy in one ``KUBE-NWPLCY-*``
chain that a pod chain jumped to unconditionally: a target pod's egress leg then met the ingress
rules (the fail-open hole). Here the node's kernel is put back into that layout by hand, the
hole is shown with a real connection, and a fresh controller's first full sync takes it over
while denied flows are probed every 100 ms: none may get through at any moment, and afterwards
the hole is closed and the new layout (an egress chain of its own) is in place.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from netpol_cluster import FIVE_PODS, Cell, Cluster, cells, open_cluster, policy

from kube_router.controllers.netpol.names import policy_chain, policy_egress_chain

ALL = [p.key for p in FIVE_PODS]
X = ["x/a", "x/b", "x/c"]
PROBE_EVERY_S = 0.1
PROBE_TIMEOUT_S = 0.2
INGRESS_CHAIN = policy_chain("x", "p1", "IPv4")
EGRESS_CHAIN = policy_egress_chain("x", "p1", "IPv4")
HOLE: Cell = ("x/a", "x/b", "tcp", 80)  # open in the old layout, denied by NetworkPolicy
# Denied by NetworkPolicy and by the old layout alike: must stay denied through the takeover.
DENIED_THROUGHOUT: tuple[Cell, ...] = (("x/a", "y/a", "tcp", 80), ("x/c", "z/a", "udp", 81))
ADDRESS = re.compile(r" -[sd] \S+")


def issue_policies() -> list[dict[str, object]]:
    both = {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{}],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "none"}}}]}],
    }
    deny_egress = {"podSelector": {}, "policyTypes": ["Egress"], "egress": []}
    return [policy("x", "p0", deny_egress), policy("x", "p1", both)]


def previous_layout(saved: str) -> str:
    """The filter table as our previous release wrote it: the egress chain's rules appended to
    the policy chain, and one unconditional jump to it in each pod chain."""
    lines = saved.splitlines()
    egress = f"-A {EGRESS_CHAIN} "
    moved = [
        line.replace(egress, f"-A {INGRESS_CHAIN} ") for line in lines if line.startswith(egress)
    ]
    kept = []
    for line in lines:
        if line.startswith((f":{EGRESS_CHAIN} ", egress)) or line.endswith(f"-j {EGRESS_CHAIN}"):
            continue  # the chain, and the pod chains' egress jumps (one jump replaces both)
        pod_jump = line.startswith("-A KUBE-POD-FW-") and line.endswith(f"-j {INGRESS_CHAIN}")
        kept.append(ADDRESS.sub("", line) if pod_jump else line)
    last = max(i for i, line in enumerate(kept) if line.startswith(f"-A {INGRESS_CHAIN} "))
    return "\n".join(kept[: last + 1] + moved + kept[last + 1 :]) + "\n"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(tmp_path, pods=FIVE_PODS) as c:
        for pol in issue_policies():
            await c.apply_policy(pol)
        yield c


async def probe_until(
    c: Cluster, stop: asyncio.Event, leaks: list[Cell], rounds: list[int]
) -> None:
    while not stop.is_set():
        answers = await asyncio.gather(
            *(
                c.net.probe(c.pod(s), c.pod(d), pr, po, timeout=PROBE_TIMEOUT_S)
                for s, d, pr, po in DENIED_THROUGHOUT
            )
        )
        leaks += [cell for cell, ok in zip(DENIED_THROUGHOUT, answers, strict=True) if ok]
        rounds.append(1)
        await asyncio.sleep(PROBE_EVERY_S)


async def test_previous_release_layout_is_taken_over_closed(cluster: Cluster) -> None:
    c = cluster
    await c.check(cells(X, ALL))  # every egress of x is denied
    await c.stop_controller()
    saved = (await c.node_run("iptables-save", "-t", "filter")).stdout
    assert f":{EGRESS_CHAIN} " in saved
    old = previous_layout(saved)
    await c.node_exec.run([f"iptables-{c.iptables_backend}-restore"], input=old)
    assert f":{EGRESS_CHAIN} " not in (await c.node_run("iptables-save", "-t", "filter")).stdout
    assert await c.reaches(*HOLE[:2], HOLE[2], HOLE[3]), "the old layout should show the hole"

    stop, leaks, rounds = asyncio.Event(), [], []
    prober = asyncio.create_task(probe_until(c, stop, leaks, rounds))
    try:
        while len(rounds) < 3:
            await asyncio.sleep(0.02)
        c.start_controller()
        await c.wait_first_sync()
        started = len(rounds)
        while len(rounds) < started + 3:
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await prober
    assert not leaks, f"denied flows got through during the takeover: {leaks}"
    await c.check(cells(X, ALL))
    assert f":{EGRESS_CHAIN} " in (await c.node_run("iptables-save", "-t", "filter")).stdout
