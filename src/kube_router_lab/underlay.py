"""The lab cluster's underlay: node namespaces joined by bridges that live in a namespace too.

Nothing is created in the host's own network namespace. One namespace, ``<prefix>-underlay``,
holds a bridge per subnet; every other lab namespace (a node, the router, an external BGP
router) has one veth, ``eth0``, plugged into one of those bridges. Since every interface sits
in a namespace named after the prefix, two clusters with different prefixes can run side by
side with the same addresses.

Layouts (addresses are the defaults):

- one subnet: 10.77.0.0/24. The underlay namespace itself is 10.77.0.1 (the nodes' default
  gateway, which forwards nothing, and the address the lab API server listens on).
- two subnets: nodes 1..k on 10.77.0.0/24 (subnet A), the rest on 10.77.1.0/24 (subnet B),
  joined by ``<prefix>-router`` (10.77.0.1 and 10.77.1.1, forwarding). Each node's default
  route points at its subnet's router address; the underlay namespace is 10.77.0.2 with a route
  to subnet B through the router.

Node ``i`` (1-based) is host ``10 + i`` of its subnet (10.77.0.11, ...). With ``ipv6`` every
address gets an IPv6 twin (fd00:77::/64 and fd00:77:1::/64, same host numbers), without DAD.

Use :func:`plan` (pure: names and numbers) then :func:`create`; :func:`add_host` plugs one more
namespace in (an external router); :func:`destroy` removes everything with a prefix, processes
inside first, and also finds what a crashed run left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import math
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from kube_router_lab.netns import LabNetError, ip, list_netns

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
FIRST_NODE_HOST = 10  # node i is host FIRST_NODE_HOST + i of its subnet
GATEWAY_HOST = 1
API_HOST_ROUTED = 2  # the underlay namespace's address when the router owns .1
KILL_GRACE_S = 2.0
POLL_S = 0.05
UNDERLAY_IF = "eth0"  # a host namespace's interface into the underlay
DEFAULT_SUBNETS = ("10.77.0.0/24", "10.77.1.0/24")
DEFAULT_SUBNETS6 = ("fd00:77::/64", "fd00:77:1::/64")


class UnderlayError(LabNetError):
    """The underlay could not be planned or built."""


@dataclass(frozen=True)
class UnderlaySpec:
    """What to build. ``split``: how many nodes go on subnet A with two subnets (default half,
    rounded up)."""

    prefix: str
    nodes: int = 3
    two_subnets: bool = False
    split: int | None = None
    ipv6: bool = False
    subnets: tuple[str, str] = DEFAULT_SUBNETS
    subnets6: tuple[str, str] = DEFAULT_SUBNETS6


@dataclass(frozen=True)
class Host:
    """A namespace with one interface (``eth0``) on an underlay subnet."""

    name: str
    netns: str
    subnet: int  # 0: A, 1: B
    ip: str
    prefixlen: int
    gateway: str
    port: str  # the veth's name on the underlay side
    ip6: str | None = None
    prefixlen6: int = 64
    gateway6: str | None = None

    def addresses(self) -> list[str]:
        return [self.ip, *([self.ip6] if self.ip6 else [])]


@dataclass(frozen=True)
class Underlay:
    """The planned underlay; :func:`create` builds it."""

    spec: UnderlaySpec
    netns: str
    bridges: tuple[str, ...]
    api_ip: str
    nodes: tuple[Host, ...]
    router: str | None = None
    api_ip6: str | None = None

    def address(self, subnet: int, host: int, family: int = 4) -> str:
        """Host number ``host`` of subnet ``subnet`` (0: A, 1: B)."""
        nets = self.spec.subnets if family == 4 else self.spec.subnets6
        return str(ipaddress.ip_network(nets[subnet]).network_address + host)

    def plan_host(self, name: str, host: int, subnet: int = 0) -> Host:
        """One more namespace on ``subnet`` with host number ``host`` (not created yet)."""
        return _host(self, name, host, subnet, port=f"x-{name}"[:15])


def _host(u: Underlay, name: str, host: int, subnet: int, port: str) -> Host:
    v4 = ipaddress.ip_network(u.spec.subnets[subnet])
    v6 = ipaddress.ip_network(u.spec.subnets6[subnet]) if u.spec.ipv6 else None
    return Host(
        name=name,
        netns=f"{u.spec.prefix}-{name}",
        subnet=subnet,
        ip=u.address(subnet, host),
        prefixlen=v4.prefixlen,
        gateway=u.address(subnet, GATEWAY_HOST),
        port=port,
        ip6=u.address(subnet, host, 6) if v6 else None,
        prefixlen6=v6.prefixlen if v6 else 64,
        gateway6=u.address(subnet, GATEWAY_HOST, 6) if v6 else None,
    )


def plan(spec: UnderlaySpec) -> Underlay:
    """Name and number everything; nothing is created."""
    if spec.nodes < 1:
        raise UnderlayError(f"a cluster needs at least one node, not {spec.nodes}")
    split = spec.split if spec.split is not None else math.ceil(spec.nodes / 2)
    if spec.two_subnets and not 1 <= split < spec.nodes:
        raise UnderlayError(f"split {split} leaves a subnet without nodes ({spec.nodes} nodes)")
    size = ipaddress.ip_network(spec.subnets[0]).num_addresses
    if FIRST_NODE_HOST + spec.nodes >= size - 8:
        raise UnderlayError(f"{spec.nodes} nodes do not fit in {spec.subnets[0]}")
    host = API_HOST_ROUTED if spec.two_subnets else GATEWAY_HOST
    u = Underlay(
        spec=spec,
        netns=f"{spec.prefix}-underlay",
        bridges=("br-a", "br-b") if spec.two_subnets else ("br-a",),
        api_ip=str(ipaddress.ip_network(spec.subnets[0]).network_address + host),
        api_ip6=str(ipaddress.ip_network(spec.subnets6[0]).network_address + host)
        if spec.ipv6
        else None,
        nodes=(),
        router=f"{spec.prefix}-router" if spec.two_subnets else None,
    )
    nodes = tuple(
        _host(u, f"node{i}", FIRST_NODE_HOST + i, int(spec.two_subnets and i > split), f"n{i}")
        for i in range(1, spec.nodes + 1)
    )
    return replace(u, nodes=nodes)


def create(u: Underlay) -> None:
    """Build the underlay namespace, its bridges, the router and the node namespaces."""
    ip("netns", "add", u.netns)
    ip("link", "set", "lo", "up", netns=u.netns)
    for bridge in u.bridges:
        ip("link", "add", bridge, "type", "bridge", netns=u.netns)
        ip("link", "set", bridge, "up", netns=u.netns)
    _address(u.netns, u.bridges[0], u.api_ip, u.nodes[0].prefixlen)
    if u.api_ip6:
        _address(u.netns, u.bridges[0], u.api_ip6, u.nodes[0].prefixlen6)
    if u.router is not None:
        _create_router(u)
    for node in u.nodes:
        add_host(u, node)
        sysctl(node.netns, "net.ipv4.ip_forward", "1")
        if u.spec.ipv6:
            sysctl(node.netns, "net.ipv6.conf.all.forwarding", "1")


def _create_router(u: Underlay) -> None:
    assert u.router is not None
    netns_add(u.router, ipv6=u.spec.ipv6)
    for subnet, bridge in enumerate(u.bridges):
        dev = f"eth-{'ab'[subnet]}"
        port = f"rt-{'ab'[subnet]}"
        _veth(u.netns, port, u.router, dev, bridge)
        prefixlen = ipaddress.ip_network(u.spec.subnets[subnet]).prefixlen
        _address(u.router, dev, u.address(subnet, GATEWAY_HOST), prefixlen)
        if u.spec.ipv6:
            prefixlen6 = ipaddress.ip_network(u.spec.subnets6[subnet]).prefixlen
            _address(u.router, dev, u.address(subnet, GATEWAY_HOST, 6), prefixlen6)
    sysctl(u.router, "net.ipv4.ip_forward", "1")
    ip("route", "add", u.spec.subnets[1], "via", u.address(0, GATEWAY_HOST), netns=u.netns)
    if u.spec.ipv6:
        sysctl(u.router, "net.ipv6.conf.all.forwarding", "1")
        gw6 = u.address(0, GATEWAY_HOST, 6)
        ip("-6", "route", "add", u.spec.subnets6[1], "via", gw6, netns=u.netns)


def add_host(u: Underlay, host: Host) -> None:
    """Create ``host``'s namespace, plug it into its subnet's bridge, address it and give it a
    default route through its subnet's gateway."""
    netns_add(host.netns, ipv6=u.spec.ipv6)
    _veth(u.netns, host.port, host.netns, UNDERLAY_IF, u.bridges[host.subnet])
    _address(host.netns, UNDERLAY_IF, host.ip, host.prefixlen)
    ip("route", "add", "default", "via", host.gateway, netns=host.netns)
    if host.ip6 and host.gateway6:
        _address(host.netns, UNDERLAY_IF, host.ip6, host.prefixlen6)
        ip("-6", "route", "add", "default", "via", host.gateway6, netns=host.netns)


def netns_add(name: str, ipv6: bool = False) -> None:
    """A namespace with lo up (and, with ``ipv6``, no duplicate address detection)."""
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)
    if ipv6:
        for scope in ("all", "default"):
            sysctl(name, f"net.ipv6.conf.{scope}.accept_dad", "0")


def _veth(underlay: str, port: str, netns: str, dev: str, bridge: str) -> None:
    ip("link", "add", port, "type", "veth", "peer", "name", dev, "netns", netns, netns=underlay)
    ip("link", "set", port, "master", bridge, "up", netns=underlay)
    ip("link", "set", dev, "up", netns=netns)


def _address(netns: str, dev: str, address: str, prefixlen: int) -> None:
    extra = ["nodad"] if ":" in address else []
    ip("addr", "add", f"{address}/{prefixlen}", "dev", dev, *extra, netns=netns)


def sysctl(netns: str, key: str, value: str) -> None:
    """Set a sysctl inside ``netns`` (``ip netns exec`` remounts /proc/sys/net for it)."""
    argv = ["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise UnderlayError(f"sysctl {key}={value} in {netns}: {proc.stderr.strip()}")


def netns_pids(netns: str) -> list[int]:
    """The processes whose network namespace is ``netns``."""
    argv = ["ip", "netns", "pids", netns]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def owned_netns(prefix: str) -> list[str]:
    """The namespaces a cluster with ``prefix`` made (pods and nodes included)."""
    return sorted(n for n in list_netns() if n.startswith(f"{prefix}-"))


def destroy(prefix: str) -> list[str]:
    """Remove every namespace named ``<prefix>-*`` after ending the processes inside them
    (SIGTERM, then SIGKILL after a grace period); returns the names removed. Safe to call when
    nothing is left, and after a crash."""
    names = owned_netns(prefix)
    pids = {pid for name in names for pid in netns_pids(name)} - {os.getpid()}
    _end(pids)
    for name in names:
        ip("netns", "del", name, check=False)
    return names


def _end(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if _alive(p)}
        time.sleep(POLL_S)
    for pid in pids:
        log.warning("process %d ignored SIGTERM; killing it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@contextlib.contextmanager
def entered(netns: str) -> Iterator[None]:
    """Run the calling thread in ``netns`` for the duration of the block (sockets made there
    stay in it). Meant for binding a server's socket from an event loop's thread: keep the block
    short, since everything the thread does meanwhile happens in ``netns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{netns}") as target, open("/proc/thread-self/ns/net") as home:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise UnderlayError(f"setns into {netns}: {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                err = os.strerror(ctypes.get_errno())
                raise UnderlayError(f"setns back from {netns}: {err}")
