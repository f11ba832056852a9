"""A Service's addresses and the ranges external ones are checked against: what the proxy
programs and the routing controller advertises. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from kube_router.k8s.models import Service

IP_MODE_PROXY: Final = "Proxy"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Ranges:
    """Ranges external addresses are checked against (``--strict-external-ip-validation``)."""

    strict: bool = True
    cluster: tuple[Network, ...] = ()
    external: tuple[Network, ...] = ()
    load_balancer: tuple[Network, ...] = ()

    @classmethod
    def parse(
        cls, strict: bool, cluster: Sequence[str], external: Sequence[str], lb: Sequence[str]
    ) -> Ranges:
        def nets(texts: Sequence[str]) -> tuple[Network, ...]:
            return tuple(ipaddress.ip_network(t.strip(), strict=False) for t in texts if t.strip())

        return cls(strict, nets(cluster), nets(external), nets(lb))


def cluster_ips(service: Service) -> list[str]:
    ips = service.spec.cluster_ips or ([service.spec.cluster_ip] if service.spec.cluster_ip else [])
    return [ip for ip in ips if ip and ip != "None"]


def _allowed(ip: str, allowed: tuple[Network, ...], ranges: Ranges) -> str | None:
    """Why ``ip`` may not be used (None: it may)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return f"{ip!r} is not an IP address"
    if not ranges.strict:
        return None
    if any(addr in net for net in ranges.cluster):
        return f"{ip} is inside the service cluster IP range"
    if not any(addr in net for net in allowed):
        return f"{ip} is outside the allowed ranges"
    return None


def external_ips(service: Service, ranges: Ranges) -> tuple[list[str], list[str]]:
    """spec.externalIPs that pass validation, and the errors for the others."""
    good, errors = [], []
    for ip in service.spec.external_ips:
        why = _allowed(ip, ranges.external, ranges)
        (
            errors.append(f"externalIPs: {why}")
            if why
            else good.append(str(ipaddress.ip_address(ip)))
        )
    return good, errors


def lb_ips(service: Service, ranges: Ranges, skip: bool = False) -> tuple[list[str], list[str]]:
    """LoadBalancer ingress IPs to program (not ipMode Proxy; none with ``skip``, the skiplbips
    annotation), and errors."""
    if skip or service.spec.type != "LoadBalancer":
        return [], []
    good, errors = [], []
    for ingress in service.status.load_balancer.ingress:
        if not ingress.ip or ingress.ip_mode == IP_MODE_PROXY:
            continue
        why = _allowed(ingress.ip, ranges.load_balancer, ranges)
        (
            errors.append(f"loadBalancer ingress: {why}")
            if why
            else good.append(str(ipaddress.ip_address(ingress.ip)))
        )
    return good, errors
