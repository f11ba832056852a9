"""Lab topology: "nodes" as network namespaces joined by a bridge in the host namespace.

Used by ``make demo`` and the e2e tests. Everything it creates carries the caller's prefix, and
teardown removes only names with that prefix.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

IFNAMSIZ = 15


class LabNetError(Exception):
    """An ``ip`` command of the lab topology failed."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip`` (optionally inside a netns) and return its stdout."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabNetError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def list_netns() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def link_exists(name: str) -> bool:
    return bool(ip("-o", "link", "show", "dev", name, check=False).strip())


@dataclass(frozen=True)
class LabNode:
    name: str
    netns: str
    host_veth: str
    address: ipaddress.IPv4Interface
    pod_cidr: ipaddress.IPv4Network

    @property
    def ip(self) -> str:
        return str(self.address.ip)


@dataclass(frozen=True)
class Topology:
    """A bridge with a gateway address and one namespace per node."""

    prefix: str
    bridge: str
    gateway: ipaddress.IPv4Interface
    nodes: tuple[LabNode, ...]


def plan(prefix: str, count: int, subnet: str, pod_supernet: str) -> Topology:
    """Name and number everything; nothing is created yet."""
    net = ipaddress.IPv4Network(subnet)
    hosts = list(net.hosts())
    pods = list(ipaddress.IPv4Network(pod_supernet).subnets(new_prefix=24))
    if count + 1 > len(hosts) or count > len(pods) - 1:
        raise LabNetError(f"{count} nodes do not fit in {subnet} / {pod_supernet}")
    bridge = f"{prefix}br0"[:IFNAMSIZ]
    gateway = ipaddress.IPv4Interface(f"{hosts[0]}/{net.prefixlen}")
    nodes = []
    for i in range(1, count + 1):
        nodes.append(
            LabNode(
                name=f"node{i}",
                netns=f"{prefix}-node{i}",
                host_veth=f"{prefix}v{i}"[:IFNAMSIZ],
                address=ipaddress.IPv4Interface(f"{hosts[9 + i]}/{net.prefixlen}"),
                pod_cidr=pods[i],
            )
        )
    return Topology(prefix, bridge, gateway, tuple(nodes))


def create(topo: Topology) -> None:
    """Create the bridge, the namespaces and their veths (idempotence is not attempted)."""
    ip("link", "add", topo.bridge, "type", "bridge")
    ip("addr", "add", str(topo.gateway), "dev", topo.bridge)
    ip("link", "set", topo.bridge, "up")
    for node in topo.nodes:
        ip("netns", "add", node.netns)
        ip("link", "set", "lo", "up", netns=node.netns)
        ip(
            "link",
            "add",
            node.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            node.netns,
        )
        ip("link", "set", node.host_veth, "master", topo.bridge, "up")
        ip("addr", "add", str(node.address), "dev", "eth0", netns=node.netns)
        ip("link", "set", "eth0", "up", netns=node.netns)
        ip("route", "add", "default", "via", str(topo.gateway.ip), netns=node.netns)


def destroy(prefix: str, bridge: str | None = None, netns: Sequence[str] = ()) -> None:
    """Remove the namespaces (their veths go with them) and the bridge. Never fails half-way."""
    names = set(netns) | {n for n in list_netns() if n.startswith(f"{prefix}-")}
    for name in sorted(names):
        ip("netns", "del", name, check=False)
    br = bridge or f"{prefix}br0"[:IFNAMSIZ]
    if link_exists(br):
        ip("link", "del", br, check=False)
