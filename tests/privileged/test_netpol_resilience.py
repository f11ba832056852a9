"""The policy controller across restarts and outside damage, with real packets.

Restart (upstream test/e2e/netpol/restart_test.go): the controller task stops and a fresh one
starts on the same kernel state, as when the agent restarts. A denied flow is probed every
250 ms from before the stop until after the new controller's first sync and must never get
through; an allowed, established TCP connection must keep carrying data.

External flush: rules and sets of ours removed by hand in the node namespace take enforcement
away (the packets show it), and the periodic full sync puts it back exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import shlex
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from netpol_cluster import FIVE_PODS, Cell, Cluster, LongConnection, cells, open_cluster, policy

from kube_router.controllers.netpol.names import (
    FORWARD_CHAIN,
    ingress_pods_set,
    policy_chain,
)
from kube_router.dataplane.exec import CommandError

PODS = FIVE_PODS
ALL = [p.key for p in PODS]
X = ["x/a", "x/b", "x/c"]
PROBE_EVERY_S = 0.25
PROBE_TIMEOUT_S = 0.2
STOPPED_FOR_S = 1.0
MAX_GAP_S = 4 * PROBE_EVERY_S  # the event loop also runs the controller
ECHO_PORT = 7000
# Denied while the policies below hold: one cell per protocol and source kind.
DENIED_PROBES: tuple[Cell, ...] = (
    ("x/c", "x/a", "tcp", 80),  # same node, bridged
    ("y/a", "x/a", "udp", 81),  # other namespace
    ("z/a", "x/a", "tcp", 81),  # remote node, routed
)


def deny_x_but_b_to_a() -> list[dict[str, object]]:
    """x: all ingress denied; x/a accepts x/b on every port and protocol."""
    return [
        policy("x", "deny", {"podSelector": {}, "policyTypes": ["Ingress"]}),
        policy(
            "x",
            "allow-b",
            {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}],
            },
        ),
    ]


EXPECTED = cells(ALL, X) - cells(["x/b"], ["x/a"])


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(tmp_path, pods=PODS) as c:
        for pol in deny_x_but_b_to_a():
            await c.apply_policy(pol)
        yield c


@dataclass
class Probe:
    at: float
    phase: str
    cell: Cell
    ok: bool


@dataclass
class Prober:
    """Probes the denied cells every PROBE_EVERY_S and records every answer."""

    cluster: Cluster
    phase: str = "before stop"
    records: list[Probe] = field(default_factory=list)
    rounds: int = 0

    async def run(self) -> None:
        net = self.cluster.net
        while True:
            tick = time.monotonic()
            phase = self.phase
            answers = await asyncio.gather(
                *(
                    net.probe(
                        self.cluster.pod(s), self.cluster.pod(d), pr, po, timeout=PROBE_TIMEOUT_S
                    )
                    for s, d, pr, po in DENIED_PROBES
                )
            )
            self.records += [
                Probe(tick, phase, cell, ok)
                for cell, ok in zip(DENIED_PROBES, answers, strict=True)
            ]
            self.rounds += 1
            await asyncio.sleep(max(0.0, tick + PROBE_EVERY_S - time.monotonic()))

    async def rounds_pass(self, n: int) -> None:
        """Wait until ``n`` more probe rounds have completed."""
        target = self.rounds + n
        while self.rounds < target:
            await asyncio.sleep(0.01)


async def test_restart_never_opens_enforcement(cluster: Cluster) -> None:
    c = cluster
    await c.check(EXPECTED)
    conn = await LongConnection.open(c.pod("x/b"), c.pod("x/a"), ECHO_PORT)
    prober = Prober(c)
    task = asyncio.create_task(prober.run())
    try:
        assert await conn.echo("before the restart")
        await prober.rounds_pass(2)

        prober.phase = "stopped"
        await c.stop_controller()
        # While the agent is down the cluster moves on: y/a may now reach x/b.
        c.lab.store.create(
            "networkpolicies",
            policy(
                "x",
                "allow-y",
                {
                    "podSelector": {"matchLabels": {"pod": "b"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
                },
            ),
        )
        assert await conn.echo("while stopped")
        await asyncio.sleep(STOPPED_FOR_S)

        prober.phase = "new controller starting"
        c.start_controller()
        await c.wait_first_sync()
        prober.phase = "after first sync"
        await prober.rounds_pass(2)
        assert await conn.echo("after the restart")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await conn.close()

    leaks = [r for r in prober.records if r.ok]
    assert not leaks, f"denied flows got through: {leaks}"
    # Probes before, during and after (the new controller's start may fall between two ticks),
    # and no hole in the 250 ms cadence that a short opening could hide in.
    phases = {r.phase for r in prober.records}
    assert {"before stop", "stopped", "after first sync"} <= phases, phases
    ticks = sorted({r.at for r in prober.records})
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < MAX_GAP_S, f"probes {max(gaps):.2f}s apart"
    # The new controller enforces what changed while none ran.
    await c.check(EXPECTED - cells(["y/a"], ["x/b"]))


async def forward_jumps(c: Cluster) -> list[str]:
    out = (await c.node_run("iptables", "-S", "FORWARD")).stdout
    return [line for line in out.splitlines() if f"-j {FORWARD_CHAIN}" in line]


async def destroy_set(c: Cluster, name: str) -> None:
    """``ipset destroy``, retried while the kernel still holds a reference from a flushed rule."""
    for _ in range(100):
        try:
            await c.node_run("ipset", "destroy", name)
            return
        except CommandError as err:
            if "in use" not in err.stderr:
                raise
        await asyncio.sleep(0.02)
    raise AssertionError(f"ipset {name} stayed in use")


def record_applies(c: Cluster, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every restore input the controller hands to the kernel from now on."""
    seen: list[str] = []
    for port in [*c.dataplane.iptables.values(), c.dataplane.ipsets]:

        async def restore(tx: Any, _original: Any = port.restore) -> None:
            seen.append(tx.render())
            await _original(tx)

        monkeypatch.setattr(port, "restore", restore)
    return seen


async def test_external_flush_is_repaired_by_the_full_sync(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = cluster
    await c.check(EXPECTED)

    # 0. On an intact kernel the full sync writes nothing: our rules are spelt as iptables-save
    # spells them, and every set already holds exactly its members.
    applied = record_applies(c, monkeypatch)
    await c.full_sync()
    assert applied == []
    b_to_a = cells(["x/b"], ["x/a"])
    peers = ingress_pods_set("x", "allow-b", 0, "IPv4")
    chain = policy_chain("x", "allow-b", "IPv4")
    assert (await c.ipset_members())[peers] == {c.ip("x/b")}

    # 1. Our forward chain flushed and the jump to it deleted: no enforcement left.
    await c.node_run("iptables", "-F", FORWARD_CHAIN)
    (jump,) = await forward_jumps(c)
    await c.node_run("iptables", *shlex.split(jump.replace("-A ", "-D ", 1)))
    await c.check(set())
    await c.full_sync()
    assert len(await forward_jumps(c)) == 1
    first = (await c.node_run("iptables", "-S", "FORWARD")).stdout.splitlines()[1]
    assert f"-j {FORWARD_CHAIN}" in first, "our jump is not the first rule of FORWARD"
    await c.check(EXPECTED)

    # 2. The peer set of x/a's allow policy flushed: x/b is shut out too.
    await c.node_run("ipset", "flush", peers)
    await c.check(EXPECTED | b_to_a)
    await c.full_sync()
    assert (await c.ipset_members())[peers] == {c.ip("x/b")}
    await c.check(EXPECTED)

    # 2b. The pool holding those members flushed: the same, one level down.
    members = (await c.node_run("ipset", "list", peers)).stdout.split("Members:\n")[1]
    (pool,) = [line.split()[0] for line in members.splitlines() if line.strip()]
    await c.node_run("ipset", "flush", pool)
    await c.check(EXPECTED | b_to_a)
    await c.full_sync()
    assert (await c.ipset_members())[peers] == {c.ip("x/b")}
    await c.check(EXPECTED)

    # 3. The policy chain flushed and its (now unreferenced) set destroyed.
    await c.node_run("iptables", "-F", chain)
    await destroy_set(c, peers)
    assert peers not in await c.ipset_members()
    await c.check(EXPECTED | b_to_a)
    await c.full_sync()
    assert (await c.ipset_members())[peers] == {c.ip("x/b")}
    await c.check(EXPECTED)
