"""Node identity as upstream computes it: name, primary IP, best IP per family, link and MTU."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kube_router.k8s import models

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
INTERNAL_IP = "InternalIP"
EXTERNAL_IP = "ExternalIP"


class NodeIdentityError(Exception):
    """The node's identity cannot be established (no address, missing family, no link)."""


def node_name(hostname_override: str, env: Mapping[str, str]) -> str:
    """``--hostname-override``, else ``NODE_NAME``, else the host name (upstream's order)."""
    return hostname_override or env.get("NODE_NAME", "") or socket.gethostname()


def _addresses(node: models.Node, kind: str) -> list[IPAddress]:
    out: list[IPAddress] = []
    for a in node.status.addresses:
        if a.type != kind:
            continue
        try:
            out.append(ipaddress.ip_address(a.address))
        except ValueError:
            log.warning("node %s: ignoring bad %s %r", node.metadata.name, kind, a.address)
    return out


def primary_ip(node: models.Node) -> IPAddress:
    """First InternalIP, else first ExternalIP."""
    for kind in (INTERNAL_IP, EXTERNAL_IP):
        ips = _addresses(node, kind)
        if ips:
            return ips[0]
    raise NodeIdentityError(f"node {node.metadata.name} has no InternalIP or ExternalIP")


def best_ip(node: models.Node, version: int) -> IPAddress | None:
    """Primary IP if of this family, else first InternalIP, else first ExternalIP of it."""
    try:
        primary = primary_ip(node)
    except NodeIdentityError:
        return None
    if primary.version == version:
        return primary
    for kind in (INTERNAL_IP, EXTERNAL_IP):
        for ip in _addresses(node, kind):
            if ip.version == version:
                return ip
    return None


def all_ips(node: models.Node) -> list[IPAddress]:
    """Every InternalIP and ExternalIP of the node."""
    return _addresses(node, INTERNAL_IP) + _addresses(node, EXTERNAL_IP)


@dataclass(frozen=True)
class LinkInfo:
    name: str
    index: int
    mtu: int


@dataclass(frozen=True)
class NodeIdentity:
    """What the controllers need to know about the node they run on."""

    name: str
    primary_ip: IPAddress
    ipv4: IPAddress | None
    ipv6: IPAddress | None
    link: LinkInfo | None

    @property
    def mtu(self) -> int | None:
        return self.link.mtu if self.link else None


def identify(
    node: models.Node,
    enable_ipv4: bool,
    enable_ipv6: bool,
    find_link: Callable[[IPAddress], LinkInfo] | None = None,
) -> NodeIdentity:
    """Build the identity; each enabled family needs an address of that family (as upstream).
    ``find_link`` looks up the interface holding the primary IP (``dataplane.links``)."""
    primary = primary_ip(node)
    v4, v6 = best_ip(node, 4), best_ip(node, 6)
    name = node.metadata.name
    if enable_ipv4 and v4 is None:
        raise NodeIdentityError(f"--enable-ipv4 is set but node {name} has no IPv4 address")
    if enable_ipv6 and v6 is None:
        raise NodeIdentityError(f"--enable-ipv6 is set but node {name} has no IPv6 address")
    link = find_link(primary) if find_link is not None else None
    return NodeIdentity(
        name, primary, v4 if enable_ipv4 else None, v6 if enable_ipv6 else None, link
    )
