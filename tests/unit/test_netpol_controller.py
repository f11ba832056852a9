"""The policy controller end to end over fakes: lab API server -> informers -> sync -> fake
kernel, with semantics checked by tracing packets through the resulting rules."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from kube_router.config import parse
from kube_router.controllers.base import Barriers, RunContext
from kube_router.controllers.netpol import names
from kube_router.controllers.netpol.controller import NetworkPolicyController
from kube_router.controllers.netpol.ports import Dataplane
from kube_router.dataplane.ipset_fake import FakeIPSets
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.tracer import Packet, trace
from kube_router.health import HealthChecker
from kube_router.k8s.client import KubeClient
from kube_router.k8s.informers import Informers
from kube_router.metrics import Metrics
from kube_router.node import NodeIdentity
from kube_router_lab.apiserver import LabServer

NODE_IP = "192.168.50.1"
OTHER_NODE_IP = "192.168.50.2"


def pod(
    ns: str, name: str, ip: str, labels: dict[str, str] | None = None, host: str = NODE_IP
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {
            "nodeName": "n1" if host == NODE_IP else "n2",
            "containers": [
                {"name": "c", "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}
            ],
        },
        "status": {"phase": "Running", "hostIP": host, "podIP": ip, "podIPs": [{"ip": ip}]},
    }


@dataclass
class Rig:
    lab: LabServer
    ctrl: NetworkPolicyController
    tables: FakeIPTables
    sets: FakeIPSets

    async def settle(self) -> None:
        """Let informers catch up, then sync as the runner would."""
        await asyncio.sleep(0.3)
        await self.ctrl.sync(full=False)

    def verdict(
        self, src: str, dst: str, dport: int, proto: str = "tcp", bridged: bool = True
    ) -> str:
        pkt = Packet(
            src=src,
            dst=dst,
            proto=proto,
            dport=dport,
            sport=40000,
            bridged=bridged,
            in_iface="kube-bridge",
            out_iface="kube-bridge",
        )
        return trace(
            self.tables, "FORWARD", pkt, lambda name, value, flags: self.sets.contains(name, value)
        ).action


@pytest.fixture
async def rig(lab: LabServer, kube: KubeClient) -> AsyncIterator[Rig]:
    lab.store.create(
        "nodes",
        {
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
        },
    )
    for ns, labels in (("x", {"ns": "x"}), ("y", {"ns": "y"})):
        lab.store.create("namespaces", {"metadata": {"name": ns, "labels": labels}})
    lab.store.create("pods", pod("x", "a", "10.244.1.11", {"app": "a"}))
    lab.store.create("pods", pod("x", "b", "10.244.1.12", {"app": "b"}))
    lab.store.create("pods", pod("y", "c", "10.244.2.13", {"app": "c"}, host=OTHER_NODE_IP))
    informers = Informers(kube)
    informers.start()
    await informers.wait_for_cache_sync(5)
    sets = FakeIPSets()
    tables = FakeIPTables("ipv4", set_exists=lambda n: n in sets.state(None))
    sets = FakeIPSets(is_referenced=lambda n: n in tables.referenced_sets())
    tables = FakeIPTables("ipv4", set_exists=lambda n: n in sets.state(None))
    tables.apply(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A FORWARD -j ACCEPT\nCOMMIT\n"
    )
    node = NodeIdentity(
        "n1", ipaddress.ip_address(NODE_IP), ipaddress.ip_address(NODE_IP), None, None
    )
    cfg = parse([], {})
    ctx = RunContext(cfg, kube, informers, node, HealthChecker(), Metrics(), Barriers())
    ctrl = NetworkPolicyController(ctx, Dataplane({"IPv4": tables}, sets))
    await ctrl.start()
    await ctrl.sync(full=True)
    try:
        yield Rig(lab, ctrl, tables, sets)
    finally:
        await informers.stop()


async def test_without_policies_everything_is_allowed(rig: Rig) -> None:
    assert rig.tables.rules("FORWARD")[0].text.endswith("-j KUBE-ROUTER-FORWARD")
    assert rig.verdict("10.244.1.12", "10.244.1.11", 80) == "ACCEPT"
    assert rig.verdict("10.244.2.13", "10.244.1.11", 81, bridged=False) == "ACCEPT"


async def test_ingress_policy_is_enforced_and_follows_changes(rig: Rig) -> None:
    rig.lab.store.create(
        "networkpolicies",
        {
            "metadata": {"name": "allow-c", "namespace": "x"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "a"}},
                "ingress": [
                    {
                        "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                        "ports": [{"port": "http"}],
                    }
                ],
            },
        },
    )
    await rig.settle()
    assert rig.verdict("10.244.2.13", "10.244.1.11", 80, bridged=False) == "ACCEPT"
    assert rig.verdict("10.244.2.13", "10.244.1.11", 81, bridged=False) == "REJECT"
    assert rig.verdict("10.244.1.12", "10.244.1.11", 80) == "REJECT"
    assert rig.verdict("10.244.1.11", "10.244.1.12", 80) == "ACCEPT"  # x/b is not selected
    # x/b moves into the policy's peers by joining namespace y's label? No: relabel namespace x.
    ns = rig.lab.store.get("namespaces", None, "x")
    ns["metadata"]["labels"] = {"ns": "y"}
    rig.lab.store.update("namespaces", ns)
    await rig.settle()
    assert rig.verdict("10.244.1.12", "10.244.1.11", 80) == "ACCEPT"
    rig.lab.store.delete("networkpolicies", "x", "allow-c")
    await rig.settle()
    assert rig.verdict("10.244.2.13", "10.244.1.11", 81, bridged=False) == "ACCEPT"
    assert not [
        c
        for c in rig.tables.chain_names()
        if c.startswith("KUBE-NWPLCY-")
        and c not in ("KUBE-NWPLCY-DEFAULT", "KUBE-NWPLCY-COMMON", "KUBE-NWPLCY-TAIL")
    ]
    assert not [s for s in rig.sets.state(None) if s.startswith(("KUBE-SRC", "KUBE-DST", "KUBE-P"))]


async def test_a_new_pod_is_covered_by_an_existing_policy(rig: Rig) -> None:
    rig.lab.store.create(
        "networkpolicies",
        {
            "metadata": {"name": "deny-all", "namespace": "x"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        },
    )
    await rig.settle()
    assert rig.verdict("10.244.1.11", "10.244.1.12", 80) == "REJECT"
    rig.lab.store.create("pods", pod("x", "d", "10.244.1.14"))
    await rig.settle()
    assert rig.verdict("10.244.1.11", "10.244.1.14", 80) == "REJECT"
    chains = [c for c in rig.tables.chain_names() if c.startswith("KUBE-POD-FW-")]
    assert len(chains) == 3


async def test_bad_policy_fails_its_pods_closed_and_keeps_the_rest(rig: Rig) -> None:
    rig.lab.store.create(
        "networkpolicies",
        {
            "metadata": {"name": "broken", "namespace": "x"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "a"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}],
            },
        },
    )
    await rig.settle()
    assert rig.verdict("10.244.1.12", "10.244.1.11", 80) == "REJECT"
    assert rig.verdict("10.244.1.11", "10.244.1.12", 80) == "ACCEPT"
    assert "x/broken" in rig.ctrl._reported


async def test_full_sync_repairs_outside_damage(rig: Rig) -> None:
    rig.lab.store.create(
        "networkpolicies",
        {
            "metadata": {"name": "deny-all", "namespace": "x"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        },
    )
    await rig.settle()
    # Someone deletes our jump and flushes our forward chain.
    jump = rig.tables.rules("FORWARD")[0].text
    rig.tables.apply(
        f"*filter\n-D FORWARD {jump.removeprefix('-A FORWARD ')}\n-F KUBE-ROUTER-FORWARD\nCOMMIT\n"
    )
    assert rig.verdict("10.244.1.11", "10.244.1.12", 80) == "ACCEPT"
    await rig.ctrl.sync(full=True)
    assert rig.verdict("10.244.1.11", "10.244.1.12", 80) == "REJECT"
    assert rig.tables.rules("FORWARD")[0].text.endswith("-j KUBE-ROUTER-FORWARD")


async def test_upstream_metrics_are_registered_and_observed(rig: Rig) -> None:
    assert rig.ctrl.ctx.metrics is not None
    text = rig.ctrl.ctx.metrics.render().decode()
    for name in (
        "controller_iptables_sync_time_count",
        "controller_policy_chains_sync_time_count",
        "controller_iptables_v4_save_time_count",
        "controller_iptables_v4_restore_time_count",
        "controller_policy_ipset_v4_restore_time_count",
        "controller_policy_chains",
        "controller_policy_ipsets",
        "controller_policy_compile_errors",
    ):
        assert f"kube_router_{name}" in text, name
    assert "v6_restore_time" not in text  # IPv6 is off
    assert "kube_router_controller_iptables_sync_time_count 1.0" in text


def peers_policy(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": labels},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
        },
    }


def pool_of(rig: Rig, list_set: str) -> str:
    state = rig.sets.state(None)[list_set]
    assert state.spec.type == "list:set"
    (pool,) = state.entries
    return pool


async def test_policies_with_the_same_peers_share_one_pool(rig: Rig) -> None:
    for name, app in (("p1", "a"), ("p2", "b")):
        rig.lab.store.create("networkpolicies", peers_policy(name, {"app": app}))
    await rig.settle()
    src = [names.ingress_pods_set("x", p, 0, "IPv4") for p in ("p1", "p2")]
    pool = pool_of(rig, src[0])
    assert pool_of(rig, src[1]) == pool
    assert rig.sets.state(None)[pool].entries == {"10.244.2.13"}
    # A new pod in y is one member added to the shared pool, and both policies let it in.
    rig.lab.store.create("pods", pod("y", "e", "10.244.2.14", host=OTHER_NODE_IP))
    await rig.settle()
    assert pool_of(rig, src[0]) == pool_of(rig, src[1]) == pool
    assert rig.sets.state(None)[pool].entries == {"10.244.2.13", "10.244.2.14"}
    for src_ip, dst in (("10.244.1.12", "10.244.1.11"), ("10.244.1.11", "10.244.1.12")):
        assert rig.verdict("10.244.2.14", dst, 80, bridged=False) == "ACCEPT"
        assert rig.verdict(src_ip, dst, 80) == "REJECT"


async def test_full_sync_refills_a_list_set_flushed_from_outside(rig: Rig) -> None:
    rig.lab.store.create("networkpolicies", peers_policy("p1", {"app": "a"}))
    await rig.settle()
    src = names.ingress_pods_set("x", "p1", 0, "IPv4")
    rig.sets.apply(f"flush {src}\n")
    assert rig.verdict("10.244.2.13", "10.244.1.11", 80, bridged=False) == "REJECT"
    await rig.ctrl.sync(full=True)
    assert rig.verdict("10.244.2.13", "10.244.1.11", 80, bridged=False) == "ACCEPT"


async def test_upstream_hash_ip_sets_held_by_its_rules_are_taken_over(rig: Rig) -> None:
    """Upstream's layout: the same set name as hash:ip, used by a versioned policy chain."""
    src = names.ingress_pods_set("x", "p1", 0, "IPv4")
    rig.sets.apply(f"create {src} hash:ip timeout 0\nadd {src} 10.9.9.9\n")
    rig.tables.apply(
        "*filter\n:KUBE-NWPLCY-UPSTREAMV1 - [0:0]\n"
        f"-A KUBE-NWPLCY-UPSTREAMV1 -m set --match-set {src} src -j ACCEPT\nCOMMIT\n"
    )
    rig.lab.store.create("networkpolicies", peers_policy("p1", {"app": "a"}))
    await asyncio.sleep(0.3)
    await rig.ctrl.sync(full=True)
    assert rig.sets.state(None)[src].spec.type == "list:set"
    assert "KUBE-NWPLCY-UPSTREAMV1" not in rig.tables.chain_names()
    assert rig.verdict("10.244.2.13", "10.244.1.11", 80, bridged=False) == "ACCEPT"
    assert rig.verdict("10.9.9.9", "10.244.1.11", 80, bridged=False) == "REJECT"


async def test_a_both_directions_policy_does_not_let_egress_pass_as_ingress(rig: Rig) -> None:
    # The smallest fail-open case: x/a and x/b are both targets of p1. Their egress admits
    # only pods labelled app=none, so x/a -> x/b is denied whatever p1's ingress rule allows.
    deny_egress = {"podSelector": {}, "policyTypes": ["Egress"], "egress": []}
    both = {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{}],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "none"}}}]}],
    }
    for name, spec in (("p0", deny_egress), ("p1", both)):
        rig.lab.store.create(
            "networkpolicies", {"metadata": {"name": name, "namespace": "x"}, "spec": spec}
        )
    await rig.settle()
    for src, dst in (("10.244.1.11", "10.244.1.12"), ("10.244.1.12", "10.244.1.11")):
        for port in (80, 81):
            assert rig.verdict(src, dst, port) == "REJECT", (src, dst, port)
    # Ingress from y/c (another node, no egress policy here) is still admitted by p1.
    assert rig.verdict("10.244.2.13", "10.244.1.11", 80, bridged=False) == "ACCEPT"
    chains = {c for c in rig.tables.chain_names() if c.startswith(names.POLICY_CHAIN_PREFIX)}
    assert names.policy_egress_chain("x", "p1", "IPv4") in chains
