"""The routes this node originates: its pod CIDRs and the service VIPs it advertises (pure).

Each Service is looked at on its own (:func:`service_vips`, one Service and its EndpointSlices),
so the controller can redo only the Service an event touched and keep the union of every
Service's VIPs in a :class:`VipTable`. The paths for gobgpd are then
:func:`originated_paths` ``(settings, table.vips())``; the same VIPs fill the
``servicevipsdefinedset`` sets (``policies.py``).

Rules (upstream's ``ecmp_vip.go``, kube-router.md §4.2, §2.2, §5.7):

- only ClusterIP, NodePort and LoadBalancer Services with a cluster IP (not headless);
- cluster IPs when ``--advertise-cluster-ip`` or ``kube-router.io/service.advertise.clusterip``
  says so, external IPs likewise (``...advertise.externalip``, validated against
  ``--service-external-ip-range`` when ``--strict-external-ip-validation``), LoadBalancer ingress
  IPs likewise (``...advertise.loadbalancerip``; not ``ipMode: Proxy``; none with
  ``kube-router.io/service.skiplbips``). Annotation values are Go ParseBool; a bad one is false;
- a Local traffic policy withholds the VIP when this node has no endpoint of the Service:
  ``internalTrafficPolicy: Local`` for cluster IPs, ``externalTrafficPolicy: Local`` or
  ``kube-router.io/service.local: "true"`` for external and LoadBalancer IPs. An endpoint is
  local when its ``nodeName`` is ours or, without a nodeName, one of its addresses is a node
  IP; leader-election slices are ignored. Upstream counts endpoints whatever their conditions;
  so do we. A Service without any slice has no local endpoint (upstream errors out of the whole
  sync instead).
- VIPs of a family this node has no address of (or has disabled) are left out.

Public API:

- :func:`service_vips` ``(service, slices, settings, ranges) -> ServiceVips``
- :func:`has_local_endpoint` ``(slices, node_name, node_ips) -> bool``
- :class:`VipTable`: ``update(key, vips) -> bool``, ``remove(key) -> bool``, ``vips()``
- :func:`pod_cidr_paths` ``(settings)``, :func:`vip_paths` ``(vips, settings)``,
  :func:`originated_paths` ``(settings, vips) -> frozenset[PathSpec]``
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final

from kube_router.bgp.model import IPV4, IPV6, PathSpec
from kube_router.controllers.routing.compile.settings import RoutingSettings
from kube_router.controllers.shared import services
from kube_router.controllers.shared.services import Ranges
from kube_router.goparse import parse_bool, parse_ip
from kube_router.k8s.models import EndpointSlice, Service

ADVERTISE_CLUSTER_IP: Final = "kube-router.io/service.advertise.clusterip"
ADVERTISE_EXTERNAL_IP: Final = "kube-router.io/service.advertise.externalip"
ADVERTISE_LB_IP: Final = "kube-router.io/service.advertise.loadbalancerip"
SERVICE_LOCAL: Final = "kube-router.io/service.local"
SKIP_LB_IPS: Final = "kube-router.io/service.skiplbips"
LEADER_ELECTION_ANNOTATION: Final = "control-plane.alpha.kubernetes.io/leader"
ADVERTISED_TYPES: Final = ("ClusterIP", "NodePort", "LoadBalancer")
LOCAL: Final = "Local"
HOST_PREFIX: Final = {IPV4: 32, IPV6: 128}


@dataclass(frozen=True)
class ServiceVips:
    """One Service's VIPs: those this node advertises, those it holds back, and bad input."""

    advertise: frozenset[str] = frozenset()
    withheld: frozenset[str] = frozenset()
    errors: tuple[str, ...] = ()


def _family(address: str) -> str:
    return IPV6 if ":" in address else IPV4


def has_local_endpoint(
    slices: Iterable[EndpointSlice], node_name: str, node_ips: Collection[str]
) -> bool:
    """Whether any endpoint of these slices is on this node (upstream's test)."""
    for endpoint_slice in slices:
        if LEADER_ELECTION_ANNOTATION in endpoint_slice.metadata.annotations:
            continue
        for endpoint in endpoint_slice.endpoints:
            if endpoint.node_name is not None:
                if endpoint.node_name == node_name:
                    return True
            elif any(address in node_ips for address in endpoint.addresses):
                return True
    return False


def _cluster_ips(service: Service) -> list[str]:
    spec = service.spec
    ips = list(spec.cluster_ips)
    if spec.cluster_ip and spec.cluster_ip not in ips:
        ips.append(spec.cluster_ip)
    return ips


def _canonical(addresses: Iterable[str], errors: list[str]) -> list[str]:
    out = []
    for text in addresses:
        address = parse_ip(text)
        if address is None:
            errors.append(f"{text!r} is not an IP address; not advertised")
            continue
        out.append(str(address))
    return out


def _wanted(service: Service, annotation: str, default: bool) -> bool:
    text = service.metadata.annotations.get(annotation)
    if text is None:
        return default
    try:
        return parse_bool(text)
    except ValueError:
        return False  # upstream ignores ParseBool's error: a bad value means false


class _Gate:
    """Decides per kind of VIP, looking at the endpoints only when a Local policy asks."""

    def __init__(
        self, service: Service, slices: Iterable[EndpointSlice], settings: RoutingSettings
    ) -> None:
        self.service, self.slices, self.settings = service, slices, settings
        self._local: bool | None = None

    def local(self) -> bool:
        if self._local is None:
            self._local = has_local_endpoint(
                self.slices, self.settings.node_name, self.settings.node_ips
            )
        return self._local

    def allows(self, annotation: str, default: bool, cluster: bool) -> bool:
        if not _wanted(self.service, annotation, default):
            return False
        spec, ann = self.service.spec, self.service.metadata.annotations
        if cluster:
            local_policy = spec.internal_traffic_policy == LOCAL
        else:
            local_policy = spec.external_traffic_policy == LOCAL or ann.get(SERVICE_LOCAL) == "true"
        return not local_policy or self.local()


def service_vips(
    service: Service,
    slices: Iterable[EndpointSlice],
    settings: RoutingSettings,
    ranges: Ranges,
) -> ServiceVips:
    """The VIPs of one Service this node advertises (``slices``: the Service's EndpointSlices)."""
    spec = service.spec
    if spec.type not in ADVERTISED_TYPES or spec.cluster_ip in ("", "None"):
        return ServiceVips()
    errors: list[str] = []
    gate = _Gate(service, slices, settings)
    advertise: set[str] = set()
    withheld: set[str] = set()

    def sort(ips: Iterable[str], allowed: bool) -> None:
        for ip in ips:
            if _family(ip) in settings.next_hops:
                (advertise if allowed else withheld).add(ip)

    clusters = _canonical(_cluster_ips(service), errors)
    if clusters:
        sort(clusters, gate.allows(ADVERTISE_CLUSTER_IP, settings.advertise_cluster_ip, True))
    externals, bad = services.external_ips(service, ranges)
    errors += bad
    if externals:
        sort(externals, gate.allows(ADVERTISE_EXTERNAL_IP, settings.advertise_external_ip, False))
    lbs, bad = services.lb_ips(service, ranges)
    errors += bad
    if lbs:
        allowed = SKIP_LB_IPS not in service.metadata.annotations and gate.allows(
            ADVERTISE_LB_IP, settings.advertise_loadbalancer_ip, False
        )
        sort(lbs, allowed)
    return ServiceVips(frozenset(advertise), frozenset(withheld - advertise), tuple(errors))


class VipTable:
    """The union of every Service's advertised VIPs, updated one Service at a time.

    A VIP two Services share stays advertised while either advertises it (upstream's rule).
    """

    def __init__(self) -> None:
        self._by_service: dict[str, frozenset[str]] = {}
        self._count: Counter[str] = Counter()

    def update(self, key: str, vips: frozenset[str]) -> bool:
        """Set one Service's VIPs (``key``: namespace/name); whether the union changed."""
        old = self._by_service.get(key, frozenset())
        if vips == old:
            return False
        changed = False
        for vip in old - vips:
            self._count[vip] -= 1
            if self._count[vip] == 0:
                del self._count[vip]
                changed = True
        for vip in vips - old:
            changed = changed or vip not in self._count
            self._count[vip] += 1
        if vips:
            self._by_service[key] = vips
        else:
            self._by_service.pop(key, None)
        return changed

    def remove(self, key: str) -> bool:
        """Forget a deleted Service; whether the union changed."""
        return self.update(key, frozenset())

    def vips(self) -> frozenset[str]:
        return frozenset(self._count)


def vip_paths(vips: Iterable[str], settings: RoutingSettings) -> set[PathSpec]:
    """Host routes (/32, /128) for the VIPs, next hop the node's best IP of the family."""
    out = set()
    for vip in vips:
        family = _family(vip)
        next_hop = settings.next_hops.get(family)
        if next_hop is not None:
            out.add(PathSpec(f"{vip}/{HOST_PREFIX[family]}", next_hop))
    return out


def pod_cidr_paths(settings: RoutingSettings) -> set[PathSpec]:
    """The node's pod CIDRs, next hop the node's best IP of the family (families it has)."""
    out = set()
    for cidr in settings.pod_cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        next_hop = settings.next_hops.get(IPV4 if network.version == 4 else IPV6)
        if next_hop is not None:
            out.add(PathSpec(str(network), next_hop))
    return out


def originated_paths(settings: RoutingSettings, vips: Iterable[str]) -> frozenset[PathSpec]:
    """Everything this node puts in gobgpd's global RIB: pod CIDRs and advertised VIPs."""
    return frozenset(pod_cidr_paths(settings) | vip_paths(vips, settings))
