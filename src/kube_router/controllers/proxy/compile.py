"""The IPVS services one Service asks for on this node (pure: objects in, desired state out).

Every port of a Service becomes a virtual service on each of its cluster IPs, on the node's
address for its NodePort (or every local address with ``--nodeport-bindon-all-ip``), and on its
validated externalIPs and LoadBalancer ingress IPs, per address family. Real servers are the
usable endpoints of the same family, only the local ones where a traffic policy says Local (and
no virtual service at all when there is none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from kube_router.controllers.proxy import options as opt
from kube_router.controllers.proxy.endpoints import EndpointInfo
from kube_router.controllers.shared import services
from kube_router.controllers.shared.services import Ranges
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs import Dest, Family, Service, ServiceKey
from kube_router.k8s.models import Service as K8sService
from kube_router.k8s.models import ServicePort

Kind = Literal["cluster", "nodeport", "external", "loadbalancer"]
NODEPORT_TYPES: Final = ("NodePort", "LoadBalancer")


@dataclass(frozen=True)
class NodeAddresses:
    """The node's address per family, and every local address (``--nodeport-bindon-all-ip``)."""

    primary: Mapping[Family, str]
    local: Mapping[Family, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    families: tuple[Family, ...] = ("ipv4",)
    nodeport_bindon_all_ip: bool = False
    ranges: Ranges = field(default_factory=Ranges)


@dataclass
class VirtualService:
    service: Service
    dests: dict[tuple[str, int], Dest]
    owner: str  # namespace/name:port
    kind: Kind


@dataclass
class ServicePlan:
    """What one Service wants: its virtual services, the VIPs for kube-dummy-if, and errors."""

    name: str
    virtual: dict[ServiceKey, VirtualService] = field(default_factory=dict)
    dummy_ips: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    options: opt.ServiceOptions = field(default_factory=opt.ServiceOptions)
    local_endpoints: frozenset[str] = frozenset()  # addresses of usable endpoints on this node
    local_serving: int = 0  # local endpoints not terminating (health-check NodePort answer)
    health_check_port: int = 0  # spec.healthCheckNodePort


def _dests(
    eps: Sequence[EndpointInfo], family: Family, local_only: bool
) -> dict[tuple[str, int], Dest]:
    return {
        (e.address, e.port): Dest(e.address, e.port)
        for e in eps
        if e.family == family and (e.local or not local_only)
    }


def _family(ip: str) -> Family:
    return ipvs.family_of(ip)


class _Builder:
    def __init__(self, svc: K8sService, settings: Settings, node: NodeAddresses) -> None:
        self.svc, self.settings, self.node = svc, settings, node
        self.opts = opt.options(svc)
        self.plan = ServicePlan(
            f"{svc.metadata.namespace}/{svc.metadata.name}",
            errors=list(self.opts.errors),
            options=self.opts,
        )

    def add(
        self, kind: Kind, ip: str, port: int, sp: ServicePort, eps: Sequence[EndpointInfo]
    ) -> None:
        family = _family(ip)
        if family not in self.settings.families:
            return
        local_only = self.opts.internal_local if kind == "cluster" else self.opts.external_local
        dests = _dests(eps, family, local_only)
        if local_only and not dests:
            return  # a Local policy with no local endpoint: no virtual service on this node
        key = ServiceKey.of(ip, sp.protocol.lower(), port)
        service = Service(key, self.opts.scheduler, self.opts.flags, self.opts.timeout)
        owner = f"{self.plan.name}:{sp.name or sp.port}"
        if key in self.plan.virtual:
            self.plan.errors.append(
                f"{owner}: {key} is already used by {self.plan.virtual[key].owner}"
            )
            return
        self.plan.virtual[key] = VirtualService(service, dests, owner, kind)
        if kind != "nodeport":
            self.plan.dummy_ips.add(key.address)

    def node_ips(self, family: Family) -> tuple[str, ...]:
        if self.settings.nodeport_bindon_all_ip:
            return tuple(self.node.local.get(family, ()))
        primary = self.node.primary.get(family)
        return (primary,) if primary else ()

    def port(
        self, sp: ServicePort, eps: Sequence[EndpointInfo], externals: Sequence[tuple[Kind, str]]
    ) -> None:
        if sp.protocol.lower() not in ipvs.PROTOCOLS:
            self.plan.errors.append(
                f"port {sp.name or sp.port}: unsupported protocol {sp.protocol!r}"
            )
            return
        vips = services.cluster_ips(self.svc)
        for ip in vips:
            self.add("cluster", ip, sp.port, sp, eps)
        if self.svc.spec.type in NODEPORT_TYPES and sp.node_port:
            for family in dict.fromkeys(_family(ip) for ip in vips):
                for ip in self.node_ips(family):
                    self.add("nodeport", ip, sp.node_port, sp, eps)
        for kind, ip in externals:
            self.add(kind, ip, sp.port, sp, eps)


def plan_service(
    svc: K8sService,
    endpoints: Mapping[str, Sequence[EndpointInfo]],
    node: NodeAddresses,
    settings: Settings,
) -> ServicePlan:
    """Everything one Service asks of IPVS on this node."""
    b = _Builder(svc, settings, node)
    if not opt.is_ours(svc):
        return b.plan
    local = [e for eps in endpoints.values() for e in eps if e.local]
    b.plan.local_endpoints = frozenset(e.address for e in local)
    b.plan.local_serving = len({e.address for e in local if not e.terminating})
    b.plan.health_check_port = svc.spec.health_check_node_port
    external, errors = services.external_ips(svc, settings.ranges)
    lbs, lb_errors = services.lb_ips(svc, settings.ranges, b.opts.skip_lb_ips)
    b.plan.errors += errors + lb_errors
    externals: list[tuple[Kind, str]] = [("external", ip) for ip in external]
    externals += [("loadbalancer", ip) for ip in lbs if ip not in external]
    for sp in svc.spec.ports:
        b.port(sp, endpoints.get(sp.name, ()), externals)
    return b.plan


@dataclass
class Desired:
    """Every Service's plan merged: a virtual service claimed twice goes to the first by name."""

    virtual: dict[ServiceKey, VirtualService] = field(default_factory=dict)
    dummy_ips: set[str] = field(default_factory=set)
    errors: dict[str, list[str]] = field(default_factory=dict)


def merge(plans: Mapping[str, ServicePlan]) -> Desired:
    out = Desired()
    for name in sorted(plans):
        plan = plans[name]
        errors = list(plan.errors)
        for key, vs in plan.virtual.items():
            taken = out.virtual.get(key)
            if taken is not None:
                errors.append(f"{vs.owner}: {key} clashes with {taken.owner}")
                continue
            out.virtual[key] = vs
            if vs.kind != "nodeport":
                out.dummy_ips.add(key.address)
        if errors:
            out.errors[name] = errors
    return out
