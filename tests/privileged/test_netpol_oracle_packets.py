"""Random policies and churn with real packets, judged by the independent oracle.

The real controller programs a node namespace (x and y run there; z on a "remote" node behind a
route, with no agent of its own). For each seed: a random world (labels, named ports, which pods
exist, 1 to 4 policies; ``tests/oracle/netpol_cases.py``), then churn steps (policies added,
replaced, deleted; pods relabelled, added, removed; namespaces relabelled). After every step the
whole matrix (TCP and UDP, ports 80 and 81, IPv4 and IPv6, real connections) must equal what
``oracle.netpol`` says of the legs this node enforces: a local source's egress and a local
destination's ingress. A lab pod without an API object still has its network: the oracle and the
agent see its address as no pod's.

``NETPOL_FUZZ_SEEDS=N`` runs seeds 0..N-1 (``make test-netpol-fuzz``); CI runs the default few
plus every seed in ``tests/testdata/netpol/oracle_packet_seeds.json`` (a seed that once failed).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from netpol_cluster import NODE_IP, REMOTE_IP, Cell, Cluster, open_cluster

from oracle.netpol_cases import (
    PORTS,
    Scenario,
    SeededChooser,
    Slot,
    Step,
    churn,
    local_pods,
    node_allows,
    scenario,
)

DEFAULT_SEEDS = 3
SEEDS = int(os.environ.get("NETPOL_FUZZ_SEEDS", DEFAULT_SEEDS))
STEPS = int(os.environ.get("NETPOL_FUZZ_STEPS", "5"))
SEED_FILE = Path(__file__).parent.parent / "testdata" / "netpol" / "oracle_packet_seeds.json"
# The lab pods serve TCP and UDP; this host kernel has no SCTP (the unit tier covers it).
PROBED = ("TCP", "UDP")
ALL_ROUTES = ("10.0.0.0/8", "fd00::/8")


def seeds() -> list[int]:
    kept = json.loads(SEED_FILE.read_text())["packets"] if SEED_FILE.exists() else []
    return sorted({*range(SEEDS), *kept})


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(tmp_path, ipv6=True) as c:
        yield c


def slots(c: Cluster) -> list[Slot]:
    out = []
    for pod in c.net.pods:
        host = NODE_IP if pod.node == "local" else REMOTE_IP
        ips = tuple(ip for ip in (pod.ip, pod.ip6) if ip)
        out.append(Slot(pod.namespace, pod.name, pod.node, host, ips))
    return out


def blocks(c: Cluster) -> list[dict[str, object]]:
    """ipBlocks around the lab's addresses: everything, one node's pods, one pod, the rest."""
    local, remote = c.net.local_cidr, c.net.remote_cidr
    first = c.net.pods[0]
    return [
        {"cidr": ALL_ROUTES[0], "except": [local]},
        {"cidr": local, "except": [f"{first.ip}/32"]},
        {"cidr": remote},
        {"cidr": f"{c.net.pods[-1].ip}/32"},
        {"cidr": "0.0.0.0/0", "except": [remote]},
        {"cidr": ALL_ROUTES[1], "except": [c.net.local_cidr6]},
        {"cidr": c.net.remote_cidr6},
        {"cidr": "::/0", "except": [f"{first.ip6}/128"]},
    ]


def expected_denied(c: Cluster, world: Scenario, family: str) -> set[Cell]:
    model = world.world()
    address = {pod.key: pod.ip6 if family == "ipv6" else pod.ip for pod in c.net.pods}
    local = local_pods(model, address.values(), (NODE_IP,))
    return {
        (src.key, dst.key, proto.lower(), port)
        for src in c.net.pods
        for dst in c.net.pods
        if src is not dst and not src.node == dst.node == "remote"
        for proto in PROBED
        for port in PORTS
        if not node_allows(model, local, address[src.key], address[dst.key], proto, port)
    }


async def load(c: Cluster, world: Scenario) -> None:
    """Make the lab hold exactly ``world`` (after another seed's world)."""
    for key in list(c.informers.networkpolicies.store.key_list()):
        if key not in world.policies:
            ns, name = key.split("/", 1)
            await c.remove("networkpolicies", ns, name)
    for obj in world.namespaces.values():
        await c.write("namespaces", obj)
    for slot in world.slots:
        if slot.key in world.pods:
            await c.write("pods", world.pods[slot.key])
        elif c.informers.pods.store.get(slot.key) is not None:
            await c.remove("pods", slot.namespace, slot.name)
    for obj in world.extras.values():
        await c.write("pods", obj)
    for obj in world.policies.values():
        await c.write("networkpolicies", obj)


async def apply(c: Cluster, step: Step) -> None:
    if step.obj is not None:
        await c.write(step.resource, step.obj)
    else:
        ns, name = step.key.split("/", 1) if "/" in step.key else (None, step.key)
        await c.remove(step.resource, ns, name)


async def check(c: Cluster, world: Scenario, what: str) -> None:
    for family in ("ipv4", "ipv6"):
        try:
            await c.check(expected_denied(c, world, family), family=family)
        except AssertionError as err:
            dump = json.dumps({"policies": world.policies, "pods": world.pods}, sort_keys=True)
            raise AssertionError(f"{what} ({family}): {err}\nworld: {dump}") from err


SECONDS_PER_SEED = 40  # about 17 s here; the margin is for a loaded machine


@pytest.mark.timeout(60 + SECONDS_PER_SEED * len(seeds()))
async def test_random_policies_and_churn_match_the_oracle(cluster: Cluster) -> None:
    c = cluster
    for seed in seeds():
        chooser = SeededChooser(seed)
        world = scenario(chooser, slots(c), blocks(c), PROBED)
        await load(c, world)
        await check(c, world, f"seed {seed}, initial world")
        done = []
        for n in range(STEPS):
            step = churn(chooser, world)
            done.append(f"{step.what} {step.key}")
            await apply(c, step)
            if n == STEPS - 1:
                await c.full_sync()
            await check(c, world, f"seed {seed} after {done}")
        for key in list(world.extras):  # the next seed brings its own
            ns, name = key.split("/", 1)
            await c.remove("pods", ns, name)
