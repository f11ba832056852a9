"""Advertisements: pod CIDRs and service VIPs per flag and annotation, external-IP validation,
traffic-policy gating by local endpoints, IPv6 and dual-stack, and the VIP table."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from routing_builders import make_node, make_service, make_settings, make_slice

from kube_router.bgp.model import PathSpec
from kube_router.controllers.routing.compile.advertise import (
    VipTable,
    has_local_endpoint,
    originated_paths,
    pod_cidr_paths,
    service_vips,
    vip_paths,
)
from kube_router.controllers.routing.compile.settings import RoutingSettings
from kube_router.controllers.shared.services import Ranges

RANGES = Ranges.parse(
    True, ["10.96.0.0/12", "fd00:96::/108"], ["203.0.113.0/24"], ["198.51.100.0/24"]
)
LOOSE = Ranges.parse(False, ["10.96.0.0/12"], [], [])
CIP = "10.96.0.10"
EXT = "203.0.113.5"
LB = "198.51.100.7"
ALL_ON = ("--advertise-cluster-ip", "--advertise-external-ip", "--advertise-loadbalancer-ip")
ANN = "kube-router.io/service.advertise."
LOCAL_SLICE = make_slice(("10.244.1.5", "n1"))
REMOTE_SLICE = make_slice(("10.244.2.5", "n2"))


def _settings(*argv: str, dual: bool = False) -> RoutingSettings:
    ips = ("10.0.0.1", "fd00::1") if dual else ("10.0.0.1", "192.168.5.1")
    extra = ("--enable-ipv6",) if dual else ()
    node = make_node("n1", *ips, pod_cidrs=["10.244.1.0/24", "fd00:244:1::/64"])
    return make_settings(node, *extra, *argv)


LB_SPEC = {"type": "LoadBalancer"}
LB_INGRESS = [{"ip": LB}]

# (id, flags, spec, annotations, ingress, slices, advertised, withheld, errors)
Case = tuple[
    str, tuple[str, ...], dict[str, Any], dict[str, str], Any, Any, set[str], set[str], int
]
CASES: list[Case] = [
    ("defaults advertise nothing", (), {}, {}, None, [], set(), {CIP}, 0),
    ("cluster IP by flag", ("--advertise-cluster-ip",), {}, {}, None, [], {CIP}, set(), 0),
    ("cluster IP by annotation", (), {}, {ANN + "clusterip": "true"}, None, [], {CIP}, set(), 0),
    ("annotation 1 is true", (), {}, {ANN + "clusterip": "1"}, None, [], {CIP}, set(), 0),
    ("annotation false wins", ALL_ON, {}, {ANN + "clusterip": "false"}, None, [], set(), {CIP}, 0),
    ("bad annotation is false", ALL_ON, {}, {ANN + "clusterip": "yes"}, None, [], set(), {CIP}, 0),
    ("NodePort", ALL_ON, {"type": "NodePort"}, {}, None, [], {CIP}, set(), 0),
    ("headless", ALL_ON, {"clusterIP": "None", "clusterIPs": ["None"], "externalIPs": [EXT]},
     {}, None, [], set(), set(), 0),
    ("ExternalName", ALL_ON, {"type": "ExternalName", "clusterIP": "", "clusterIPs": []},
     {}, None, [], set(), set(), 0),
    ("external IPs validated", ALL_ON, {"externalIPs": [EXT, "192.0.2.1", "10.96.0.99"]}, {},
     None, [], {CIP, EXT}, set(), 2),
    ("external IPs withheld by flag", ("--advertise-cluster-ip",), {"externalIPs": [EXT]}, {},
     None, [], {CIP}, {EXT}, 0),
    ("external IP by annotation", (), {"externalIPs": [EXT]}, {ANN + "externalip": "true"}, None,
     [], {EXT}, {CIP}, 0),
    ("LB IP", ALL_ON, LB_SPEC, {}, LB_INGRESS, [], {CIP, LB}, set(), 0),
    ("LB IP outside its range", ALL_ON, LB_SPEC, {}, [{"ip": "192.0.2.9"}], [], {CIP}, set(), 1),
    ("LB IP with ipMode Proxy", ALL_ON, LB_SPEC, {}, [{"ip": LB, "ipMode": "Proxy"}], [], {CIP},
     set(), 0),
    ("LB hostname only", ALL_ON, LB_SPEC, {}, [{"hostname": "lb.example"}], [], {CIP}, set(), 0),
    ("LB IP of a ClusterIP service", ALL_ON, {}, {}, LB_INGRESS, [], {CIP}, set(), 0),
    ("skiplbips", ALL_ON, LB_SPEC, {"kube-router.io/service.skiplbips": ""}, LB_INGRESS, [],
     {CIP}, {LB}, 0),
    ("LB IP by annotation", (), LB_SPEC, {ANN + "loadbalancerip": "true"}, LB_INGRESS, [], {LB},
     {CIP}, 0),
    ("iTP Local without local endpoint", ALL_ON, {"internalTrafficPolicy": "Local",
     "externalIPs": [EXT]}, {}, None, [REMOTE_SLICE], {EXT}, {CIP}, 0),
    ("iTP Local with local endpoint", ALL_ON, {"internalTrafficPolicy": "Local"}, {}, None,
     [REMOTE_SLICE, LOCAL_SLICE], {CIP}, set(), 0),
    ("iTP Local without any slice", ALL_ON, {"internalTrafficPolicy": "Local"}, {}, None, [],
     set(), {CIP}, 0),
    ("eTP Local without local endpoint", ALL_ON, {"type": "LoadBalancer",
     "externalTrafficPolicy": "Local", "externalIPs": [EXT]}, {}, LB_INGRESS, [REMOTE_SLICE],
     {CIP}, {EXT, LB}, 0),
    ("eTP Local with local endpoint", ALL_ON, {"type": "LoadBalancer",
     "externalTrafficPolicy": "Local", "externalIPs": [EXT]}, {}, LB_INGRESS, [LOCAL_SLICE],
     {CIP, EXT, LB}, set(), 0),
    ("service.local true", ALL_ON, {"externalIPs": [EXT]}, {"kube-router.io/service.local": "true"},
     None, [REMOTE_SLICE], {CIP}, {EXT}, 0),
    ("service.local other value", ALL_ON, {"externalIPs": [EXT]},
     {"kube-router.io/service.local": "True"}, None, [REMOTE_SLICE], {CIP, EXT}, set(), 0),
    ("local by node IP without nodeName", ALL_ON, {"internalTrafficPolicy": "Local"}, {}, None,
     [make_slice(("192.168.5.1", None))], {CIP}, set(), 0),
    ("leader-election slice ignored", ALL_ON, {"internalTrafficPolicy": "Local"}, {}, None,
     [make_slice(("10.244.1.5", "n1"),
                 annotations={"control-plane.alpha.kubernetes.io/leader": "{}"})],
     set(), {CIP}, 0),
    ("IPv6 VIP on an IPv4 node", ALL_ON, {"clusterIPs": [CIP, "fd00:96::10"]}, {}, None, [],
     {CIP}, set(), 0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "spec", "annotations", "ingress", "slices", "advertised", "withheld", "errors"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_service_vips(
    flags: tuple[str, ...],
    spec: dict[str, Any],
    annotations: dict[str, str],
    ingress: list[dict[str, str]] | None,
    slices: list[Any],
    advertised: set[str],
    withheld: set[str],
    errors: int,
) -> None:
    service = make_service(spec, annotations, ingress)
    vips = service_vips(service, slices, _settings(*flags), RANGES)
    assert set(vips.advertise) == advertised
    assert set(vips.withheld) == withheld
    assert len(vips.errors) == errors


def test_loose_validation_accepts_any_external_ip() -> None:
    service = make_service({"externalIPs": ["192.0.2.1", "10.96.0.99"]})
    vips = service_vips(service, [], _settings(*ALL_ON), LOOSE)
    assert set(vips.advertise) == {CIP, "192.0.2.1", "10.96.0.99"}
    assert vips.errors == ()


def test_dual_stack_service_on_a_dual_stack_node() -> None:
    service = make_service(
        {"clusterIPs": [CIP, "fd00:96::10"], "externalIPs": [EXT, "2001:db8:0:0::5"]}
    )
    ranges = Ranges.parse(
        True, ["10.96.0.0/12", "fd00:96::/108"], ["203.0.113.0/24", "2001:db8::/64"], []
    )
    settings = _settings(*ALL_ON, dual=True)
    vips = service_vips(service, [], settings, ranges)
    assert set(vips.advertise) == {CIP, "fd00:96::10", EXT, "2001:db8::5"}
    assert vip_paths(vips.advertise, settings) == {
        PathSpec(f"{CIP}/32", "10.0.0.1"),
        PathSpec("fd00:96::10/128", "fd00::1"),
        PathSpec(f"{EXT}/32", "10.0.0.1"),
        PathSpec("2001:db8::5/128", "fd00::1"),
    }


@pytest.mark.parametrize(
    ("dual", "expected"),
    [
        (False, {PathSpec("10.244.1.0/24", "10.0.0.1")}),
        (
            True,
            {PathSpec("10.244.1.0/24", "10.0.0.1"), PathSpec("fd00:244:1::/64", "fd00::1")},
        ),
    ],
)
def test_pod_cidr_paths(dual: bool, expected: set[PathSpec]) -> None:
    assert pod_cidr_paths(_settings(dual=dual)) == expected


def test_originated_paths_are_pod_cidrs_and_vips() -> None:
    settings = _settings()
    paths = originated_paths(settings, [CIP, "fd00:96::10"])
    assert paths == frozenset(
        {PathSpec("10.244.1.0/24", "10.0.0.1"), PathSpec(f"{CIP}/32", "10.0.0.1")}
    )
    assert {p.family for p in paths} == {"ipv4"}


def test_ipv6_only_node_paths() -> None:
    node = make_node("n1", "fd00::1", pod_cidrs=["fd00:244:1::/64"])
    settings = make_settings(node, "--enable-ipv4=false", "--enable-ipv6", "--router-id=generate")
    assert originated_paths(settings, ["fd00:96::10", CIP]) == frozenset(
        {PathSpec("fd00:244:1::/64", "fd00::1"), PathSpec("fd00:96::10/128", "fd00::1")}
    )


def test_has_local_endpoint() -> None:
    ips = frozenset({"10.0.0.1"})
    assert has_local_endpoint([LOCAL_SLICE], "n1", ips)
    assert not has_local_endpoint([REMOTE_SLICE], "n1", ips)
    # nodeName set to another node: the address is not looked at (upstream's rule)
    assert not has_local_endpoint([make_slice(("10.0.0.1", "n2"))], "n1", ips)
    assert has_local_endpoint([make_slice(("10.0.0.1", None))], "n1", ips)
    assert not has_local_endpoint([], "n1", ips)


def test_vip_table_keeps_a_shared_vip_while_any_service_advertises_it() -> None:
    table = VipTable()
    assert table.update("x/a", frozenset({"10.96.0.1", "203.0.113.5"}))
    assert table.update("x/b", frozenset({"203.0.113.5", "10.96.0.2"}))
    assert not table.update("x/b", frozenset({"203.0.113.5", "10.96.0.2"}))
    assert table.vips() == {"10.96.0.1", "10.96.0.2", "203.0.113.5"}
    assert table.remove("x/a")  # 10.96.0.1 goes; 203.0.113.5 stays for x/b
    assert table.vips() == {"10.96.0.2", "203.0.113.5"}
    assert not table.update("x/c", frozenset({"203.0.113.5"}))  # already in the union
    assert table.remove("x/b")
    assert table.vips() == {"203.0.113.5"}
    assert not table.remove("x/missing")
    assert table.remove("x/c")
    assert table.vips() == frozenset()


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.frozensets(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"])),
        ),
        max_size=20,
    )
)
def test_vip_table_is_the_union(updates: list[tuple[str, frozenset[str]]]) -> None:
    table, model = VipTable(), {}
    for key, vips in updates:
        before = table.vips()
        changed = table.update(key, vips)
        model[key] = vips
        union = frozenset().union(*model.values())
        assert table.vips() == union
        assert changed == (before != union)
