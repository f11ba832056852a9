"""BGP peers: global external peers from flags, node-specific peers from annotations (YAML
fixture), iBGP full mesh, ASN groups, route reflectors, IPv6 and dual-stack, and bad input."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from routing_builders import make_config, make_node, make_settings

from kube_router.bgp.model import IPV4, IPV6, GracefulRestart, PeerSpec
from kube_router.controllers.routing.compile import peers as bgp_peers
from kube_router.controllers.routing.compile.settings import RoutingSettings
from kube_router.k8s.models import Node

FIXTURES = Path(__file__).parent.parent / "testdata" / "routing" / "node_peers.yaml"
NODE_CASES: list[dict[str, Any]] = yaml.safe_load(FIXTURES.read_text())
DUAL_ARGS = ("--enable-ipv6",)


def _dual(name: str = "n1", annotations: dict[str, str] | None = None) -> Node:
    return make_node(name, "10.0.0.1", "fd00::1", annotations=annotations)


@pytest.mark.parametrize("case", NODE_CASES, ids=[c["name"] for c in NODE_CASES])
def test_node_peers(case: dict[str, Any]) -> None:
    node = _dual(annotations={k: str(v) for k, v in case["annotations"].items()})
    settings = make_settings(node, *DUAL_ARGS)
    result = bgp_peers.node_peers(node, settings)
    got = [
        {
            "address": p.address,
            "asn": p.asn,
            "local": p.local_address,
            "port": p.port,
            "password": p.password,
        }
        for p in result.peers
    ]
    want = [
        {
            "address": str(w["address"]),
            "asn": int(w["asn"]),
            "local": str(w.get("local", "10.0.0.1")),
            "port": int(w.get("port", 179)),
            "password": str(w.get("password", "")),
        }
        for w in case["peers"]
    ]
    assert got == want
    assert len(result.problems) == len(case["problems"])
    for problem, piece in zip(result.problems, case["problems"], strict=True):
        assert problem.node == "n1"
        assert piece in problem.message
    assert result.bfd_requested == case.get("bfd", False)
    for peer in result.peers:
        assert peer.families == (IPV4, IPV6)
        assert peer.hold_time == 90
        assert not peer.internal


def test_external_peer_fields_from_flags() -> None:
    argv = (
        "--peer-router-ips=192.168.1.1,192.168.1.2",
        "--peer-router-asns=65001,65002",
        "--peer-router-ports=1790,179",
        "--peer-router-multihop-ttl=3",
        "--bgp-holdtime=30s",
        "--bgp-graceful-restart",
    )
    node = make_node("n1", "10.0.0.1")
    config = make_config(*argv)
    settings = make_settings(node, *argv)
    result = bgp_peers.external_peers(config, settings, node, ["secret", ""])
    gr = GracefulRestart(True, 90, 360, True)
    assert result.peers == (
        PeerSpec(
            "192.168.1.1",
            65001,
            local_address="10.0.0.1",
            port=1790,
            password="secret",
            hold_time=30,
            families=(IPV4,),
            graceful_restart=gr,
            multihop_ttl=3,
        ),
        PeerSpec(
            "192.168.1.2",
            65002,
            local_address="10.0.0.1",
            hold_time=30,
            families=(IPV4,),
            graceful_restart=gr,
            multihop_ttl=3,
        ),
    )
    assert result.problems == ()
    assert "secret" not in repr(result.peers[0])


def test_global_peers_win_over_node_peers() -> None:
    argv = ("--peer-router-ips=192.168.1.1", "--peer-router-asns=65001")
    node = make_node(
        "n1",
        "10.0.0.1",
        annotations={"kube-router.io/peers": "- {remoteip: 1.1.1.1, remoteasn: 1}"},
    )
    result = bgp_peers.external_peers(make_config(*argv), make_settings(node, *argv), node, [])
    assert [p.address for p in result.peers] == ["192.168.1.1"]
    alone = bgp_peers.external_peers(make_config(), make_settings(node), node, [])
    assert [(p.address, p.asn) for p in alone.peers] == [("1.1.1.1", 1)]


@pytest.mark.parametrize(
    ("ips", "argv", "peer", "families", "problem"),
    [
        (("10.0.0.1",), (), "192.168.1.1", (IPV4,), None),
        (("10.0.0.1",), (), "2001:db8::1", None, "is ipv6 but the local address 10.0.0.1"),
        (("10.0.0.1", "fd00::1"), DUAL_ARGS, "192.168.1.1", (IPV4, IPV6), None),
        # An IPv6-only node: the global IPv4 peer cannot be reached from its IPv6 address.
        (
            ("fd00::1",),
            ("--enable-ipv4=false", "--enable-ipv6", "--router-id=1.1.1.1"),
            "192.168.1.1",
            None,
            "is ipv4 but the local address fd00::1",
        ),
        (
            ("fd00::1",),
            ("--enable-ipv4=false", "--enable-ipv6", "--router-id=1.1.1.1"),
            "2001:db8::1",
            (IPV6,),
            None,
        ),
    ],
)
def test_global_peer_families(
    ips: tuple[str, ...],
    argv: tuple[str, ...],
    peer: str,
    families: tuple[str, ...] | None,
    problem: str | None,
) -> None:
    flags = (*argv, f"--peer-router-ips={peer}", "--peer-router-asns=65001")
    node = make_node("n1", *ips)
    result = bgp_peers.global_peers(make_config(*flags), make_settings(node, *flags), [])
    if families is None:
        assert result.peers == ()
        assert problem is not None
        assert problem in result.problems[0].message
        assert result.problems[0].node == "n1"
    else:
        assert [p.families for p in result.peers] == [families]
        assert result.problems == ()


# --- iBGP ------------------------------------------------------------------------------------


def _cluster() -> list[Node]:
    return [
        make_node("n1", "10.0.0.1"),
        make_node("n2", "10.0.0.2"),
        make_node("n3", "10.0.0.3", "fd00::3"),
    ]


def _addresses(settings: RoutingSettings, nodes: list[Node]) -> list[str]:
    return [p.address for p in bgp_peers.internal_peers(nodes, settings).peers]


def test_full_mesh() -> None:
    nodes = _cluster()
    settings = make_settings(nodes[0], "--bgp-port=1790", "--cluster-asn=65100")
    result = bgp_peers.internal_peers(nodes, settings)
    assert result.problems == ()
    assert result.peers == tuple(
        PeerSpec(ip, 65100, local_address="10.0.0.1", port=1790, families=(IPV4,), internal=True)
        for ip in ("10.0.0.2", "10.0.0.3")
    )


def test_no_ibgp_without_enable_ibgp() -> None:
    nodes = _cluster()
    assert _addresses(make_settings(nodes[0], "--enable-ibgp=false"), nodes) == []


def test_graceful_restart_on_ibgp_peers() -> None:
    nodes = _cluster()
    settings = make_settings(nodes[0], "--bgp-graceful-restart")
    for peer in bgp_peers.internal_peers(nodes, settings).peers:
        assert peer.graceful_restart == GracefulRestart(True, 90, 360, True)
        assert peer.hold_time == 0  # no hold time override for iBGP (upstream)
        assert peer.password == ""


@pytest.mark.parametrize(
    ("asns", "expected"),
    [
        # n1's ASN first; nodes of the same ASN peer, others (or unannotated ones) do not.
        (["65001", "65001", "65002", None], ["10.0.0.2"]),
        (["65001", "0xFDE9", "65001", "65001"], ["10.0.0.2", "10.0.0.3", "10.0.0.4"]),
        (["65001", "65002", None, "65003"], []),
    ],
)
def test_non_full_mesh_peers_by_node_asn(asns: list[str | None], expected: list[str]) -> None:
    nodes = [
        make_node(
            f"n{i}",
            f"10.0.0.{i}",
            annotations={} if asn is None else {"kube-router.io/node.asn": asn},
        )
        for i, asn in enumerate(asns, start=1)
    ]
    settings = make_settings(nodes[0], "--nodes-full-mesh=false")
    result = bgp_peers.internal_peers(nodes, settings)
    assert [p.address for p in result.peers] == expected
    assert {p.asn for p in result.peers} <= {int(asns[0] or "0", 0)}
    assert result.problems == ()


def test_non_full_mesh_bad_node_asn_is_a_problem_of_that_node() -> None:
    nodes = [
        make_node("n1", "10.0.0.1", annotations={"kube-router.io/node.asn": "65001"}),
        make_node("n2", "10.0.0.2", annotations={"kube-router.io/node.asn": "sixty"}),
        make_node("n3", "10.0.0.3", annotations={"kube-router.io/node.asn": "65001"}),
    ]
    result = bgp_peers.internal_peers(nodes, make_settings(nodes[0], "--nodes-full-mesh=false"))
    assert [p.address for p in result.peers] == ["10.0.0.3"]
    assert [(p.node, "sixty" in p.message) for p in result.problems] == [("n2", True)]


RR_SERVER = {"kube-router.io/rr.server": "42"}
RR_CLIENT = {"kube-router.io/rr.client": "42"}


def _rr_cluster() -> list[Node]:
    return [
        make_node("s1", "10.0.0.1", annotations=RR_SERVER),
        make_node("s2", "10.0.0.2", annotations=RR_SERVER),
        make_node("c1", "10.0.0.11", annotations=RR_CLIENT),
        make_node("c2", "10.0.0.12", annotations=RR_CLIENT),
        make_node("plain", "10.0.0.21"),
    ]


def test_route_reflector_server_peers_with_all_and_reflects_to_clients() -> None:
    nodes = _rr_cluster()
    peers = bgp_peers.internal_peers(nodes, make_settings(nodes[0])).peers
    assert [(p.address, p.rr_client, p.rr_cluster_id) for p in peers] == [
        ("10.0.0.2", False, ""),
        ("10.0.0.11", True, "0.0.0.42"),
        ("10.0.0.12", True, "0.0.0.42"),
        ("10.0.0.21", False, ""),
    ]


def test_route_reflector_client_peers_only_with_servers() -> None:
    nodes = _rr_cluster()
    peers = bgp_peers.internal_peers(nodes, make_settings(nodes[2])).peers
    assert [(p.address, p.rr_client) for p in peers] == [("10.0.0.1", False), ("10.0.0.2", False)]


@pytest.mark.parametrize(
    ("ours", "argv", "expected"),
    [
        # A dual-stack node offers the other node's families that it has itself.
        (("10.0.0.1", "fd00::1"), DUAL_ARGS, {"10.0.0.2": (IPV4,), "10.0.0.3": (IPV4, IPV6)}),
        (("10.0.0.1", "fd00::1"), (), {"10.0.0.2": (IPV4,), "10.0.0.3": (IPV4,)}),
    ],
)
def test_ibgp_families(
    ours: tuple[str, ...], argv: tuple[str, ...], expected: dict[str, tuple[str, ...]]
) -> None:
    nodes = [make_node("n1", *ours), *_cluster()[1:]]
    peers = bgp_peers.internal_peers(nodes, make_settings(nodes[0], *argv)).peers
    assert {p.address: p.families for p in peers} == expected


def test_ibgp_skips_nodes_of_another_primary_family_and_nodes_without_ips() -> None:
    nodes = [
        make_node("n1", "10.0.0.1", "fd00::1"),
        make_node("n2", "fd00::2", "10.0.0.2"),  # primary IPv6
        make_node("n3"),  # no address yet
        make_node("n4", "10.0.0.4"),
    ]
    result = bgp_peers.internal_peers(nodes, make_settings(nodes[0], *DUAL_ARGS))
    assert [p.address for p in result.peers] == ["10.0.0.4"]
    assert [p.node for p in result.problems] == ["n2", "n3"]


def test_ipv6_only_full_mesh() -> None:
    argv = ("--enable-ipv4=false", "--enable-ipv6", "--router-id=generate")
    nodes = [make_node(f"n{i}", f"fd00::{i}") for i in (1, 2, 3)]
    peers = bgp_peers.internal_peers(nodes, make_settings(nodes[0], *argv)).peers
    assert [(p.address, p.local_address, p.families) for p in peers] == [
        ("fd00::2", "fd00::1", (IPV6,)),
        ("fd00::3", "fd00::1", (IPV6,)),
    ]


def test_node_primary_ips() -> None:
    nodes = [*_cluster(), make_node("empty")]
    assert bgp_peers.node_primary_ips(nodes) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


# --- parsers under hypothesis ----------------------------------------------------------------


@given(st.text(max_size=200))
def test_peers_yaml_parser_never_raises(text: str) -> None:
    peers, errors, _ = bgp_peers.parse_peers_yaml(text)
    assert all(isinstance(e, str) for e in errors)
    assert all(p.address for p in peers)


_PEER = st.fixed_dictionaries(
    {
        "remoteip": st.ip_addresses().filter(lambda a: getattr(a, "ipv4_mapped", None) is None),
        "remoteasn": st.sampled_from([1, 23455, 23457, 64512, 65534, 131072, 4294967294]),
    },
    optional={
        "port": st.integers(1, 65535),
        "password": st.text(max_size=20),
        "localip": st.ip_addresses(),
    },
)


@given(st.lists(_PEER, max_size=5))
def test_valid_peers_yaml_round_trips(entries: list[dict[str, Any]]) -> None:
    docs = []
    for entry in entries:
        doc = {k: str(v) if k in ("remoteip", "localip") else v for k, v in entry.items()}
        if "password" in doc:
            doc["password"] = base64.b64encode(doc["password"].encode()).decode()
        docs.append(doc)
    peers, errors, bfd = bgp_peers.parse_peers_yaml(yaml.safe_dump(docs))
    assert errors == []
    assert not bfd
    assert [(p.address, p.asn, p.port, p.password) for p in peers] == [
        (str(e["remoteip"]), e["remoteasn"], e.get("port", 179), e.get("password", ""))
        for e in entries
    ]


@given(
    st.lists(st.text(alphabet="0123456789abcdef.:,x ", max_size=15), min_size=1, max_size=4),
    st.lists(st.text(alphabet="0123456789x, ", max_size=8), min_size=1, max_size=4),
)
def test_deprecated_parser_never_raises(ips: list[str], asns: list[str]) -> None:
    ann = {"kube-router.io/peer.ips": ",".join(ips), "kube-router.io/peer.asns": ",".join(asns)}
    peers, errors = bgp_peers.parse_deprecated(ann)
    assert len(peers) + len(errors) >= 1
