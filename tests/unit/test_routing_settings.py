"""RoutingSettings: ASN, router ID, listen addresses, graceful restart, route reflector, node
annotations (prepend, communities, custom import reject, pod CIDRs) and the BFD warning."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from routing_builders import make_node, make_settings

from kube_router.bgp.model import IPV4, IPV6, GlobalSpec, GracefulRestart
from kube_router.controllers.routing.compile.settings import (
    PathPrepend,
    SettingsError,
    bfd_warning,
    custom_import_reject,
    local_pod_cidrs,
    router_id,
)

V4 = ("10.0.0.1",)
DUAL = ("10.0.0.1", "fd00::1")
V6_FIRST = ("fd00::1", "10.0.0.1")


@pytest.mark.parametrize(
    ("annotations", "argv", "asn"),
    [
        ({}, (), 64512),
        ({}, ("--cluster-asn=65000",), 65000),
        ({"kube-router.io/node.asn": "65001"}, (), 64512),  # full mesh ignores node.asn
        ({"kube-router.io/node.asn": "65001"}, ("--nodes-full-mesh=false",), 65001),
        ({"kube-router.io/node.asn": "0x10000"}, ("--nodes-full-mesh=false",), 65536),
        ({"kube-router.io/node.asn": " 4200000000 "}, ("--nodes-full-mesh=false",), 4200000000),
    ],
)
def test_asn(annotations: dict[str, str], argv: tuple[str, ...], asn: int) -> None:
    settings = make_settings(make_node("n1", *V4, annotations=annotations), *argv)
    assert settings.asn == asn
    assert settings.global_spec().asn == asn


@pytest.mark.parametrize("value", [None, "", "abc", "0", "4294967296", "-1"])
def test_bad_or_missing_node_asn_is_fatal_and_names_the_node(value: str | None) -> None:
    annotations = {} if value is None else {"kube-router.io/node.asn": value}
    with pytest.raises(SettingsError, match="node n1"):
        make_settings(make_node("n1", *V4, annotations=annotations), "--nodes-full-mesh=false")


@pytest.mark.parametrize(
    ("ips", "argv", "expected"),
    [
        (V4, (), "10.0.0.1"),
        (V4, ("--router-id=1.2.3.4",), "1.2.3.4"),
        (V4, ("--router-id=generate",), router_id("generate", "10.0.0.1")),
        (V6_FIRST, ("--enable-ipv6", "--router-id=9.9.9.9"), "9.9.9.9"),
        (V6_FIRST, ("--enable-ipv6", "--router-id=generate"), router_id("generate", "fd00::1")),
    ],
)
def test_router_id(ips: tuple[str, ...], argv: tuple[str, ...], expected: str) -> None:
    assert make_settings(make_node("n1", *ips), *argv).router_id == expected


def test_router_id_is_required_with_an_ipv6_primary_ip() -> None:
    with pytest.raises(SettingsError, match="--router-id"):
        make_settings(make_node("n1", *V6_FIRST), "--enable-ipv6")


def _fnv1a_of_go_ip(text: str) -> str:
    """Reference: FNV-1a 32 over Go's 16-byte net.IP (IPv4 as ::ffff:a.b.c.d)."""
    address = ipaddress.ip_address(text)
    data = (ipaddress.IPv6Address(f"::ffff:{address}") if address.version == 4 else address).packed
    value = 2166136261
    for byte in data:
        value = ((value ^ byte) * 16777619) % 2**32
    return ".".join(str(b) for b in value.to_bytes(4, "big"))


@pytest.mark.parametrize(
    ("primary", "expected"),
    [("10.0.0.1", "0.15.248.254"), ("192.168.1.10", "47.29.204.12"), ("fd00::1", "148.2.92.203")],
)
def test_generated_router_id_is_stable(primary: str, expected: str) -> None:
    assert router_id("generate", primary) == expected == _fnv1a_of_go_ip(primary)


@given(st.ip_addresses())
def test_generated_router_id_is_always_an_ipv4_address(address: object) -> None:
    generated = ipaddress.ip_address(router_id("generate", str(address)))
    assert generated.version == 4


@pytest.mark.parametrize(
    ("ips", "argv", "annotation", "listen", "problems"),
    [
        (V4, (), None, ("10.0.0.1",), 0),
        (DUAL, ("--enable-ipv6",), None, ("10.0.0.1", "fd00::1"), 0),
        (DUAL, (), None, ("10.0.0.1",), 0),  # IPv6 not enabled: not listened on
        (V4, (), "10.0.0.1, 10.0.0.9", ("10.0.0.1", "10.0.0.9"), 0),
        (V4, (), "10.0.0.1,fd00::9", ("10.0.0.1",), 1),  # v6 not enabled here
        (DUAL, ("--enable-ipv6",), "10.0.0.1", ("10.0.0.1",), 1),  # no v6 listener: warned
    ],
)
def test_listen_addresses(
    ips: tuple[str, ...],
    argv: tuple[str, ...],
    annotation: str | None,
    listen: tuple[str, ...],
    problems: int,
) -> None:
    annotations = {} if annotation is None else {"kube-router.io/bgp-local-addresses": annotation}
    settings = make_settings(make_node("n1", *ips, annotations=annotations), *argv)
    assert settings.listen_addresses == listen
    assert len(settings.problems) == problems
    assert all(p.node == "n1" for p in settings.problems)


def test_bad_local_address_is_fatal() -> None:
    node = make_node("n1", *V4, annotations={"kube-router.io/bgp-local-addresses": "10.0.0.300"})
    with pytest.raises(SettingsError, match="bgp-local-addresses"):
        make_settings(node)


def test_families_and_next_hops() -> None:
    dual = make_settings(make_node("n1", *DUAL), "--enable-ipv6")
    assert dual.families == (IPV4, IPV6)
    assert dict(dual.next_hops) == {IPV4: "10.0.0.1", IPV6: "fd00::1"}
    v6only = make_settings(
        make_node("n1", *V6_FIRST), "--enable-ipv4=false", "--enable-ipv6", "--router-id=1.1.1.1"
    )
    assert v6only.families == (IPV6,)
    assert v6only.primary_ip == "fd00::1"


def test_global_spec_from_flags() -> None:
    settings = make_settings(
        make_node("n1", *V4),
        "--bgp-port=1790",
        "--bgp-graceful-restart",
        "--bgp-graceful-restart-time=2m0s",
        "--bgp-graceful-restart-deferral-time=5m0s",
    )
    assert settings.global_spec() == GlobalSpec(
        asn=64512,
        router_id="10.0.0.1",
        listen_port=1790,
        listen_addresses=("10.0.0.1",),
        graceful_restart=GracefulRestart(True, 120, 300, True),
    )
    assert settings.bgp_port == 1790


@pytest.mark.parametrize(
    ("argv", "hold", "ttl", "gr"),
    [
        ((), 90, 0, GracefulRestart()),
        (("--bgp-holdtime=30s", "--peer-router-multihop-ttl=1"), 30, 0, GracefulRestart()),
        (("--bgp-holdtime=4m30.5s", "--peer-router-multihop-ttl=5"), 270, 5, GracefulRestart()),
        (("--bgp-graceful-restart",), 90, 0, GracefulRestart(True, 90, 360, True)),
    ],
)
def test_timers(argv: tuple[str, ...], hold: int, ttl: int, gr: GracefulRestart) -> None:
    settings = make_settings(make_node("n1", *V4), *argv)
    assert (settings.hold_time, settings.multihop_ttl, settings.graceful_restart) == (hold, ttl, gr)


@pytest.mark.parametrize(
    ("annotations", "server", "client", "cluster_id"),
    [
        ({}, False, False, ""),
        ({"kube-router.io/rr.server": "42"}, True, False, "0.0.0.42"),
        ({"kube-router.io/rr.server": "10.0.0.100"}, True, False, "10.0.0.100"),
        ({"kube-router.io/rr.server": "0x10"}, True, False, "0.0.0.16"),
        ({"kube-router.io/rr.server": "4294967295"}, True, False, "255.255.255.255"),
        ({"kube-router.io/rr.client": "42"}, False, True, "0.0.0.42"),
        (
            {"kube-router.io/rr.client": "1", "kube-router.io/rr.server": "2"},
            True,
            False,
            "0.0.0.2",
        ),
    ],
)
def test_route_reflector(
    annotations: dict[str, str], server: bool, client: bool, cluster_id: str
) -> None:
    settings = make_settings(make_node("n1", *V4, annotations=annotations))
    assert (settings.rr_server, settings.rr_client, settings.rr_cluster_id) == (
        server,
        client,
        cluster_id,
    )


@pytest.mark.parametrize("value", ["fd00::1", "abc", "4294967296", ""])
def test_bad_cluster_id_is_fatal(value: str) -> None:
    node = make_node("n1", *V4, annotations={"kube-router.io/rr.client": value})
    with pytest.raises(SettingsError, match=r"rr\.client"):
        make_settings(node)


PREPEND_AS = "kube-router.io/path-prepend.as"
PREPEND_N = "kube-router.io/path-prepend.repeat-n"


@pytest.mark.parametrize(
    ("annotations", "prepend", "problems"),
    [
        ({}, None, 0),
        ({PREPEND_AS: "65000", PREPEND_N: "3"}, PathPrepend(65000, 3), 0),
        ({PREPEND_AS: "0x10000", PREPEND_N: "0"}, PathPrepend(65536, 0), 0),
        ({PREPEND_AS: "65000"}, None, 1),
        ({PREPEND_N: "2"}, None, 1),
        ({PREPEND_AS: "65000", PREPEND_N: "256"}, None, 1),
        ({PREPEND_AS: "as65000", PREPEND_N: "2"}, None, 1),
    ],
)
def test_path_prepend(
    annotations: dict[str, str], prepend: PathPrepend | None, problems: int
) -> None:
    settings = make_settings(make_node("n1", *V4, annotations=annotations))
    assert settings.path_prepend == prepend
    assert len(settings.problems) == problems


def test_node_annotations_with_bad_entries_keep_the_good_ones() -> None:
    node = make_node(
        "n1",
        *V4,
        annotations={
            "kube-router.io/node.bgp.communities": "64512:10,not-a-community,no-export",
            "kube-router.io/node.bgp.customimportreject": "10.1.0.0/16, 10.2.0.0/33,2001:db8::/32",
            "kube-router.io/pod-cidrs": "10.244.1.0/24,oops",
        },
    )
    settings = make_settings(node)
    assert settings.communities == ("64512:10", "no-export")
    assert settings.custom_import_reject == ("10.1.0.0/16", "2001:db8::/32")
    assert settings.pod_cidrs == ("10.244.1.0/24",)
    messages = [str(p) for p in settings.problems]
    assert len(messages) == 3
    assert all(m.startswith("node n1: ") for m in messages)
    assert any("not-a-community" in m for m in messages)
    assert any("10.2.0.0/33" in m for m in messages)
    assert any("oops" in m for m in messages)


@pytest.mark.parametrize(
    ("annotations", "pod_cidrs", "expected"),
    [
        ({}, ["10.244.1.0/24", "fd00:244:1::/64"], ("10.244.1.0/24", "fd00:244:1::/64")),
        ({"kube-router.io/pod-cidrs": "10.5.0.0/24"}, ["10.244.1.0/24"], ("10.5.0.0/24",)),
        ({"kube-router.io/pod-cidr": "10.5.0.0/24"}, ["10.244.1.0/24"], ("10.244.1.0/24",)),
        ({}, [], ()),
        ({"kube-router.io/pod-cidrs": "10.5.0.1/24"}, [], ("10.5.0.0/24",)),  # host bits
    ],
)
def test_local_pod_cidrs(
    annotations: dict[str, str], pod_cidrs: list[str], expected: tuple[str, ...]
) -> None:
    node = make_node("n1", *V4, annotations=annotations, pod_cidrs=pod_cidrs)
    assert local_pod_cidrs(node) == (expected, [])


@given(st.lists(st.ip_addresses().map(str) | st.text(max_size=12), max_size=6))
def test_custom_import_reject_parser_never_raises(entries: list[str]) -> None:
    text = ",".join(e.replace(",", "") for e in entries)
    good, errors = custom_import_reject(text)
    for cidr in good:
        ipaddress.ip_network(cidr)  # canonical networks only
    assert len(good) + len(errors) <= len(entries)


@given(
    st.ip_addresses().filter(lambda a: getattr(a, "ipv4_mapped", None) is None),
    st.integers(0, 128),
)
def test_custom_import_reject_keeps_any_network(address: object, length: int) -> None:
    ip = ipaddress.ip_address(str(address))
    length = min(length, ip.max_prefixlen)
    network = ipaddress.ip_network(f"{ip}/{length}", strict=False)
    assert custom_import_reject(f"{ip}/{length}") == ((str(network),), [])


@pytest.mark.parametrize(
    ("argv", "peers_ask", "expected"),
    [
        ((), False, None),
        (("--enable-bfd",), False, "--enable-bfd"),
        ((), True, "kube-router.io/peers"),
        (("--enable-bfd",), True, "--enable-bfd and kube-router.io/peers"),
    ],
)
def test_bfd_warning(argv: tuple[str, ...], peers_ask: bool, expected: str | None) -> None:
    warning = bfd_warning(make_settings(make_node("n1", *V4), *argv), peers_ask)
    if expected is None:
        assert warning is None
    else:
        assert warning is not None
        assert f"({expected})" in warning
        assert "gobgpd 3.10" in warning
