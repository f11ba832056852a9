"""A strict in-memory network namespace: links, addresses and routes with the kernel's rules.

Only what :class:`~.vips.VipManager` touches is modelled, but that exactly as the kernel does it
(``net/ipv4/devinet.c``, ``fib_frontend.c``, ``net/ipv6/addrconf.c``, ``route.c``): the errnos
of refusals, the local route the kernel adds with an address (IPv4: sourced from the address and
replaced in place by ours; IPv6: metric 0 without a source, beside ours at metric 1024), what
deleting an address takes with it, and which route a delete picks. ``tests/vm/test_vips.py``
runs the same sequences against the kernel and this fake and demands the same results.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from kube_router.dataplane.ipvs import Family, canonical_ip, family_of
from kube_router.dataplane.vips import (
    RT_SCOPE_HOST,
    RT_SCOPE_UNIVERSE,
    Addr,
    Link,
    Op,
    Route,
    VipManager,
    is_link_local,
)

LOOPBACK_INDEX = 1
LOOPBACK_V4 = ("127.0.0.1", 8)
LOOPBACK_V6 = ("::1", 128)
RT_SCOPE_NOWHERE = 255


class KernelRefused(Exception):
    """An operation the kernel would refuse, with its errno."""

    def __init__(self, code: int) -> None:
        super().__init__(errno.errorcode.get(code, str(code)))
        self.code = code


@dataclass
class FakeNetns:
    """One network namespace's links, addresses and routes (lo up, as the test fixtures make
    it)."""

    links: dict[int, Link] = field(default_factory=dict)
    addrs: list[Addr] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    ops_applied: int = 0

    def __post_init__(self) -> None:
        if not self.links:
            self.links[LOOPBACK_INDEX] = Link(LOOPBACK_INDEX, "lo", True)
            self.add_address("lo", *LOOPBACK_V4)
            self.add_address("lo", *LOOPBACK_V6)

    # --- what a test does from outside (ip link / ip addr / ip route) ---------------------

    def index_of(self, name: str) -> int:
        for link in self.links.values():
            if link.name == name:
                return link.index
        raise KernelRefused(errno.ENODEV)

    def add_link(self, name: str, up: bool = True, kind: str = "dummy") -> int:
        self.new_link(name, kind)
        index = self.index_of(name)
        if up:
            self.links[index] = replace(self.links[index], up=True)
        return index

    def add_address(self, link: str, address: str, prefixlen: int | None = None) -> None:
        """``ip addr add`` (an IPv6 one with nodad)."""
        address = canonical_ip(address)
        full = 128 if family_of(address) == "ipv6" else 32
        scope = RT_SCOPE_HOST if link == "lo" else RT_SCOPE_UNIVERSE
        self.new_addr(Addr(self.index_of(link), address, prefixlen or full, scope))

    def del_address(self, link: str, address: str) -> None:
        """``ip addr del``."""
        found = self._addr(self.index_of(link), canonical_ip(address))
        if found is None:
            raise KernelRefused(errno.EADDRNOTAVAIL)
        self.del_addr(found)

    # --- the kernel's rules ---------------------------------------------------------------

    def apply(self, op: Op) -> None:
        self.ops_applied += 1
        if op.kind == "add-link":
            self.new_link(op.name, "dummy")
        elif op.kind == "set-up":
            self._link(op.index)
            self.links[op.index] = replace(self.links[op.index], up=True)
        elif op.kind == "del-link":
            self.del_link(op.index)
        elif op.kind == "add-addr" and op.addr is not None:
            self.new_addr(op.addr)
        elif op.kind == "del-addr" and op.addr is not None:
            self._link(op.addr.index)
            found = self._addr(op.addr.index, op.addr.address)
            if found is None:
                raise KernelRefused(errno.EADDRNOTAVAIL)
            self.del_addr(found)
        elif op.kind == "replace-route" and op.route is not None:
            self.replace_route(op.route)
        elif op.kind == "del-route" and op.route is not None:
            self.del_route(op.route)
        else:
            raise KernelRefused(errno.EINVAL)

    def _link(self, index: int) -> Link:
        link = self.links.get(index)
        if link is None:
            raise KernelRefused(errno.ENODEV)
        return link

    def _addr(self, index: int, address: str) -> Addr | None:
        return next((a for a in self.addrs if a.index == index and a.address == address), None)

    def new_link(self, name: str, kind: str) -> None:
        if any(link.name == name for link in self.links.values()):
            raise KernelRefused(errno.EEXIST)
        index = max(self.links, default=0) + 1
        self.links[index] = Link(index, name, False, kind)

    def del_link(self, index: int) -> None:
        self._link(index)
        del self.links[index]
        self.addrs = [a for a in self.addrs if a.index != index]
        self.routes = [r for r in self.routes if r.oif != index]

    def new_addr(self, addr: Addr) -> None:
        self._link(addr.index)
        v6 = addr.family == "ipv6"
        for a in self.addrs:
            same = a.index == addr.index and a.address == addr.address
            if same and (v6 or a.prefixlen == addr.prefixlen):
                raise KernelRefused(errno.EEXIST)
        scope = addr.scope
        if v6:  # an IPv6 address's scope follows from the address itself
            scope = RT_SCOPE_HOST if addr.address == "::1" else RT_SCOPE_UNIVERSE
        self.addrs.append(replace(addr, scope=scope))
        self._add_kernel_route(addr.index, addr.address)

    def _add_kernel_route(self, index: int, address: str) -> None:
        full = 128 if family_of(address) == "ipv6" else 32
        if family_of(address) == "ipv6":
            route = Route(address, full, index, scope=RT_SCOPE_UNIVERSE)
            if not any(self._same_v6_key(r, route) for r in self.routes):  # else EEXIST, ignored
                self.routes.append(route)
            return
        route = Route(address, full, index, prefsrc=address)
        if route not in self.routes:  # appended after any route of the same key
            self.routes.append(route)

    @staticmethod
    def _same_v6_key(a: Route, b: Route) -> bool:
        return (a.table, a.dst, a.dst_len, a.metric, a.oif) == (
            b.table,
            b.dst,
            b.dst_len,
            b.metric,
            b.oif,
        )

    def del_addr(self, addr: Addr) -> None:
        self.addrs.remove(addr)
        if addr.family == "ipv6":  # the kernel's own route (metric 0, no source) only
            kernel = Route(addr.address, 128, addr.index, scope=RT_SCOPE_UNIVERSE)
            self.routes = [r for r in self.routes if r != kernel]
            return
        # The kernel's own local route (sourced from the address); ours, sourced from the
        # node IP, stays unless that was the link's last IPv4 address (then IP is disabled on
        # the link and every IPv4 route through it goes).
        kernel = Route(addr.address, 32, addr.index, prefsrc=addr.address)
        if kernel in self.routes:
            self.routes.remove(kernel)
        if not any(a.index == addr.index and a.family == "ipv4" for a in self.addrs):
            self.routes = [r for r in self.routes if r.oif != addr.index or r.family != "ipv4"]

    def _check_prefsrc(self, route: Route) -> None:
        if not route.prefsrc:
            return
        for a in self.addrs:
            if a.address != route.prefsrc:
                continue
            if route.family == "ipv4" or a.index == route.oif or not is_link_local(a.address):
                return
        raise KernelRefused(errno.EINVAL)  # "Invalid prefsrc address" / "Invalid source address"

    def replace_route(self, route: Route) -> None:
        link = self._link(route.oif)
        self._check_prefsrc(route)
        if route.family == "ipv6" and not link.up:
            raise KernelRefused(errno.ENETDOWN)  # "Nexthop device is not up"
        for i, r in enumerate(self.routes):
            if (r.family, r.table, r.dst, r.dst_len, r.metric) == (
                route.family,
                route.table,
                route.dst,
                route.dst_len,
                route.metric,
            ):
                self.routes[i] = route
                return
        self.routes.append(route)

    def del_route(self, route: Route) -> None:
        self._link(route.oif)
        for r in sorted(self.routes, key=lambda r: r.metric):
            if self._deletes(route, r):
                self.routes.remove(r)
                return
        raise KernelRefused(errno.ESRCH)

    @staticmethod
    def _deletes(asked: Route, r: Route) -> bool:
        """Whether a delete request ``asked`` matches route ``r`` (only the fields the kernel
        compares: IPv4 also type and source, IPv6 the metric when one is given)."""
        key = (asked.family, asked.table, asked.dst, asked.dst_len, asked.oif)
        if key != (r.family, r.table, r.dst, r.dst_len, r.oif):
            return False
        if asked.family == "ipv6":
            return not asked.metric or asked.metric == r.metric
        return (
            (not asked.type or asked.type == r.type)
            and (not asked.prefsrc or asked.prefsrc == r.prefsrc)
            and (not asked.metric or asked.metric == r.metric)
        )


class FakeKernel:
    """The :class:`~.vips.LinkKernel` port over a :class:`FakeNetns`."""

    def __init__(self, netns: FakeNetns | None = None) -> None:
        self.netns = netns or FakeNetns()

    async def links(self) -> list[Link]:
        return sorted(self.netns.links.values(), key=lambda link: link.index)

    async def addresses(self) -> list[Addr]:
        return list(self.netns.addrs)

    async def routes(self, family: Family) -> list[Route]:
        return [r for r in self.netns.routes if r.family == family]

    async def apply(self, ops: Sequence[Op]) -> list[tuple[Op, int]]:
        failures: list[tuple[Op, int]] = []
        for op in ops:
            try:
                self.netns.apply(op)
            except KernelRefused as err:
                failures.append((op, err.code))
        return failures


class FakeVipLinks(VipManager):
    """The VIP port over a fake namespace (``.netns`` for a test's outside changes)."""

    def __init__(self, netns: FakeNetns | None = None) -> None:
        self.fake = FakeKernel(netns)
        self.netns = self.fake.netns
        super().__init__(self.fake)
