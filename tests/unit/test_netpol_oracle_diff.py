"""The policy controller against the independent oracle, cell by cell, on random worlds.

Each example is a random world (namespaces x, y, z; pods a, b, c each, local or on another node,
dual-stack; a hostNetwork pod and a finished pod sometimes; 1 to 4 policies), compiled by the real
controller into the iptables and ipset fakes and traced packet by packet; every (source,
destination, protocol, port) verdict must equal ``oracle.netpol``'s. The churn test then changes
the world step by step (policies added, replaced and deleted; pods relabelled, added, removed;
namespaces relabelled) through partial syncs, and checks the whole matrix after every step.

This node sees the legs it enforces: a local source's egress and a local destination's ingress.
A cell between two remote endpoints never crosses it and is left out.

``NETPOL_DIFF_EXAMPLES`` sets the number of examples (CI runs the default); a failure shrinks to
a small world, which then belongs in ``tests/testdata/netpol/oracle/`` (see ``test_fixtures``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import coverage
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netpol_fake_node import NODE_IP, NODE_IP6, REMOTE_IP, REMOTE_IP6, FakeNode

from oracle.netpol_cases import (
    PORTS,
    PROTOCOLS,
    DrawChooser,
    Obj,
    Scenario,
    Slot,
    churn,
    local_pods,
    node_allows,
    scenario,
)

EXAMPLES = int(os.environ.get("NETPOL_DIFF_EXAMPLES", "1000"))
CHURN_EXAMPLES = max(EXAMPLES // 5, 1)
CHURN_STEPS = 6
# pytest-timeout per test, from the counts: about 0.12 s a world here, 0.7 s a churn run, more
# under coverage and on a loaded machine.
SECONDS_PER_WORLD = 0.6
SECONDS_PER_CHURN = 3.0
FIXTURES = Path(__file__).parent.parent / "testdata" / "netpol" / "oracle"
EXTERNAL = ("203.0.113.7", "2001:db8::7")


def _slots() -> tuple[Slot, ...]:
    out = []
    for n, (ns, name) in enumerate((ns, name) for ns in ("x", "y", "z") for name in "abc"):
        local = n < 5  # x/a x/b x/c y/a y/b here; y/c z/* on the other node
        net = 1 if local else 2
        host = (NODE_IP, NODE_IP6) if local else (REMOTE_IP, REMOTE_IP6)
        ips = (f"10.244.{net}.{11 + n}", f"fd00:244:{net}::{11 + n:x}")
        out.append(Slot(ns, name, "local" if local else "remote", host[0], ips))
    return tuple(out)


SLOTS = _slots()
BLOCKS: tuple[Obj, ...] = (
    {"cidr": "10.244.0.0/16"},
    {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]},
    {"cidr": "10.244.1.0/24", "except": ["10.244.1.11/32", "10.244.1.14/31"]},
    {"cidr": "10.244.2.17/32"},
    {"cidr": "0.0.0.0/0", "except": ["10.244.0.0/16"]},
    {"cidr": "192.168.50.0/24"},
    {"cidr": "fd00:244::/32", "except": ["fd00:244:2::/64"]},
    {"cidr": "fd00:244:1::c/126"},
    {"cidr": "::/0", "except": ["fd00:244::/32"]},
)


def endpoints(family: int) -> list[tuple[str, str]]:
    """(address, node) of every endpoint of one family: the slots, the other node, outside."""
    out = [(slot.ips[family == 6], slot.node) for slot in SLOTS]
    out.append((REMOTE_IP if family == 4 else REMOTE_IP6, "remote"))
    out.append((EXTERNAL[family == 6], "remote"))
    return out


def cells(world: Scenario) -> Iterator[tuple[str, str, str, int, bool]]:
    """(src, dst, protocol, port, bridged) for every cell this node sees."""
    for family in (4, 6):
        points = endpoints(family)
        for src, src_node in points:
            for dst, dst_node in points:
                if src == dst or (src_node == "remote" and dst_node == "remote"):
                    continue
                bridged = src_node == dst_node == "local"
                for proto in world.protocols:
                    for port in PORTS:
                        yield src, dst, proto, port, bridged


def wrong_cells(node: FakeNode, world: Scenario) -> list[str]:
    model = world.world()
    addresses = [a for family in (4, 6) for a, _ in endpoints(family)]
    local = local_pods(model, addresses, (NODE_IP, NODE_IP6))
    wrong = []
    for src, dst, proto, port, bridged in cells(world):
        want = node_allows(model, local, src, dst, proto, port)
        got = node.verdict(src, dst, proto, port, bridged=bridged)
        if got != want:
            verdict = "allowed" if got else "denied"
            wrong.append(f"{src} -> {dst} {proto}/{port}: {verdict}, the oracle says otherwise")
    return wrong


def load(node: FakeNode, world: Scenario) -> None:
    for resource, objs in (
        ("namespaces", world.namespaces),
        ("pods", {**world.pods, **world.extras}),
        ("networkpolicies", world.policies),
    ):
        for obj in objs.values():
            node.put(resource, obj)


def explain(world: Scenario, wrong: list[str], steps: list[str] = ()) -> str:  # type: ignore[assignment]
    dump = {"pods": world.pods, "extras": world.extras, "namespaces": world.namespaces}
    dump["policies"] = world.policies
    return (
        f"{len(wrong)} wrong cells, first: {wrong[:8]}\nsteps: {steps}\n"
        f"world: {json.dumps(dump, sort_keys=True)}"
    )


async def _check_world(world: Scenario) -> None:
    node = FakeNode()
    load(node, world)
    await node.start()
    wrong = wrong_cells(node, world)
    assert not wrong, explain(world, wrong)


@contextlib.contextmanager
def _uncovered() -> Iterator[None]:
    """Coverage paused: these tests are for semantics, the lines they run are covered elsewhere,
    and line tracing would triple the time of thousands of worlds."""
    cov = coverage.Coverage.current()
    if cov is not None:
        cov.stop()
    try:
        yield
    finally:
        if cov is not None:
            cov.start()


def _run(coro: Any) -> None:
    with _uncovered():
        asyncio.run(coro)


SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # CI runs the same examples every time; NETPOL_DIFF_EXAMPLES runs more
)


@pytest.mark.timeout(60 + SECONDS_PER_WORLD * EXAMPLES)
@SETTINGS
@given(st.data())
def test_random_worlds_match_the_oracle(data: st.DataObject) -> None:
    world = scenario(DrawChooser(data.draw), SLOTS, BLOCKS)
    _run(_check_world(world))


async def _check_churn(world: Scenario, chooser: DrawChooser) -> None:
    node = FakeNode()
    load(node, world)
    await node.start()
    done: list[str] = []
    for n in range(CHURN_STEPS):
        step = churn(chooser, world)
        done.append(f"{step.what} {step.key}")
        if step.obj is None:
            node.remove(step.resource, step.key)
        else:
            node.put(step.resource, step.obj)
        await node.sync(full=n == CHURN_STEPS - 1)  # partial syncs, then a full one
        wrong = wrong_cells(node, world)
        assert not wrong, explain(world, wrong, done)


@pytest.mark.timeout(60 + SECONDS_PER_CHURN * CHURN_EXAMPLES)
@settings(SETTINGS, max_examples=CHURN_EXAMPLES)
@given(st.data())
def test_churn_through_partial_syncs_matches_the_oracle(data: st.DataObject) -> None:
    chooser = DrawChooser(data.draw)
    world = scenario(chooser, SLOTS, BLOCKS)
    _run(_check_churn(world, chooser))


def _fixture_ids() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))


@pytest.mark.parametrize("path", _fixture_ids(), ids=lambda p: p.stem)
def test_fixtures(path: Path) -> None:
    """Worlds a random run once found wrong (or the issue's hand-found ones), kept for ever."""
    raw = json.loads(path.read_text())
    world = Scenario(SLOTS, BLOCKS, tuple(raw.get("protocols", PROTOCOLS)))
    world.namespaces = raw["namespaces"]
    world.pods = raw["pods"]
    world.extras = raw.get("extras", {})
    world.policies = raw["policies"]
    _run(_check_world(world))


def test_endpoints_are_what_the_docstring_says() -> None:
    # A check on the harness itself: 9 slots, the other node and one outside address per family.
    assert len(endpoints(4)) == len(endpoints(6)) == 11
    assert all(ipaddress.ip_address(a).version == 6 for a, _ in endpoints(6))
