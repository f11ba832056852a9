"""The service proxy's desired IPVS state: traffic policies, dual-stack, affinity, schedulers,
validation of external addresses, endpoint conditions and clashes."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from kube_router.controllers.proxy.compile import NodeAddresses, Settings, merge, plan_service
from kube_router.controllers.proxy.endpoints import service_endpoints
from kube_router.controllers.shared.services import Ranges
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs import ServiceKey
from kube_router.k8s.informers import slice_service
from kube_router.k8s.models import EndpointSlice, Service

NODE = "n1"
NODE_ADDRS = NodeAddresses(
    {"ipv4": "192.168.1.10", "ipv6": "fd00::10"},
    {"ipv4": ("192.168.1.10", "10.0.0.10"), "ipv6": ("fd00::10",)},
)
RANGES = Ranges.parse(
    True, ["10.96.0.0/12", "fd00:96::/108"], ["203.0.113.0/24"], ["198.51.100.0/24"]
)
BOTH = Settings(("ipv4", "ipv6"), ranges=RANGES)


def service(
    spec: dict[str, Any] | None = None, meta: dict[str, Any] | None = None, **status: Any
) -> Service:
    body: dict[str, Any] = {
        "metadata": {"name": "web", "namespace": "x", **(meta or {})},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}],
            **(spec or {}),
        },
        "status": status or {},
    }
    return msgspec.convert(body, Service)


def endpoint_slice(*eps: tuple[str, str, dict[str, Any]], family: str = "IPv4") -> EndpointSlice:
    return msgspec.convert(
        {
            "metadata": {
                "name": "web-abc",
                "namespace": "x",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "addressType": family,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": [ip], "nodeName": node, "conditions": cond} for ip, node, cond in eps
            ],
        },
        EndpointSlice,
    )


LOCAL_EP = ("10.244.1.5", NODE, {"ready": True})
REMOTE_EP = ("10.244.2.7", "n2", {"ready": True})


def dests_by_vip(
    svc: Service, slices: list[EndpointSlice], settings: Settings = BOTH
) -> dict[str, set[str]]:
    plan = plan_service(svc, service_endpoints(slices, NODE), NODE_ADDRS, settings)
    return {f"{k.address}:{k.port}": {a for a, _ in vs.dests} for k, vs in plan.virtual.items()}


@pytest.mark.parametrize(
    ("spec", "annotations", "slices", "want"),
    [
        ({}, {}, [LOCAL_EP, REMOTE_EP], {"10.96.0.10:80": {"10.244.1.5", "10.244.2.7"}}),
        (
            {"internalTrafficPolicy": "Local"},
            {},
            [LOCAL_EP, REMOTE_EP],
            {"10.96.0.10:80": {"10.244.1.5"}},
        ),
        ({"internalTrafficPolicy": "Local"}, {}, [REMOTE_EP], {}),
        (
            {"type": "NodePort"},
            {},
            [LOCAL_EP, REMOTE_EP],
            {
                "10.96.0.10:80": {"10.244.1.5", "10.244.2.7"},
                "192.168.1.10:30080": {"10.244.1.5", "10.244.2.7"},
            },
        ),
        (
            {"type": "NodePort", "externalTrafficPolicy": "Local"},
            {},
            [REMOTE_EP],
            {"10.96.0.10:80": {"10.244.2.7"}},
        ),
        (
            {"type": "NodePort", "externalTrafficPolicy": "Local"},
            {},
            [LOCAL_EP, REMOTE_EP],
            {"10.96.0.10:80": {"10.244.1.5", "10.244.2.7"}, "192.168.1.10:30080": {"10.244.1.5"}},
        ),
        (  # service.local: external traffic Local, internal stays Cluster
            {"type": "NodePort", "externalIPs": ["203.0.113.7"]},
            {"kube-router.io/service.local": "true"},
            [LOCAL_EP, REMOTE_EP],
            {
                "10.96.0.10:80": {"10.244.1.5", "10.244.2.7"},
                "192.168.1.10:30080": {"10.244.1.5"},
                "203.0.113.7:80": {"10.244.1.5"},
            },
        ),
        (
            {"externalIPs": ["203.0.113.7"], "externalTrafficPolicy": "Local"},
            {},
            [REMOTE_EP],
            {"10.96.0.10:80": {"10.244.2.7"}},
        ),
    ],
)
def test_traffic_policies(
    spec: dict[str, Any],
    annotations: dict[str, str],
    slices: list[tuple[str, str, dict[str, Any]]],
    want: dict[str, set[str]],
) -> None:
    svc = service(spec, {"annotations": annotations})
    assert dests_by_vip(svc, [endpoint_slice(*slices)]) == want


def test_dual_stack_matches_families_and_skips_disabled_ones() -> None:
    svc = service({"type": "NodePort", "clusterIPs": ["10.96.0.10", "fd00:96::10"]})
    slices = [endpoint_slice(LOCAL_EP), endpoint_slice(("fd00:244:1::5", NODE, {}), family="IPv6")]
    assert dests_by_vip(svc, slices) == {
        "10.96.0.10:80": {"10.244.1.5"},
        "192.168.1.10:30080": {"10.244.1.5"},
        "fd00:96::10:80": {"fd00:244:1::5"},
        "fd00::10:30080": {"fd00:244:1::5"},
    }
    v4_only = Settings(("ipv4",), ranges=RANGES)
    assert set(dests_by_vip(svc, slices, v4_only)) == {"10.96.0.10:80", "192.168.1.10:30080"}


def test_nodeport_on_every_local_address() -> None:
    svc = service({"type": "NodePort"})
    settings = Settings(("ipv4",), nodeport_bindon_all_ip=True, ranges=RANGES)
    got = dests_by_vip(svc, [endpoint_slice(LOCAL_EP)], settings)
    assert set(got) == {"10.96.0.10:80", "192.168.1.10:30080", "10.0.0.10:30080"}


@pytest.mark.parametrize(
    ("spec", "annotations", "scheduler", "flags", "timeout", "errors"),
    [
        ({}, {}, "rr", 0, 0, 0),
        ({"sessionAffinity": "ClientIP"}, {}, "rr", ipvs.F_PERSISTENT, 10800, 0),
        (
            {
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            },
            {},
            "rr",
            ipvs.F_PERSISTENT,
            60,
            0,
        ),
        ({}, {"kube-router.io/service.scheduler": "lc"}, "lc", 0, 0, 0),
        ({}, {"kube-router.io/service.scheduler": "wat"}, "rr", 0, 0, 1),
        (
            {},
            {
                "kube-router.io/service.scheduler": "mh",
                "kube-router.io/service.schedflags": "flag-1,flag-2",
            },
            "mh",
            ipvs.F_SCHED1 | ipvs.F_SCHED2,
            0,
            0,
        ),
        (
            {},
            {
                "kube-router.io/service.scheduler": "sh",
                "kube-router.io/service.schedflags": "flag-1",
            },
            "sh",
            0,
            0,
            0,
        ),
        (
            {},
            {
                "kube-router.io/service.scheduler": "mh",
                "kube-router.io/service.schedflags": "flag-9",
            },
            "mh",
            0,
            0,
            1,
        ),
        ({}, {"kube-router.io/service.local": "yes"}, "rr", 0, 0, 1),
    ],
)
def test_scheduler_affinity_and_bad_annotations(
    spec: dict[str, Any],
    annotations: dict[str, str],
    scheduler: str,
    flags: int,
    timeout: int,
    errors: int,
) -> None:
    plan = plan_service(service(spec, {"annotations": annotations}), {}, NODE_ADDRS, BOTH)
    (vs,) = plan.virtual.values()
    assert (vs.service.scheduler, vs.service.flags, vs.service.timeout) == (
        scheduler,
        flags,
        timeout,
    )
    assert len(plan.errors) == errors  # still programmed


@pytest.mark.parametrize(
    ("ranges", "external", "lb", "programmed", "errors"),
    [
        (RANGES, ["203.0.113.7"], [{"ip": "198.51.100.9"}], {"203.0.113.7", "198.51.100.9"}, 0),
        (RANGES, ["8.8.8.8", "10.96.0.99"], [{"ip": "203.0.113.1"}], set(), 3),
        (
            RANGES,
            [],
            [{"ip": "198.51.100.9", "ipMode": "Proxy"}, {"hostname": "lb.example"}],
            set(),
            0,
        ),
        (Ranges(strict=False), ["8.8.8.8"], [{"ip": "1.1.1.1"}], {"8.8.8.8", "1.1.1.1"}, 0),
        (
            Ranges(strict=True),
            ["203.0.113.7"],
            [],
            set(),
            1,
        ),  # no range configured: default deny
    ],
)
def test_external_and_lb_ip_validation(
    ranges: Ranges,
    external: list[str],
    lb: list[dict[str, str]],
    programmed: set[str],
    errors: int,
) -> None:
    svc = msgspec.convert(
        {
            **msgspec.to_builtins(service({"type": "LoadBalancer", "externalIPs": external})),
            "status": {"loadBalancer": {"ingress": lb}},
        },
        Service,
    )
    plan = plan_service(svc, {}, NODE_ADDRS, Settings(("ipv4",), ranges=ranges))
    vips = {k.address for k, vs in plan.virtual.items() if vs.kind in ("external", "loadbalancer")}
    assert vips == programmed
    assert len(plan.errors) == errors
    assert plan.dummy_ips == {"10.96.0.10"} | programmed


def test_skiplbips_drops_lb_ips_only() -> None:
    svc = msgspec.convert(
        {
            **msgspec.to_builtins(
                service(
                    {"type": "LoadBalancer"},
                    {"annotations": {"kube-router.io/service.skiplbips": ""}},
                )
            ),
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}},
        },
        Service,
    )
    plan = plan_service(svc, {}, NODE_ADDRS, BOTH)
    assert {vs.kind for vs in plan.virtual.values()} == {"cluster", "nodeport"}


@pytest.mark.parametrize(
    ("spec", "meta"),
    [
        ({"clusterIP": "None", "clusterIPs": ["None"]}, {}),
        (
            {
                "type": "ExternalName",
                "externalName": "example.org",
                "clusterIP": "",
                "clusterIPs": [],
            },
            {},
        ),
        ({}, {"labels": {"service.kubernetes.io/service-proxy-name": "other"}}),
        ({}, {"labels": {"service.kubernetes.io/headless": ""}}),
    ],
)
def test_services_that_are_not_ours(spec: dict[str, Any], meta: dict[str, Any]) -> None:
    assert plan_service(service(spec, meta), {}, NODE_ADDRS, BOTH).virtual == {}


@pytest.mark.parametrize(
    ("conditions", "used"),
    [
        ({}, True),
        ({"ready": True}, True),
        ({"ready": False, "serving": True, "terminating": True}, True),
        ({"ready": False, "serving": False, "terminating": True}, False),
        ({"ready": False}, False),
    ],
)
def test_endpoint_conditions(conditions: dict[str, bool], used: bool) -> None:
    eps = service_endpoints([endpoint_slice(("10.244.1.5", NODE, conditions))], NODE)
    assert bool(eps.get("http")) == used


def test_slices_find_their_service_and_merge() -> None:
    a, b = endpoint_slice(LOCAL_EP), endpoint_slice(REMOTE_EP, LOCAL_EP)
    assert slice_service(a) == "x/web"
    owned = msgspec.convert(
        {"metadata": {"namespace": "x", "ownerReferences": [{"kind": "Service", "name": "api"}]}},
        EndpointSlice,
    )
    assert slice_service(owned) == "x/api"
    assert [e.address for e in service_endpoints([a, b], NODE)["http"]] == [
        "10.244.1.5",
        "10.244.2.7",
    ]


def test_a_clash_between_services_goes_to_the_first_by_name() -> None:
    one = plan_service(service(), {}, NODE_ADDRS, BOTH)
    other = service(meta={"name": "aaa"})
    two = plan_service(other, {}, NODE_ADDRS, BOTH)
    merged = merge({"x/web": one, "x/aaa": two})
    assert merged.virtual[ServiceKey.of("10.96.0.10", "tcp", 80)].owner == "x/aaa:http"
    assert list(merged.errors) == ["x/web"]


def test_local_endpoints_and_health_check_answer() -> None:
    svc = service({"type": "LoadBalancer", "healthCheckNodePort": 31999})
    terminating = ("10.244.1.6", NODE, {"ready": False, "serving": True, "terminating": True})
    slices = [endpoint_slice(LOCAL_EP, REMOTE_EP, terminating)]
    plan = plan_service(svc, service_endpoints(slices, NODE), NODE_ADDRS, BOTH)
    assert plan.local_endpoints == {"10.244.1.5", "10.244.1.6"}
    assert plan.local_serving == 1
    assert plan.health_check_port == 31999
