"""A Service's endpoints from its EndpointSlices: which addresses serve which port, and where.

Pure functions. An endpoint is used when it is ready or serving (a nil condition counts as true,
as the API says); terminating endpoints that still serve stay usable, as upstream does.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from kube_router.dataplane.ipvs import Family
from kube_router.k8s.models import EndpointSlice

HEADLESS_LABEL: Final = "service.kubernetes.io/headless"
ADDRESS_TYPES: Final[dict[str, Family]] = {"IPv4": "ipv4", "IPv6": "ipv6"}


@dataclass(frozen=True, order=True)
class EndpointInfo:
    address: str
    port: int
    family: Family
    local: bool
    terminating: bool = False


def _usable(ready: bool | None, serving: bool | None) -> bool:
    is_ready = ready is not False
    return is_ready or (serving if serving is not None else is_ready)


def canonical(address: str) -> str | None:
    """The address as the kernel prints it; None when it is not one. IPv4 that inet_pton takes
    is already canonical (it refuses leading zeros and short forms, as ipaddress does)."""
    try:
        socket.inet_pton(socket.AF_INET, address)
    except OSError:
        pass
    else:
        return address
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def slice_endpoints(es: EndpointSlice, node: str) -> dict[str, list[EndpointInfo]]:
    """Port name -> usable endpoints of one slice (FQDN slices and headless ones give nothing)."""
    family = ADDRESS_TYPES.get(es.address_type)
    if family is None or HEADLESS_LABEL in es.metadata.labels:
        return {}
    usable: list[tuple[str, bool, bool]] = []  # address, local, terminating
    for ep in es.endpoints:
        c = ep.conditions
        if _usable(c.ready, c.serving):
            local, terminating = ep.node_name == node, bool(c.terminating)
            for address in ep.addresses:
                text = canonical(address)
                if text is not None:
                    usable.append((text, local, terminating))
    out: dict[str, list[EndpointInfo]] = {}
    for port in es.ports:
        if port.port is None:
            continue
        found = out.setdefault(port.name or "", [])
        found += [EndpointInfo(a, port.port, family, lo, t) for a, lo, t in usable]
    return out


def service_endpoints(slices: Iterable[EndpointSlice], node: str) -> dict[str, list[EndpointInfo]]:
    """Port name -> usable endpoints over all of a Service's slices, without duplicates."""
    merged: dict[str, set[EndpointInfo]] = {}
    for es in slices:
        for port, eps in slice_endpoints(es, node).items():
            merged.setdefault(port, set()).update(eps)
    return {port: sorted(eps) for port, eps in merged.items()}
