"""The lab cluster's pure parts: the underlay plan, CNI configuration handling, gobgpd's
configuration file and the parsers of the gobgp CLI's JSON (real outputs of gobgp 3.10)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_router_lab import cnipods, underlay
from kube_router_lab.bgprouter import (
    BgpRouterError,
    Neighbor,
    RibPath,
    gobgpd_toml,
    parse_neighbors,
    parse_rib,
)
from kube_router_lab.cluster import Cluster, ClusterSpec

# `gobgp global rib -j` as gobgp 3.10 prints it: a learned path, and a local one with MED,
# local preference, communities (one well-known) and a large community.
RIB_LEARNED = (
    '{"10.244.5.0/24":[{"nlri":{"prefix":"10.244.5.0/24"},"age":1795653976,"best":true,'
    '"attrs":[{"type":1,"value":2},{"type":2,"as_paths":[{"segment_type":2,"num":1,'
    '"asns":[64512]}]},{"type":3,"nexthop":"10.9.0.2"},{"type":8,"communities":[4227858532]}],'
    '"stale":false,"source-id":"10.9.0.2","neighbor-ip":"10.9.0.2"}]}'
)
RIB_LOCAL = (
    '{"10.1.0.0/24":[{"nlri":{"prefix":"10.1.0.0/24"},"age":1795654355,"best":true,'
    '"attrs":[{"type":1,"value":2},{"type":2,"as_paths":[{"segment_type":2,"num":2,'
    '"asns":[65001,65002]}]},{"type":4,"metric":10},{"type":5,"value":200},'
    '{"type":8,"communities":[4259840001,4294967041]},{"type":32,"value":[{"ASN":65000,'
    '"LocalData1":1,"LocalData2":2}]},{"type":3,"nexthop":"10.0.0.1"}],"stale":false}]}'
)
RIB_V6 = (
    '{"fd00:244:5::/64":[{"nlri":{"prefix":"fd00:244:5::/64"},"age":1795653998,"best":true,'
    '"attrs":[{"type":1,"value":2},{"type":2,"as_paths":[{"segment_type":2,"num":3,'
    '"asns":[64512,65001,65002]}]},{"type":14,"nexthop":"fd00::2","afi":2,"safi":1,'
    '"value":[{"prefix":"fd00:244:5::/64"}]}],"stale":false,"source-id":"10.9.0.2",'
    '"neighbor-ip":"10.9.0.2"}]}'
)
NEIGHBORS = (
    '[{"apply_policy":{},"conf":{"auth_password":"s3cret","local_asn":64000,'
    '"neighbor_address":"10.9.0.2","peer_asn":64512,"type":1},"state":{"neighbor_address":'
    '"10.9.0.2","peer_asn":64512,"type":1,"session_state":6}},{"conf":{"neighbor_address":'
    '"10.9.0.3","peer_asn":64513},"state":{"session_state":3}}]'
)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            RIB_LEARNED,
            RibPath(
                "10.244.5.0/24",
                "10.9.0.2",
                (64512,),
                ("64512:100",),
                neighbor="10.9.0.2",
                best=True,
                origin=2,
            ),
        ),
        (
            RIB_LOCAL,
            RibPath(
                "10.1.0.0/24",
                "10.0.0.1",
                (65001, 65002),
                ("65000:1", "65535:65281"),
                ("65000:1:2",),
                best=True,
                origin=2,
                med=10,
                local_pref=200,
            ),
        ),
        (
            RIB_V6,
            RibPath(
                "fd00:244:5::/64",
                "fd00::2",
                (64512, 65001, 65002),
                neighbor="10.9.0.2",
                best=True,
                origin=2,
            ),
        ),
        ("{}", None),
        ("", None),
    ],
)
def test_parse_rib_reads_gobgp_json(text: str, want: RibPath | None) -> None:
    assert parse_rib(text) == ([want] if want else [])


@pytest.mark.parametrize("text", ["[", '{"a": 1}', '{"a": [{"attrs": [{"type": 4}]}]}', "[]"])
def test_parse_rib_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(BgpRouterError, match="unreadable RIB"):
        parse_rib(text)


def test_parse_neighbors_reads_states_and_drops_passwords() -> None:
    states = parse_neighbors(NEIGHBORS)
    assert [(s.address, s.asn, s.state, s.established) for s in states] == [
        ("10.9.0.2", 64512, "established", True),
        ("10.9.0.3", 64513, "active", False),
    ]
    assert "s3cret" not in repr(states)
    assert parse_neighbors("[]") == []


@given(
    password=st.text(min_size=1, max_size=40),
    asn=st.integers(1, 2**32 - 1),
    ttl=st.none() | st.integers(1, 255),
    passive=st.booleans(),
)
def test_gobgpd_toml_is_valid_toml_with_what_was_asked(
    password: str, asn: int, ttl: int | None, passive: bool
) -> None:
    n = Neighbor("10.77.0.11", asn, password, ttl, passive, ("ipv4-unicast", "ipv6-unicast"), 9)
    conf = tomllib.loads(gobgpd_toml(64999, "10.77.0.250", [n, Neighbor("10.77.1.11", 64512)]))
    assert conf["global"]["config"] == {"as": 64999, "router-id": "10.77.0.250", "port": 179}
    first, second = conf["neighbors"]
    assert first["config"] == {
        "neighbor-address": "10.77.0.11",
        "peer-as": asn,
        "auth-password": password,
    }
    assert first["timers"]["config"] == {
        "connect-retry": 1,
        "hold-time": 9,
        "keepalive-interval": 3,
    }
    assert [a["config"]["afi-safi-name"] for a in first["afi-safis"]] == [
        "ipv4-unicast",
        "ipv6-unicast",
    ]
    assert ("transport" in first) == passive
    if ttl is not None:
        assert first["ebgp-multihop"]["config"] == {"enabled": True, "multihop-ttl": ttl}
    assert "auth-password" not in second["config"]


def test_a_neighbors_repr_hides_its_password() -> None:
    assert "hunter2" not in repr(Neighbor("10.0.0.1", 1, "hunter2"))


# -- CNI -------------------------------------------------------------------------------------


def test_default_conflist_is_upstreams_with_one_range_per_cidr() -> None:
    conf = cnipods.default_conflist(["10.244.1.0/24", "fd00:244:1::/64"], mtu=1450)
    bridge = conf["plugins"][0]
    assert (conf["name"], conf["cniVersion"], bridge["bridge"]) == ("mynet", "0.3.0", "kube-bridge")
    assert bridge["isDefaultGateway"] and bridge["hairpinMode"]
    assert bridge["ipam"]["ranges"] == [
        [{"subnet": "10.244.1.0/24"}],
        [{"subnet": "fd00:244:1::/64"}],
    ]
    assert bridge["mtu"] == 1450
    assert cnipods.has_ranges(conf)
    assert not cnipods.has_ranges(cnipods.default_conflist())


@pytest.mark.parametrize(
    ("conf", "want"),
    [
        ({"cniVersion": "0.3.1", "name": "n", "type": "bridge"}, [("n", "0.3.1", "bridge")]),
        (
            {
                "cniVersion": "1.0.0",
                "name": "l",
                "plugins": [{"type": "bridge"}, {"type": "portmap"}],
            },
            [("l", "1.0.0", "bridge"), ("l", "1.0.0", "portmap")],
        ),
    ],
)
def test_plugin_confs_gives_each_plugin_the_lists_name_and_version(
    conf: dict[str, Any], want: list[tuple[str, str, str]]
) -> None:
    got = [(p["name"], p["cniVersion"], p["type"]) for p in cnipods.plugin_confs(conf)]
    assert got == want


def test_plugin_confs_refuses_an_empty_list() -> None:
    with pytest.raises(cnipods.CniError, match="no plugins"):
        cnipods.plugin_confs({"name": "x", "plugins": []})


@pytest.mark.parametrize(
    ("ipam", "want"),
    [
        ({"type": "host-local"}, "/n1/ipam"),
        ({"type": "host-local", "dataDir": "/elsewhere"}, "/elsewhere"),
        ({"type": "dhcp"}, None),
    ],
)
def test_host_local_state_goes_to_the_nodes_directory(
    ipam: dict[str, str], want: str | None
) -> None:
    plugin = cnipods.with_data_dir({"type": "bridge", "ipam": ipam}, Path("/n1/ipam"))
    assert plugin["ipam"].get("dataDir") == want


@pytest.mark.parametrize(
    ("ips", "want"),
    [
        (
            [{"version": "6", "address": "fd00::2/64"}, {"version": "4", "address": "10.0.0.2/24"}],
            ("10.0.0.2", "fd00::2"),
        ),
        ([{"address": "10.0.0.3/24"}], ("10.0.0.3",)),
    ],
)
def test_result_ips_puts_ipv4_first(ips: list[dict[str, str]], want: tuple[str, ...]) -> None:
    assert cnipods.result_ips({"cniVersion": "1.0.0", "ips": ips}) == want


def test_a_result_without_addresses_is_an_error() -> None:
    with pytest.raises(cnipods.CniError, match="no IP addresses"):
        cnipods.result_ips({"ips": []})


async def test_wait_conf_names_the_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "10-kuberouter.conflist"
    with pytest.raises(cnipods.CniConfTimeout, match=f"{path} does not exist after 0.1 s"):
        await cnipods.wait_conf(path, 0.1)
    path.write_text("{")
    with pytest.raises(cnipods.CniConfTimeout, match="not valid JSON"):
        await cnipods.wait_conf(path, 0.1)
    path.write_text(json.dumps(cnipods.default_conflist(["10.244.1.0/24"])))
    assert cnipods.has_ranges(await cnipods.wait_conf(path, 0.1))


# -- plans -----------------------------------------------------------------------------------


def test_two_subnets_split_the_nodes_and_route_through_the_router() -> None:
    u = underlay.plan(underlay.UnderlaySpec("kx", nodes=5, two_subnets=True, ipv6=True))
    assert [(h.name, h.ip, h.gateway) for h in u.nodes] == [
        ("node1", "10.77.0.11", "10.77.0.1"),
        ("node2", "10.77.0.12", "10.77.0.1"),
        ("node3", "10.77.0.13", "10.77.0.1"),
        ("node4", "10.77.1.14", "10.77.1.1"),
        ("node5", "10.77.1.15", "10.77.1.1"),
    ]
    assert (u.api_ip, u.router, u.bridges) == ("10.77.0.2", "kx-router", ("br-a", "br-b"))
    assert (u.nodes[3].ip6, u.nodes[3].gateway6) == ("fd00:77:1::e", "fd00:77:1::1")
    assert u.plan_host("ext", 250).ip == "10.77.0.250"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (underlay.UnderlaySpec("kx", nodes=0), "at least one node"),
        (underlay.UnderlaySpec("kx", nodes=2, two_subnets=True, split=2), "without nodes"),
        (underlay.UnderlaySpec("kx", nodes=300), "do not fit"),
    ],
)
def test_impossible_plans_are_refused(spec: underlay.UnderlaySpec, match: str) -> None:
    with pytest.raises(underlay.UnderlayError, match=match):
        underlay.plan(spec)


def test_cluster_nodes_get_pod_cidrs_paths_and_an_agent_environment(tmp_path: Path) -> None:
    c = Cluster(ClusterSpec("kx", nodes=2, ipv6=True), tmp_path)
    node = c.node("node2")
    assert node.pod_cidrs == ("10.244.2.0/24", "fd00:244:2::/64")
    assert node.env() == {
        "NODE_NAME": "node2",
        "KUBE_ROUTER_CNI_CONF_FILE": str(tmp_path / "node2" / "cni" / "10-kuberouter.conflist"),
    }
    assert node.ipam_dir != c.node("node1").ipam_dir
    assert c.server.host == "10.77.0.1"
    obj = c.node_object(node)
    assert obj["spec"]["podCIDRs"] == list(node.pod_cidrs)
    assert [a["address"] for a in obj["status"]["addresses"]] == [
        "10.77.0.12",
        "fd00:77::c",
        "node2",
    ]
