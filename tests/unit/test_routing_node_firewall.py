# ruff: noqa: E501  (rules kept verbatim, one per line, as iptables-save prints them)
"""The routing controller's ipsets and rules over the strict iptables and ipset fakes.

Sets hold every node's pod CIDRs and addresses, refilled through a swap; FORWARD accepts sit on
top; pod egress is masqueraded (traced through the fake's nat table) but pod-to-pod and
pod-to-node traffic is not; a second apply writes nothing; cleanup takes only ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

import pytest

from kube_router.controllers.routing import node_firewall as nf
from kube_router.controllers.routing.node_firewall import (
    NodeFirewall,
    NodeFirewallError,
    build_spec,
    node_pod_cidrs,
)
from kube_router.dataplane import ipset
from kube_router.dataplane import iptables_parse as ipt
from kube_router.dataplane.ipset_fake import FakeIPSets
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.iptables_rule import parse_rule
from kube_router.dataplane.tracer import Packet, trace
from kube_router.k8s import models

IFACE = "eth0"
FOREIGN_FORWARD = "-p tcp -m tcp --dport 22 -j ACCEPT"
FOREIGN_POST = "-s 192.0.2.0/24 -j MASQUERADE"
POD_SET, NODE_SET = "kube-router-pod-subnets", "kube-router-node-ips"
POD_SET6, NODE_SET6 = "inet6:kube-router-pod-subnets", "inet6:kube-router-node-ips"
FORWARD_RULES = [
    '-o eth0 -m comment --comment "allow outbound node port traffic on node interface with which node ip is associated" -j ACCEPT',
    '-o kube-bridge -m comment --comment "allow inbound traffic to pods" -j ACCEPT',
    '-i kube-bridge -m comment --comment "allow outbound traffic from pods" -j ACCEPT',
]
MASQ4 = "-m set --match-set kube-router-pod-subnets src -m set ! --match-set kube-router-pod-subnets dst -m set ! --match-set kube-router-node-ips dst -j MASQUERADE --random-fully"
MASQ6 = "-m set --match-set inet6:kube-router-pod-subnets src -m set ! --match-set inet6:kube-router-pod-subnets dst -m set ! --match-set inet6:kube-router-node-ips dst -j MASQUERADE --random-fully"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def node(
    name: str,
    ips: Sequence[tuple[str, str]] = (),
    pod_cidrs: Sequence[str] = (),
    annotations: dict[str, str] | None = None,
) -> models.Node:
    return models.Node(
        metadata=models.AnnotatedMeta(name=name, annotations=annotations or {}),
        spec=models.NodeSpec(pod_cidrs=list(pod_cidrs)),
        status=models.NodeStatus(addresses=[models.NodeAddress(type=t, address=a) for t, a in ips]),
    )


NODES = [
    node(
        "a",
        [("InternalIP", "192.168.1.10"), ("InternalIP", "fd00:1::10")],
        ["10.1.0.0/24", "fd00:10:1::/64"],
    ),
    node("b", [("InternalIP", "192.168.1.11"), ("ExternalIP", "203.0.113.11")], ["10.1.1.0/24"]),
    node(
        "c",
        [("InternalIP", "192.168.1.12")],
        annotations={"kube-router.io/pod-cidr": "10.1.2.0/24"},
    ),
    node("d", [("InternalIP", "192.168.1.13")]),  # no pod CIDR: still a node address
]


class CountingTables:
    def __init__(self, fake: FakeIPTables) -> None:
        self.fake, self.family = fake, fake.family
        self.writes = 0

    async def save(self, table: str = "filter") -> str:
        return await self.fake.save(table)

    async def restore(self, tx: ipt.Transaction | str) -> None:
        self.writes += 1
        await self.fake.restore(tx)


class CountingSets(FakeIPSets):
    writes = 0
    last = ""

    async def restore(self, tx: ipset.Transaction) -> None:
        self.writes += 1
        self.last = tx.render()
        await super().restore(tx)


class World:
    def __init__(self) -> None:
        self.sets = CountingSets(is_referenced=self._referenced)
        self.tables = {
            f: CountingTables(FakeIPTables(f, set_family=self._set_family)) for f in nf.FAMILIES
        }
        self.fw = NodeFirewall(self.tables, self.sets)

    def _set_family(self, name: str) -> ipt.Family | None:
        found = self.sets.sets.get(name)
        if found is None:
            return None
        return "ipv6" if found.family == "inet6" else "ipv4"

    def _referenced(self, name: str) -> bool:
        return any(name in t.fake.referenced_sets() for t in self.tables.values())

    def rules(self, family: ipt.Family, chain: str, table: str) -> list[str]:
        return [r.text for r in self.tables[family].fake.rules(chain, table)]

    def writes(self) -> int:
        return self.sets.writes + sum(t.writes for t in self.tables.values())

    def members(self, name: str) -> set[str]:
        return set(self.sets.state()[name].entries)

    def contains(self, name: str, value: str, flags: str) -> bool:
        return self.sets.contains(name, value, flags)


def spec(**kw: Any) -> nf.NodeFirewallSpec:
    return build_spec(NODES, kw.pop("families", nf.FAMILIES), kw.pop("iface", IFACE), **kw)


@pytest.fixture
def world() -> World:
    w = World()
    for family in nf.FAMILIES:  # someone else's rules, which must stay where they are
        w.tables[family].fake.apply(f"*filter\n-A FORWARD {FOREIGN_FORWARD}\nCOMMIT\n")
        w.tables[family].fake.apply(
            f"*nat\n-A POSTROUTING {FOREIGN_POST if family == 'ipv4' else '-j ACCEPT'}\nCOMMIT\n"
        )
    w.sets.apply("create KUBE-DST-FOREIGN hash:ip timeout 0\ncreate other-set hash:net\n")
    return w


@pytest.mark.parametrize(
    ("n", "want"),
    [
        (node("x", pod_cidrs=["10.0.0.0/24"]), ["10.0.0.0/24"]),
        (
            node(
                "x",
                pod_cidrs=["10.0.0.0/24"],
                annotations={"kube-router.io/pod-cidrs": "10.9.0.0/24, fd00::/64"},
            ),
            ["10.9.0.0/24", "fd00::/64"],
        ),
        (
            node(
                "x",
                pod_cidrs=["10.0.0.0/24"],
                annotations={
                    "kube-router.io/pod-cidr": "10.8.0.0/24",
                    "kube-router.io/pod-cidrs": "10.9.0.0/24",
                },
            ),
            ["10.9.0.0/24"],  # one order everywhere: the deprecated pod-cidr comes last
        ),
        (
            node(
                "x",
                pod_cidrs=["10.0.0.0/24"],
                annotations={
                    "kube-router.io/pod-cidr": "bad",
                    "kube-router.io/pod-cidrs": "10.9.0.0/24,nope",
                },
            ),
            ["10.9.0.0/24"],
        ),
        (
            node("x", pod_cidrs=["10.0.0.0/24"], annotations={"kube-router.io/pod-cidr": "bad"}),
            ["10.0.0.0/24"],
        ),
        (node("x"), []),
    ],
)
def test_pod_cidr_precedence(n: models.Node, want: list[str]) -> None:
    assert list(node_pod_cidrs(n)[0]) == want


def test_rules_are_what_iptables_save_prints() -> None:
    for family, masq in (("ipv4", MASQ4), ("ipv6", MASQ6)):

        def sets(name: str, fam: ipt.Family = family) -> ipt.Family:
            return fam

        assert nf.masquerade_rule(family, True) == masq
        assert parse_rule(ipt.tokenize(masq), family, "nat", lambda _: False, sets).text == masq
        for rule in nf.forward_rules(IFACE):
            assert (
                parse_rule(ipt.tokenize(rule), family, "filter", lambda _: False, sets).text == rule
            )


def test_apply_from_scratch(world: World) -> None:
    assert run(world.fw.apply(spec()))
    assert world.members(POD_SET) == {"10.1.0.0/24", "10.1.1.0/24", "10.1.2.0/24"}
    assert world.members(POD_SET6) == {"fd00:10:1::/64"}
    assert world.members(NODE_SET) == {
        "192.168.1.10",
        "192.168.1.11",
        "203.0.113.11",
        "192.168.1.12",
        "192.168.1.13",
    }
    assert world.members(NODE_SET6) == {"fd00:1::10"}
    assert world.sets.state()[POD_SET].spec.type == "hash:net"
    assert world.sets.state()[NODE_SET6].spec.family == "inet6"
    for family, masq in (("ipv4", MASQ4), ("ipv6", MASQ6)):
        assert world.rules(family, "FORWARD", "filter") == [*FORWARD_RULES, FOREIGN_FORWARD]
        assert world.rules(family, "POSTROUTING", "nat")[-1] == masq
    assert "KUBE-DST-FOREIGN" in world.sets.state(None) and "other-set" in world.sets.state(None)


def test_second_apply_writes_nothing(world: World) -> None:
    run(world.fw.apply(spec()))
    before = world.writes()
    assert not run(world.fw.apply(spec()))
    assert world.writes() == before


def test_node_change_refills_through_swap(world: World) -> None:
    run(world.fw.apply(spec()))
    nodes = [*NODES[:1], node("e", [("InternalIP", "192.168.1.20")], ["10.1.9.0/24"])]
    before = world.tables["ipv4"].writes + world.tables["ipv6"].writes
    assert run(world.fw.apply(build_spec(nodes, nf.FAMILIES, IFACE)))
    assert world.members(POD_SET) == {"10.1.0.0/24", "10.1.9.0/24"}
    assert world.members(NODE_SET) == {"192.168.1.10", "192.168.1.20"}
    assert f"swap {nf.tmp_set_name(nf.set_spec(POD_SET, 'ipv4'))} {POD_SET}" in world.sets.last
    assert "inet6" not in world.sets.last  # the IPv6 sets did not change
    assert world.tables["ipv4"].writes + world.tables["ipv6"].writes == before
    assert not any(n.startswith("TMP-") for n in world.sets.state(None))


def test_rules_put_back_without_moving_others(world: World) -> None:
    run(world.fw.apply(spec()))
    fake = world.tables["ipv4"].fake
    fake.apply(
        f"*filter\n-D FORWARD {FORWARD_RULES[1]}\n-I FORWARD 1 -j DROP\n-A FORWARD {FORWARD_RULES[2]}\nCOMMIT\n"
    )
    fake.apply(f"*nat\n-D POSTROUTING {MASQ4}\nCOMMIT\n")
    assert run(world.fw.apply(spec()))
    # the doubled accept loses its first copy (-D deletes the first match)
    assert world.rules("ipv4", "FORWARD", "filter") == [
        FORWARD_RULES[1],
        "-j DROP",
        FORWARD_RULES[0],
        FOREIGN_FORWARD,
        FORWARD_RULES[2],
    ]
    assert world.rules("ipv4", "POSTROUTING", "nat") == [FOREIGN_POST, MASQ4]


def test_interface_change_replaces_its_rule(world: World) -> None:
    run(world.fw.apply(spec()))
    run(world.fw.apply(spec(iface="ens5")))
    rules = world.rules("ipv4", "FORWARD", "filter")
    assert FORWARD_RULES[0] not in rules
    assert rules[0] == FORWARD_RULES[0].replace("-o eth0", "-o ens5")


@pytest.mark.parametrize(
    "old",
    [
        "-m set --match-set kube-router-pod-subnets src -m set ! --match-set kube-router-pod-subnets dst -j MASQUERADE",
        "-m set --match-set kube-router-pod-subnets src -m set ! --match-set kube-router-pod-subnets dst -m set ! --match-set kube-router-node-ips dst -j MASQUERADE",
    ],
)
def test_old_shapes_deleted(world: World, old: str) -> None:
    run(world.fw.apply(spec(pod_egress=False)))
    world.tables["ipv4"].fake.apply(f"*nat\n-A POSTROUTING {old}\n-A POSTROUTING {old}\nCOMMIT\n")
    run(world.fw.apply(spec()))
    assert world.rules("ipv4", "POSTROUTING", "nat") == [FOREIGN_POST, MASQ4]


def test_without_random_fully(world: World) -> None:
    run(world.fw.apply(spec()))
    run(world.fw.apply(spec(random_fully=False)))
    assert world.rules("ipv4", "POSTROUTING", "nat") == [
        FOREIGN_POST,
        MASQ4.removesuffix(" --random-fully"),
    ]


def test_pod_egress_off_removes_rule(world: World) -> None:
    run(world.fw.apply(spec()))
    run(world.fw.apply(spec(pod_egress=False)))
    assert world.rules("ipv4", "POSTROUTING", "nat") == [FOREIGN_POST]
    assert world.rules("ipv6", "POSTROUTING", "nat") == ["-j ACCEPT"]
    assert world.rules("ipv4", "FORWARD", "filter")[:3] == FORWARD_RULES


def test_ipv4_only(world: World) -> None:
    run(world.fw.apply(spec(families=("ipv4",))))
    assert POD_SET6 not in world.sets.state()
    assert world.rules("ipv6", "FORWARD", "filter") == [FOREIGN_FORWARD]


POD, POD2, REMOTE_POD, NODE_B, OUTSIDE = (
    "10.1.0.5",
    "10.1.0.6",
    "10.1.1.7",
    "192.168.1.11",
    "8.8.8.8",
)


@pytest.mark.parametrize(
    ("packet", "action"),
    [
        (Packet(POD, OUTSIDE, out_iface=IFACE), "MASQUERADE"),
        (Packet(POD, REMOTE_POD, out_iface=IFACE), "ACCEPT"),
        (Packet(POD, POD2, out_iface="kube-bridge"), "ACCEPT"),
        (Packet(POD, NODE_B, out_iface=IFACE), "ACCEPT"),
        (Packet(POD, "203.0.113.11", out_iface=IFACE), "ACCEPT"),  # another node's ExternalIP
        (Packet("192.168.1.10", OUTSIDE, out_iface=IFACE), "ACCEPT"),  # the node itself
        (Packet("192.0.2.9", OUTSIDE), "MASQUERADE"),  # the foreign rule, first
        (Packet("fd00:10:1::5", "2001:db8::1", family="ipv6"), "MASQUERADE"),
        (Packet("fd00:10:1::5", "fd00:1::10", family="ipv6"), "ACCEPT"),
    ],
)
def test_packets_through_nat(world: World, packet: Packet, action: str) -> None:
    run(world.fw.apply(spec()))
    if packet.family == "ipv6":
        world.tables["ipv6"].fake.apply(
            "*nat\n-F POSTROUTING\n" + f"-A POSTROUTING {MASQ6}\nCOMMIT\n"
        )
    verdict = trace(
        world.tables[packet.family].fake, "POSTROUTING", packet, world.contains, table="nat"
    )
    assert verdict.action == action


@pytest.mark.parametrize(
    ("packet", "hit"),
    [
        (Packet(POD, OUTSIDE, in_iface="kube-bridge", out_iface=IFACE), 0),
        (Packet(OUTSIDE, POD, in_iface=IFACE, out_iface="kube-bridge"), 1),
        (Packet(POD, POD2, in_iface="kube-bridge", out_iface="kube-bridge"), 1),
        (Packet(POD, OUTSIDE, in_iface="kube-bridge", out_iface="ens9"), 2),
    ],
)
def test_packets_through_forward(world: World, packet: Packet, hit: int) -> None:
    run(world.fw.apply(spec()))
    world.tables["ipv4"].fake.apply("*filter\n-P FORWARD DROP\nCOMMIT\n")
    verdict = trace(world.tables["ipv4"].fake, "FORWARD", packet, world.contains)
    assert (verdict.action, verdict.hits) == ("ACCEPT", [("FORWARD", hit)])


def test_cleanup_removes_only_ours(world: World) -> None:
    run(world.fw.apply(spec()))
    world.sets.apply("create TMP-LEFTOVER hash:net timeout 0\n")
    run(world.fw.cleanup())
    for family in nf.FAMILIES:
        assert world.rules(family, "FORWARD", "filter") == [FOREIGN_FORWARD]
    assert world.rules("ipv4", "POSTROUTING", "nat") == [FOREIGN_POST]
    assert sorted(world.sets.state(None)) == ["KUBE-DST-FOREIGN", "TMP-LEFTOVER", "other-set"]
    run(world.fw.cleanup())  # nothing left of ours: a no-op


def test_cleanup_failure_is_wrapped(world: World) -> None:
    run(world.fw.apply(spec()))
    world.tables["ipv4"].fake.apply(
        f"*filter\n-A FORWARD -m set --match-set {POD_SET} src -j ACCEPT\nCOMMIT\n"
    )
    with pytest.raises(NodeFirewallError, match="cleanup failed"):
        run(world.fw.cleanup())


def test_damaged_set_is_recreated(world: World) -> None:
    world.sets.apply(f"create {NODE_SET} hash:net timeout 0\nadd {NODE_SET} 10.0.0.0/8\n")
    run(world.fw.apply(spec()))
    assert world.sets.state()[NODE_SET].spec.type == "hash:ip"


def test_missing_family_port() -> None:
    fw = NodeFirewall({"ipv4": FakeIPTables("ipv4")}, FakeIPSets())
    with pytest.raises(NodeFirewallError, match="no iptables port for family ipv6"):
        run(fw.apply(spec()))


@pytest.mark.parametrize(
    ("output", "want"),
    [
        ("iptables v1.8.9 (nf_tables)\n", True),
        ("iptables v1.6.2\n", True),
        ("iptables v1.6.1\n", False),
        ("ip6tables v1.4.21\n", False),
        ("garbage", False),
    ],
)
def test_random_fully_supported(output: str, want: bool) -> None:
    assert nf.random_fully_supported(output) is want
