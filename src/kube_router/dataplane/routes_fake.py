"""A strict in-memory kernel behind the routes port: what :mod:`.routes_netlink` would do.

Modelled as the kernel does it (checked against it by ``tests/privileged/test_routes_netlink.py``
and, for tunnels, ``tests/vm/test_overlay_tunnels.py``):

- a route via a gateway needs the gateway on a connected subnet of an up link (IPv4 refuses
  with ENETUNREACH, IPv6 with EHOSTUNREACH), and the route's link is the one the gateway is on;
- a route through a device needs the device (ENODEV) up (ENETDOWN); a source address must be
  one of the namespace's (EINVAL); families must agree (EINVAL);
- replace overwrites the route to the same (table, dst); a delete matches table, dst and
  protocol (ESRCH when none), so another protocol's route is never taken; a gateway of the
  other family is unreachable (the kernel reads it as an address of the route's family);
- deleting a link takes every route through it;
- a tunnel whose name is taken, or whose (kind, local, remote) another tunnel has, is refused
  with EEXIST; a GUE tunnel needs the fou (IPv4) or fou6 (IPv6) module (EINVAL), a FoU port
  the fou module;
- adding a rule twice adds it twice (the kernel picks a new priority for each); deleting a
  missing one is ENOENT.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from kube_router.dataplane.ipvs import Family
from kube_router.dataplane.routes import (
    FOU_MODULES,
    MAIN_TABLE,
    RT_TABLES_PATHS,
    Encap,
    Route,
    RouteFailure,
    Rule,
    Tunnel,
    TunnelError,
    ensure_rt_tables_line,
    family_of,
)

_UNREACHABLE = {"ipv4": errno.ENETUNREACH, "ipv6": errno.EHOSTUNREACH}


class Refused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(errno.errorcode.get(code, str(code)))
        self.code = code


@dataclass
class FakeLink:
    name: str
    kind: str = "veth"
    up: bool = True
    tunnel: Tunnel | None = None


@dataclass(frozen=True)
class FakeAddr:
    link: str
    address: str
    prefixlen: int

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(f"{self.address}/{self.prefixlen}", strict=False)


@dataclass
class FakeRouteKernel:
    """One namespace: links, addresses, routes (one per (table, dst)), rules, FoU ports."""

    links: dict[str, FakeLink] = field(default_factory=lambda: {"lo": FakeLink("lo", "loopback")})
    addrs: list[FakeAddr] = field(default_factory=list)
    routes: dict[tuple[int, str], Route] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    fou: set[tuple[int, Family]] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)
    route_ops: int = 0

    # --- what a test does from outside (ip link / addr / route) ---

    def add_link(self, name: str, kind: str = "veth", up: bool = True) -> None:
        if name in self.links:
            raise Refused(errno.EEXIST)
        self.links[name] = FakeLink(name, kind, up)

    def add_address(self, link: str, address: str, prefixlen: int) -> None:
        if link not in self.links:
            raise Refused(errno.ENODEV)
        self.addrs.append(FakeAddr(link, str(ipaddress.ip_address(address)), prefixlen))

    def delete_link(self, name: str) -> None:
        if name not in self.links:
            raise Refused(errno.ENODEV)
        del self.links[name]
        self.addrs = [a for a in self.addrs if a.link != name]
        self.routes = {k: r for k, r in self.routes.items() if r.dev != name}

    # --- routes ---

    def _local(self, address: str) -> bool:
        return any(a.address == address for a in self.addrs) or address in ("127.0.0.1", "::1")

    def _link_for_gateway(self, gateway: str) -> str | None:
        ip = ipaddress.ip_address(gateway)
        for a in self.addrs:
            link = self.links[a.link]
            if link.up and a.prefixlen < ip.max_prefixlen and ip in a.network:
                return a.link
        for r in self.routes.values():  # our own device routes on the main table
            if r.table == MAIN_TABLE and not r.gateway and ip in ipaddress.ip_network(r.dst):
                return r.dev
        return None

    def replace_route(self, route: Route) -> None:
        family = route.family
        if route.src and family_of(route.src) != family:
            raise Refused(errno.EINVAL)
        if route.gateway and family_of(route.gateway) != family:  # read as a wrong address
            raise Refused(_UNREACHABLE[family])
        dev = route.dev
        if route.gateway:
            found = self._link_for_gateway(route.gateway)
            if found is None or (dev and dev != found):
                raise Refused(_UNREACHABLE[family])
            dev = found
        elif not dev:
            raise Refused(errno.EINVAL)
        link = self.links.get(dev)
        if link is None:
            raise Refused(errno.ENODEV)
        if not link.up:
            raise Refused(errno.ENETDOWN)
        if route.src and not self._local(route.src):
            raise Refused(errno.EINVAL)
        self.routes[route.key] = replace(route, dev=dev)

    def delete_route(self, route: Route) -> None:
        have = self.routes.get(route.key)
        if have is None or (route.protocol and have.protocol != route.protocol):
            raise Refused(errno.ESRCH)
        del self.routes[route.key]

    # --- tunnels ---

    def add_tunnel(self, tunnel: Tunnel) -> None:
        if tunnel.name in self.links:
            raise Refused(errno.EEXIST)
        for link in self.links.values():
            other = link.tunnel
            if other and (other.kind, other.local, other.remote) == (
                tunnel.kind,
                tunnel.local,
                tunnel.remote,
            ):
                raise Refused(errno.EEXIST)
        if tunnel.encap is Encap.FOU and FOU_MODULES[tunnel.family] not in self.modules:
            raise Refused(errno.EINVAL)
        self.links[tunnel.name] = FakeLink(tunnel.name, tunnel.kind, True, tunnel)

    def tunnels(self) -> list[Tunnel]:
        return [link.tunnel for link in self.links.values() if link.tunnel is not None]


class FakeRoutes:
    """The :class:`~.routes.RoutePort` over a :class:`FakeRouteKernel`."""

    def __init__(
        self, kernel: FakeRouteKernel | None = None, rt_tables: Sequence[Path] = RT_TABLES_PATHS
    ) -> None:
        self.kernel = kernel or FakeRouteKernel()
        self.rt_tables = tuple(rt_tables)
        self.batches = 0  # apply_routes calls that carried operations

    async def routes(self, protocol: int = 17) -> list[Route]:
        return sorted(r for r in self.kernel.routes.values() if r.protocol == protocol)

    async def apply_routes(
        self, replace: Sequence[Route], delete: Sequence[Route] = ()
    ) -> list[RouteFailure]:
        if replace or delete:
            self.batches += 1
        failures: list[RouteFailure] = []
        for route in delete:
            self.kernel.route_ops += 1
            try:
                self.kernel.delete_route(route)
            except Refused as err:
                if err.code != errno.ESRCH:
                    failures.append(RouteFailure("delete", route, err.code))
        for route in replace:
            self.kernel.route_ops += 1
            try:
                self.kernel.replace_route(route)
            except Refused as err:
                failures.append(RouteFailure("replace", route, err.code))
        return failures

    async def tunnels(self) -> list[Tunnel]:
        return self.kernel.tunnels()

    async def add_tunnel(self, tunnel: Tunnel) -> None:
        try:
            self.kernel.add_tunnel(tunnel)
        except Refused as err:
            raise TunnelError(f"creating {tunnel.describe()}: {err}", err.code) from err

    async def delete_tunnel(self, name: str) -> None:
        if name in self.kernel.links:
            self.kernel.delete_link(name)

    async def rules(self) -> list[Rule]:
        return list(self.kernel.rules)

    async def add_rule(self, rule: Rule) -> None:
        self.kernel.rules.append(rule)

    async def delete_rule(self, rule: Rule) -> None:
        if rule in self.kernel.rules:
            self.kernel.rules.remove(rule)

    async def fou_ports(self) -> set[tuple[int, Family]]:
        return set(self.kernel.fou)

    async def add_fou_port(self, port: int, family: Family) -> None:
        if FOU_MODULES[family] not in self.kernel.modules:
            raise TunnelError(f"FoU port add {port} ({family}): no {FOU_MODULES[family]} module")
        if (port, family) in self.kernel.fou:
            raise TunnelError(f"FoU port add {port} ({family}): exists", errno.EEXIST)
        self.kernel.fou.add((port, family))

    async def delete_fou_port(self, port: int, family: Family) -> None:
        if (port, family) not in self.kernel.fou:
            raise TunnelError(f"FoU port del {port} ({family}): no such port", errno.ENOENT)
        self.kernel.fou.discard((port, family))

    async def load_modules(self, names: Sequence[str]) -> None:
        self.kernel.modules |= set(names)

    def ensure_table_name(self, number: int, name: str) -> Path:
        return ensure_rt_tables_line(number, name, self.rt_tables)

    def close(self) -> None:
        """Nothing to release."""


def describe_routes(routes: Iterable[Route]) -> list[str]:
    """Routes as sorted text (tests compare kernel and fake by it)."""
    return sorted(r.describe() for r in routes)


__all__ = ["FakeRouteKernel", "FakeRoutes", "Refused", "describe_routes"]
