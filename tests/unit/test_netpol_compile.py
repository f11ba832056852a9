"""Static chains, pod predicates, comments, assembly and error results of the netpol compiler."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import pytest

from kube_router.config import Config, parse
from kube_router.controllers.netpol import names
from kube_router.controllers.netpol.compile import (
    HASH_IP,
    assemble,
    compile_pod,
    compile_policy,
    compile_static,
    is_actionable,
    is_finished,
    is_local,
    pod_ip,
)
from kube_router.controllers.netpol.rulefmt import clamp_comment
from kube_router.flags import ConfigError
from kube_router.k8s.models import Namespace, NetworkPolicy, Pod

# UUIDs below: base32(sha256(chain + rule arguments joined with nothing))[:16], by hand.
INPUT_JUMP = '-m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-INPUT'
FORWARD_JUMP = '-m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" -j KUBE-ROUTER-FORWARD'
OUTPUT_JUMP = '-m comment --comment "kube-router netpol - VEAAIY32XVBHCSCY" -j KUBE-ROUTER-OUTPUT'
CLUSTER_RANGE = (
    '-m comment --comment "allow traffic to primary/secondary cluster IP range - BVHX2PIHDXXEO43X"'
    " -d 10.96.0.0/12 -j RETURN"
)
TCP_NODE_PORTS = (
    '-p tcp -m comment --comment "allow LOCAL TCP traffic to node ports - LR7XO7NXDBGQJD2M"'
    " -m addrtype --dst-type LOCAL -m multiport --dports 30000:32767 -j RETURN"
)
ROUTER_TAIL = [
    '-m comment --comment "rule to explicitly handle traffic for network policies ACCEPT/REJECT'
    ' decision" -j KUBE-NWPLCY-TAIL',
    '-m comment --comment "rule to explicitly ACCEPT traffic that comply to network policies"'
    " -m mark --mark 0x20000/0x20000 -j ACCEPT",
]


def config(**overrides: Any) -> Config:
    return dataclasses.replace(parse([], {}), **overrides)


def pod(obj: dict[str, Any]) -> Pod:
    return msgspec.convert(obj, Pod)


def running(ns: str, name: str, ip: str, host: str = "10.0.0.1", **labels: str) -> Pod:
    return pod(
        {
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": host},
        }
    )


def policy(obj: dict[str, Any]) -> NetworkPolicy:
    return msgspec.convert(obj, NetworkPolicy)


# --- static chains ------------------------------------------------------------------------------


def test_static_ipv4_defaults() -> None:
    chains = compile_static(config(), [])["IPv4"]
    assert chains["INPUT"] == [INPUT_JUMP]
    assert chains["FORWARD"] == [FORWARD_JUMP]
    assert chains["OUTPUT"] == [OUTPUT_JUMP]
    head = chains["KUBE-ROUTER-INPUT"][:-2]
    assert head[:2] == [CLUSTER_RANGE, TCP_NODE_PORTS]
    assert [r.split()[1] for r in head[1:]] == ["tcp", "udp", "sctp"]
    assert "allow LOCAL SCTP traffic to node ports - " in head[3]
    for chain in names.ROUTER_CHAINS:
        assert chains[chain][-2:] == ROUTER_TAIL
    assert chains["KUBE-ROUTER-FORWARD"] == ROUTER_TAIL
    assert chains["KUBE-NWPLCY-DEFAULT"] == [
        '-m comment --comment "rule to mark traffic matching a network policy"'
        " -j MARK --set-xmark 0x10000/0x10000"
    ]
    assert chains["KUBE-NWPLCY-TAIL"] == [
        '-m comment --comment "accept netpol-ok" -m mark --mark 0x20000/0x20000 -j ACCEPT'
    ]
    common = chains["KUBE-NWPLCY-COMMON"]
    assert common[0].endswith("-m conntrack --ctstate INVALID -j DROP")
    assert common[1].endswith("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    assert common[2] == (
        '-m comment --comment "allow icmp echo requests" -p icmp --icmp-type echo-request -j ACCEPT'
    )
    assert [r.split()[-3] for r in common[2:]] == [
        "echo-request",
        "destination-unreachable",
        "time-exceeded",
    ]
    assert "IPv6" not in compile_static(config(), [])


def test_static_ipv6_ranges_and_ndp() -> None:
    cfg = config(
        enable_ipv6=True,
        service_cluster_ip_range=["10.96.0.0/12", "fd00:96::/112"],
        service_external_ip_range=["192.0.2.0/24", "2001:db8:e::/64"],
        loadbalancer_ip_range=["2001:db8:1b::/64"],
        service_node_port_range="30000:30100",
    )
    static = compile_static(cfg, [])
    v6 = static["IPv6"]["KUBE-ROUTER-INPUT"][:-2]
    assert len(v6) == 6
    assert v6[0].endswith("-d fd00:96::/112 -j RETURN")
    assert "--dports 30000:30100" in v6[1]
    assert '"allow traffic to external IP range: 2001:db8:e::/64 - ' in v6[4]
    assert v6[4].endswith("-d 2001:db8:e::/64 -j RETURN")
    assert '"allow traffic to load balancer IP range: 2001:db8:1b::/64 - ' in v6[5]
    v4 = static["IPv4"]["KUBE-ROUTER-INPUT"][:-2]
    assert len(v4) == 5
    assert v4[4].endswith("-d 192.0.2.0/24 -j RETURN")
    icmp6 = [r.split()[-3] for r in static["IPv6"]["KUBE-NWPLCY-COMMON"][2:]]
    assert icmp6 == [
        "echo-request",
        "destination-unreachable",
        "time-exceeded",
        "neighbor-solicitation",
        "neighbor-advertisement",
        "echo-reply",
    ]
    assert all(
        " -p ipv6-icmp --icmpv6-type " in r for r in static["IPv6"]["KUBE-NWPLCY-COMMON"][2:]
    )


def test_static_default_deny_tail() -> None:
    cfg = config(netpol_default_deny=True, enable_ipv6=True)
    static = compile_static(cfg, ["10.1.0.0/24", "fd00:1::/64"])
    gated = '-m comment --comment "reject unprogrammed local pod (default-deny)"'
    early = '-m comment --comment "reject pre-netpol (default-deny)"'
    assert static["IPv4"]["KUBE-NWPLCY-TAIL"] == [
        f"-s 10.1.0.0/24 {gated} -m set ! --match-set kube-router-local-pods src -j REJECT",
        f"-d 10.1.0.0/24 {gated} -m set ! --match-set kube-router-local-pods dst -j REJECT",
        '-m comment --comment "accept netpol-ok" -m mark --mark 0x20000/0x20000 -j ACCEPT',
        f"-s 10.1.0.0/24 {early} -j REJECT",
        f"-d 10.1.0.0/24 {early} -j REJECT",
    ]
    v6 = static["IPv6"]["KUBE-NWPLCY-TAIL"]
    assert v6[0].endswith("! --match-set inet6:kube-router-local-pods src -j REJECT")
    assert v6[0].startswith("-s fd00:1::/64 ")


def test_static_bad_node_port_range() -> None:
    with pytest.raises(ConfigError):
        compile_static(config(service_node_port_range="32767-30000"), [])


# --- pod predicates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "host_network", "actionable", "local"),
    [
        ({"phase": "Running", "podIP": "10.1.0.2", "hostIP": "10.0.0.1"}, False, True, True),
        ({"phase": "Pending", "podIP": "10.1.0.2", "hostIP": "10.0.0.1"}, False, True, True),
        ({"phase": "Running", "podIP": "10.1.0.2", "hostIP": "10.0.0.9"}, False, True, False),
        ({"phase": "Running", "podIP": "10.0.0.1", "hostIP": "10.0.0.1"}, True, False, False),
        ({"phase": "Pending", "hostIP": "10.0.0.1"}, False, False, False),
        ({"phase": "Succeeded", "podIP": "10.1.0.2", "hostIP": "10.0.0.1"}, False, False, False),
        ({"phase": "Failed", "podIP": "10.1.0.2", "hostIP": "10.0.0.1"}, False, False, False),
        ({"phase": "Completed", "podIP": "10.1.0.2", "hostIP": "10.0.0.1"}, False, False, False),
    ],
)
def test_actionable_and_local(
    status: dict[str, str], host_network: bool, actionable: bool, local: bool
) -> None:
    p = pod({"spec": {"hostNetwork": host_network}, "status": status})
    assert is_actionable(p) is actionable
    assert is_local(p, ["10.0.0.1", "fd00::1"]) is local
    assert is_finished(p) is (status["phase"] in ("Succeeded", "Failed", "Completed"))


def test_pod_ip_per_family_falls_back_to_pod_ip() -> None:
    p = pod({"status": {"podIP": "10.1.0.2"}})
    assert pod_ip(p, "IPv4") == "10.1.0.2"
    assert pod_ip(p, "IPv6") is None
    dual = pod({"status": {"podIP": "fd00::2", "podIPs": [{"ip": "fd00::2"}, {"ip": "10.1.0.2"}]}})
    assert pod_ip(dual, "IPv4") == "10.1.0.2"
    assert pod_ip(dual, "IPv6") == "fd00::2"


# --- comments -----------------------------------------------------------------------------------


def test_comments_are_clamped_and_cleaned() -> None:
    assert clamp_comment('a\nb\tc"d\\e\x7f') == "abcde"
    assert len(clamp_comment("x" * 300)) == 120
    assert clamp_comment("é" * 100) == "é" * 60  # 120 bytes, no half character


def test_long_names_are_clamped_in_pod_rules() -> None:
    ns, name = "n" * 63, "p" * 100
    piece = compile_pod(running(ns, name, "10.1.0.2"), [], config())
    log_drop = piece.families["IPv4"].rules[-4]
    comment = log_drop.split('"')[1]
    assert len(comment) == 120
    assert comment == f"{ns}/{name}"[:120]


# --- policies: details the fixtures do not show -------------------------------------------------


def test_policy_types_default() -> None:
    cfg = config()
    only_ingress = policy({"metadata": {"namespace": "a", "name": "p"}, "spec": {}})
    piece = compile_policy(only_ingress, {}, [], cfg)
    assert (piece.ingress, piece.egress) == (True, False)
    bad = policy({"metadata": {"namespace": "a", "name": "p"}, "spec": {"policyTypes": ["In"]}})
    piece = compile_policy(bad, {}, [], cfg)
    assert piece.error == "unknown policy type 'In'"
    assert (piece.ingress, piece.egress) == (True, True)


def test_bad_pod_selector_fails_closed_for_the_whole_namespace() -> None:
    pods = {"a": [running("a", "x", "10.1.0.2"), running("a", "y", "10.1.0.3")]}
    spec = {"podSelector": {"matchExpressions": [{"key": "k", "operator": "Equals"}]}}
    piece = compile_policy(
        policy({"metadata": {"namespace": "a", "name": "p"}, "spec": spec}), pods, [], config()
    )
    assert piece.error is not None
    assert "unknown operator 'Equals'" in piece.error
    assert piece.target_pods == frozenset({"a/x", "a/y"})


@pytest.mark.parametrize(
    ("port", "reason"),
    [
        ({"port": 0}, "spec.ingress[0].ports[0].port: 0 is not a port number"),
        ({"port": 80, "endPort": 70000}, "spec.ingress[0].ports[0].endPort: 70000 is not"),
    ],
)
def test_bad_ports(port: dict[str, Any], reason: str) -> None:
    spec = {"podSelector": {}, "ingress": [{"ports": [port]}]}
    obj = policy({"metadata": {"namespace": "a", "name": "p"}, "spec": spec})
    piece = compile_policy(obj, {}, [], config())
    assert piece.error is not None
    assert piece.error.startswith(reason)


def test_except_of_another_family_is_an_error() -> None:
    block = {"cidr": "10.0.0.0/8", "except": ["fd00::/8"]}
    spec = {"podSelector": {}, "ingress": [{"from": [{"ipBlock": block}]}]}
    obj = policy({"metadata": {"namespace": "a", "name": "p"}, "spec": spec})
    piece = compile_policy(obj, {}, [], config(enable_ipv6=True))
    assert piece.error is not None
    assert "not of the family" in piece.error


def _dns_pod(ns: str, name: str, ip: str, number: int) -> Pod:
    ports = [{"name": "dns", "containerPort": number, "protocol": "UDP"}]
    return pod(
        {
            "metadata": {"namespace": ns, "name": name},
            "spec": {"containers": [{"ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "hostIP": "10.0.0.2"},
        }
    )


@pytest.mark.parametrize(
    ("to", "kind", "block"),
    [([], "any", None), ([{"ipBlock": {"cidr": "10.1.0.0/16"}}], "cidr", "10.1.0.0/16")],
)
def test_egress_named_port_towards_any_address_resolves_on_every_pod(
    to: list[Any], kind: str, block: str | None
) -> None:
    # The name is the destination pod's, wherever it runs: pods of other namespaces give it their
    # numbers too, and the rule matches only towards pods exposing it (upstream matches the
    # policy namespace's numbers towards any address, and no named port towards an ipBlock).
    pods = {
        "a": [_dns_pod("a", "dns", "10.1.0.53", 53)],
        "b": [_dns_pod("b", "dns", "10.1.1.53", 5353)],
    }
    spec = {
        "podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [{"to": to, "ports": [{"protocol": "UDP", "port": "dns"}]}],
    }
    obj = policy({"metadata": {"namespace": "a", "name": "p"}, "spec": spec})
    fam = compile_policy(obj, pods, [], config()).families["IPv4"]
    src = names.target_src_set("a", "p", "IPv4")
    blk = (
        f" -m set --match-set {names.egress_ipblock_set('a', 'p', 0, 'IPv4')} dst" if block else ""
    )
    marks = [r for r in fam.chains["egress"][1] if "MARK" in r]
    sets = {s.name: s.entries for s in fam.sets}
    for index, (number, ip) in enumerate(((53, "10.1.0.53"), (5353, "10.1.1.53"))):
        owners = names.egress_any_named_port_set("a", "p", 0, index, "IPv4")
        assert marks[index] == (
            f'-m comment --comment "a/p egress {kind} np" -m set --match-set {src} src{blk}'
            f" -m set --match-set {owners} dst -p udp --dport {number}"
            " -j MARK --set-xmark 0x10000/0x10000"
        )
        assert sets[owners] == (ip,)


def test_peer_selector_matching_nothing_keeps_rule_and_empty_set() -> None:
    spec = {
        "podSelector": {},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"x": "y"}}}]}],
    }
    obj = policy({"metadata": {"namespace": "a", "name": "p"}, "spec": spec})
    piece = compile_policy(obj, {"a": [running("a", "w", "10.1.0.2")]}, [], config())
    fam = piece.families["IPv4"]
    assert len(fam.chains["ingress"][1]) == 2
    peer = names.ingress_pods_set("a", "p", 0, "IPv4")
    assert {s.name: s.entries for s in fam.sets}[peer] == ()


def test_named_port_that_resolves_to_nothing_allows_nothing() -> None:
    # Upstream falls back to "all ports" for the pods case here; we allow nothing.
    spec = {
        "podSelector": {},
        "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": "missing"}]}],
    }
    obj = policy({"metadata": {"namespace": "a", "name": "p"}, "spec": spec})
    piece = compile_policy(obj, {"a": [running("a", "w", "10.1.0.2")]}, [], config())
    assert piece.families["IPv4"].chains["ingress"][1] == ()


def test_namespace_selector_uses_namespace_labels() -> None:
    namespaces = [
        msgspec.convert({"metadata": {"name": "b", "labels": {"t": "1"}}}, Namespace),
        msgspec.convert({"metadata": {"name": "c"}}, Namespace),
    ]
    pods = {"b": [running("b", "x", "10.1.1.2")], "c": [running("c", "y", "10.1.2.2")]}
    spec = {
        "podSelector": {},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"t": "1"}}}]}],
    }
    obj = policy({"metadata": {"namespace": "a", "name": "p"}, "spec": spec})
    piece = compile_policy(obj, pods, namespaces, config())
    peer = names.ingress_pods_set("a", "p", 0, "IPv4")
    assert {s.name: s.entries for s in piece.families["IPv4"].sets}[peer] == ("10.1.1.2",)


# --- assembly -----------------------------------------------------------------------------------


def test_assemble_puts_pod_jumps_before_the_tail() -> None:
    cfg = config(netpol_default_deny=True)
    static = compile_static(cfg, ["10.1.0.0/24"])["IPv4"]
    web = running("a", "web", "10.1.0.2", app="web")
    spec: dict[str, Any] = {"podSelector": {}, "ingress": [{}]}
    obj = policy({"metadata": {"namespace": "a", "name": "p"}, "spec": spec})
    pol = compile_policy(obj, {"a": [web]}, [], cfg)
    pod_piece = compile_pod(web, [pol], cfg)
    chains, sets = assemble(static, [pol], [pod_piece], "IPv4", default_deny=True)
    forward = chains["KUBE-ROUTER-FORWARD"]
    assert forward[:4] == list(pod_piece.families["IPv4"].jumps["KUBE-ROUTER-FORWARD"])
    assert forward[4:] == ROUTER_TAIL
    assert (
        chains["KUBE-ROUTER-INPUT"][-3] == pod_piece.families["IPv4"].jumps["KUBE-ROUTER-INPUT"][0]
    )
    assert chains[pod_piece.chain] == list(pod_piece.families["IPv4"].rules)
    chain, rules = pol.families["IPv4"].chains["ingress"]
    assert chain == pol.chains("IPv4")["ingress"]
    assert chains[chain] == list(rules)
    by_name = {s.name: s for s in sets}
    assert by_name["kube-router-local-pods"].entries == ("10.1.0.2",)
    assert by_name["kube-router-local-pods"].kind == HASH_IP
    assert names.target_dst_set("a", "p", "IPv4") in by_name
    assert static["KUBE-ROUTER-FORWARD"] == ROUTER_TAIL  # the input is not modified


@pytest.mark.parametrize(
    ("blocks", "expected"),
    [
        # One block's except is the other block: the union is the whole of both.
        (
            [{"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}, {"cidr": "10.0.0.0/8"}],
            ["0.0.0.0/1", "128.0.0.0/1"],
        ),
        # A wider block around another's except covers it.
        (
            [{"cidr": "10.1.0.0/16", "except": ["10.1.2.0/24"]}, {"cidr": "10.0.0.0/12"}],
            ["10.0.0.0/12"],
        ),
        # Excepts that touch no other block: upstream's entries are exact and kept.
        (
            [{"cidr": "10.0.0.0/30", "except": ["10.0.0.1/32"]}, {"cidr": "10.9.0.0/31"}],
            ["10.0.0.0/30", "10.0.0.1/32 nomatch", "10.9.0.0/31"],
        ),
        # An except inside another block: that block's addresses stay allowed.
        (
            [{"cidr": "10.0.0.0/30", "except": ["10.0.0.1/32"]}, {"cidr": "10.0.0.0/31"}],
            ["10.0.0.0/30"],
        ),
        (
            [{"cidr": "fd00::/126", "except": ["fd00::/127"]}, {"cidr": "fd00::1/128"}],
            ["fd00::1/128", "fd00::2/127"],
        ),
    ],
)
def test_several_ipblocks_of_a_rule_become_their_exact_union(
    blocks: list[dict[str, Any]], expected: list[str]
) -> None:
    spec = {"podSelector": {}, "ingress": [{"from": [{"ipBlock": b} for b in blocks]}]}
    obj = policy({"metadata": {"namespace": "a", "name": "p"}, "spec": spec})
    cfg = config(enable_ipv6=True)
    piece = compile_policy(obj, {"a": [running("a", "w", "10.1.0.2")]}, [], cfg)
    family = "IPv6" if ":" in expected[0] else "IPv4"
    name = names.ingress_ipblock_set("a", "p", 0, family)
    sets = {s.name: s.entries for s in piece.families[family].sets}
    assert sets[name] == tuple(expected)
