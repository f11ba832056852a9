"""Service VIPs on ``kube-dummy-if``, each with its local-table route sourced from the node IP.

Upstream (``pkg/controllers/proxy/linux_networking.go``) puts every VIP it serves on the dummy
interface ``kube-dummy-if`` as a /32 or /128 of scope link, and replaces the kernel's local
route for it with ``local VIP dev kube-dummy-if table local proto kernel scope host src
<node IP>`` so that the kernel never picks the VIP as the source of the host's own traffic
(issue #376). For IPv6 the kernel keeps its own local route (metric 0, no source) beside ours
(metric 1024), which would still win, so that one is deleted (#1698).

:class:`VipManager` plans that over a small port, :class:`LinkKernel`, that lists links,
addresses and routes and applies batches of operations; :mod:`.vips_netlink` implements it
with batched rtnetlink messages (:class:`~.vips_netlink.RealVipLinks`), :mod:`.vips_fake`
with the kernel's rules in memory (:class:`~.vips_fake.FakeVipLinks`).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from kube_router.dataplane.ipvs import HOST_PREFIX, Family, canonical_ip, family_of

log = logging.getLogger(__name__)

DUMMY_IF: Final = "kube-dummy-if"
LOCAL_IPS_EXCLUDED: Final = ("dummy", "kube", "docker")  # upstream's getAllLocalIPs

RT_TABLE_MAIN: Final = 254
RT_TABLE_LOCAL: Final = 255
RTN_UNICAST: Final = 1
RTN_LOCAL: Final = 2
RTPROT_KERNEL: Final = 2
RT_SCOPE_UNIVERSE: Final = 0
RT_SCOPE_LINK: Final = 253
RT_SCOPE_HOST: Final = 254
IP6_RT_PRIO_USER: Final = 1024  # the metric the kernel gives an IPv6 route added without one
# After IPv6 addresses are added, the kernel inserts their own local routes from a work queue:
# wait this long, at most, to delete them (the next full sync catches any left).
V6_SETTLE_S: Final = 2.0
V6_SETTLE_STEP_S: Final = 0.01
_LINK_LOCAL_V6: Final = ipaddress.ip_network("fe80::/10")

FAMILIES: Final[tuple[Family, ...]] = ("ipv4", "ipv6")


class VipError(Exception):
    """Programming the VIPs failed."""


class VipLinkGone(VipError):
    """kube-dummy-if vanished while it was being programmed."""


# --- what the kernel holds -----------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    up: bool
    kind: str = ""


@dataclass(frozen=True)
class Addr:
    index: int
    address: str  # canonical
    prefixlen: int
    scope: int = RT_SCOPE_UNIVERSE

    @property
    def family(self) -> Family:
        return family_of(self.address)


@dataclass(frozen=True)
class Route:
    """One route, by the fields that tell routes apart here."""

    dst: str  # canonical; "" for a default route
    dst_len: int
    oif: int
    table: int = RT_TABLE_LOCAL
    type: int = RTN_LOCAL
    protocol: int = RTPROT_KERNEL
    scope: int = RT_SCOPE_HOST
    prefsrc: str = ""
    metric: int = 0

    @property
    def family(self) -> Family:
        return family_of(self.dst) if self.dst else "ipv4"

    def describe(self) -> str:
        src = f" src {self.prefsrc}" if self.prefsrc else ""
        return (
            f"type {self.type} {self.dst}/{self.dst_len} dev #{self.oif} table {self.table}"
            f"{src} metric {self.metric}"
        )


# --- operations ----------------------------------------------------------------------------

OpKind = Literal[
    "add-link", "set-up", "del-link", "add-addr", "del-addr", "replace-route", "del-route"
]


@dataclass(frozen=True)
class Op:
    kind: OpKind
    name: str = ""  # add-link
    index: int = 0  # set-up, del-link, add-addr, del-addr
    addr: Addr | None = None
    route: Route | None = None

    def describe(self) -> str:
        if self.addr is not None:
            return f"{self.kind} {self.addr.address}/{self.addr.prefixlen} dev #{self.addr.index}"
        if self.route is not None:
            return f"{self.kind} {self.route.describe()}"
        return f"{self.kind} {self.name or f'#{self.index}'}"


class VipOpError(VipError):
    """The kernel refused operations (the others of the batch were applied)."""

    def __init__(self, failures: Sequence[tuple[Op, int]]) -> None:
        self.failures = list(failures)
        shown = "; ".join(
            f"{op.describe()}: {errno.errorcode.get(e, e)}" for op, e in self.failures[:5]
        )
        more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(f"the kernel refused {len(self.failures)} operation(s): {shown}{more}")

    def errnos(self) -> list[int]:
        return [e for _, e in self.failures]


class LinkKernel(Protocol):
    """Links, addresses and routes of one network namespace."""

    async def links(self) -> list[Link]: ...
    async def addresses(self) -> list[Addr]: ...
    async def routes(self, family: Family) -> list[Route]: ...

    async def apply(self, ops: Sequence[Op]) -> list[tuple[Op, int]]:
        """Apply every operation in order; the refused ones with their errno."""
        ...


# --- the port the proxy uses ----------------------------------------------------------------


@dataclass(frozen=True)
class VipDelta:
    """What a sync changed: VIPs added, removed, and VIPs whose route (or address) it fixed."""

    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    repaired: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.repaired)


@dataclass(frozen=True)
class VipState:
    """kube-dummy-if as the kernel holds it (None: no such link)."""

    up: bool
    addresses: frozenset[str]  # without IPv6 link-local
    routes: frozenset[Route]  # every route through it, in any table, without link-local/multicast


class VipLinks(Protocol):
    """kube-dummy-if and its VIPs (:class:`VipManager` documents each method)."""

    async def sync(
        self, wanted: Mapping[Family, Collection[str]], src: Mapping[Family, str], full: bool
    ) -> VipDelta: ...
    async def local_addresses(self) -> dict[Family, set[str]]: ...
    async def delete(self) -> None: ...
    async def state(self) -> VipState | None: ...
    def close(self) -> None: ...


# --- planning ------------------------------------------------------------------------------


def is_link_local(address: str) -> bool:
    return family_of(address) == "ipv6" and ipaddress.ip_address(address) in _LINK_LOCAL_V6


# Every sync spells out every VIP again: remember their canonical forms (parsing 10,000
# addresses costs a quarter of a second).
CANONICAL_CACHE: Final = 1 << 17
_canonical = functools.lru_cache(maxsize=CANONICAL_CACHE)(canonical_ip)


def wanted_map(
    wanted: Mapping[Family, Collection[str]], src: Mapping[Family, str]
) -> dict[str, str]:
    """Every wanted VIP (canonical) with the node IP its route takes as source."""
    out: dict[str, str] = {}
    for family, vips in wanted.items():
        if not vips:
            continue
        node_ip = src.get(family)
        if not node_ip:
            raise VipError(f"{len(vips)} {family} VIP(s) wanted but no {family} node IP")
        node_ip = canonical_ip(node_ip)
        if family_of(node_ip) != family:
            raise VipError(f"node IP {node_ip} given for {family}")
        for vip in vips:
            canonical = _canonical(vip)
            if family_of(canonical) != family:
                raise VipError(f"VIP {vip} listed under {family}")
            out[canonical] = node_ip
    return out


def vip_addr(index: int, vip: str) -> Addr:
    return Addr(index, vip, HOST_PREFIX[family_of(vip)], RT_SCOPE_LINK)


def vip_route(index: int, vip: str, node_ip: str) -> Route:
    """``local VIP dev kube-dummy-if table local proto kernel scope host src NODE_IP``."""
    if family_of(vip) == "ipv6":  # IPv6 routes keep no scope; no metric given means 1024
        return Route(
            vip, 128, index, scope=RT_SCOPE_UNIVERSE, prefsrc=node_ip, metric=IP6_RT_PRIO_USER
        )
    return Route(vip, 32, index, prefsrc=node_ip)


def _ours(route: Route) -> bool:
    """A route of a VIP's kind: a host route, not link-local."""
    return route.dst_len == HOST_PREFIX[route.family] and bool(route.dst)


@dataclass
class Plan:
    ops: list[Op] = field(default_factory=list)
    added: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    repaired: set[str] = field(default_factory=set)

    def delta(self) -> VipDelta:
        return VipDelta(frozenset(self.added), frozenset(self.removed), frozenset(self.repaired))


def plan_full(
    index: int, want: Mapping[str, str], addrs: Iterable[Addr], routes: Iterable[Route]
) -> Plan:
    """Operations taking what the kernel holds on the link to ``want`` (VIP -> node IP)."""
    plan = Plan()
    have = {a.address for a in addrs if a.index == index and not is_link_local(a.address)}
    mine = [
        r
        for r in routes
        if r.oif == index
        and _ours(r)
        and not is_link_local(r.dst)
        and r.type in (RTN_LOCAL, RTN_UNICAST)
    ]
    good = {r.dst for r in mine if r.dst in want and r == vip_route(index, r.dst, want[r.dst])}
    route_dels: list[Op] = []
    for r in mine:
        if r.dst in good and r == vip_route(index, r.dst, want[r.dst]):
            continue
        # Without a good route yet, the replace below overwrites an IPv4 one in place.
        if r.dst in want and r.dst not in good and r.family == "ipv4" and _replaceable_v4(r):
            continue
        route_dels.append(Op("del-route", route=r))
        if r.dst in want and r.dst in have:
            plan.repaired.add(r.dst)
    plan.removed = have - want.keys()
    plan.added = want.keys() - have
    plan.repaired |= {vip for vip in want.keys() - good if vip in have}
    plan.ops += route_dels
    plan.ops += [Op("del-addr", addr=vip_addr(index, vip)) for vip in sorted(plan.removed)]
    plan.ops += [Op("add-addr", addr=vip_addr(index, vip)) for vip in sorted(plan.added)]
    plan.ops += [
        Op("replace-route", route=vip_route(index, vip, want[vip]))
        for vip in sorted(want.keys() - good)
    ]
    # An IPv4 address added back under our surviving route (deleted from outside while other
    # addresses stayed) makes the kernel append its own route behind ours: delete that one.
    plan.ops += [
        Op("del-route", route=Route(vip, 32, index, prefsrc=vip))
        for vip in sorted(plan.added & good)
        if family_of(vip) == "ipv4"
    ]
    return plan


def _replaceable_v4(route: Route) -> bool:
    """An IPv4 local-table route our replace overwrites in place (same table, tos, priority)."""
    return route.table == RT_TABLE_LOCAL and route.metric == 0


def plan_incremental(index: int, want: Mapping[str, str], applied: Mapping[str, str]) -> Plan:
    """Operations from what the last sync applied (``applied``) to ``want``."""
    plan = Plan()
    plan.removed = applied.keys() - want.keys()
    plan.added = want.keys() - applied.keys()
    moved = {vip for vip in want.keys() & applied.keys() if want[vip] != applied[vip]}
    plan.repaired = moved
    for vip in sorted(plan.removed):
        plan.ops.append(Op("del-route", route=vip_route(index, vip, applied[vip])))
        plan.ops.append(Op("del-addr", addr=vip_addr(index, vip)))
    plan.ops += [Op("add-addr", addr=vip_addr(index, vip)) for vip in sorted(plan.added)]
    plan.ops += [
        Op("replace-route", route=vip_route(index, vip, want[vip]))
        for vip in sorted(plan.added | moved)
    ]
    return plan


# Refusals that mean "already so": the address is there, or what is deleted is gone already.
_ALREADY: Final = {
    "add-addr": {errno.EEXIST},
    "del-addr": {errno.EADDRNOTAVAIL},
    "del-route": {errno.ESRCH, errno.ENOENT},
}


def real_failures(failures: Iterable[tuple[Op, int]]) -> list[tuple[Op, int]]:
    return [(op, e) for op, e in failures if e not in _ALREADY.get(op.kind, ())]


# --- the manager ---------------------------------------------------------------------------


class VipManager:
    """The :class:`VipLinks` port over any :class:`LinkKernel` (real or fake)."""

    def __init__(self, kernel: LinkKernel, v6_settle_s: float = V6_SETTLE_S) -> None:
        self.kernel = kernel
        self.v6_settle_s = v6_settle_s
        self._index: int | None = None
        self._applied: dict[str, str] | None = None  # VIP -> node IP, after the last sync

    async def sync(
        self, wanted: Mapping[Family, Collection[str]], src: Mapping[Family, str], full: bool
    ) -> VipDelta:
        """Make kube-dummy-if (created and up if needed) hold exactly the wanted VIPs, each
        with its local route from ``src``'s node IP of its family.

        ``full`` reads the kernel and repairs whatever differs (addresses or routes changed
        from outside); otherwise only the difference from the last sync is applied (a full
        sync is done instead when there was none, or when the link vanished).
        """
        want = wanted_map(wanted, src)
        if not full and self._applied is not None and self._index is not None:
            try:
                return await self._apply(
                    self._index, plan_incremental(self._index, want, self._applied), want
                )
            except VipLinkGone:
                log.warning("%s vanished; syncing it in full", DUMMY_IF)
        return await self._sync_full(want)

    async def _sync_full(self, want: dict[str, str]) -> VipDelta:
        self._applied = None
        index = await self._ensure_link()
        addrs = await self.kernel.addresses()
        routes = [r for family in FAMILIES for r in await self.kernel.routes(family)]
        plan = plan_full(index, want, addrs, routes)
        return await self._apply(index, plan, want)

    async def _apply(self, index: int, plan: Plan, want: dict[str, str]) -> VipDelta:
        started = time.monotonic()
        failures = real_failures(await self.kernel.apply(plan.ops))
        if any(e == errno.ENODEV for _, e in failures):
            self._index = self._applied = None
            raise VipLinkGone(f"{DUMMY_IF} (index {index}) vanished during a sync")
        if failures:
            self._applied = None  # unknown: the next sync must read the kernel
            raise VipOpError(failures)
        new_v6 = {vip for vip in plan.added if family_of(vip) == "ipv6"}
        await self._settle_v6(index, new_v6, want)
        self._applied = dict(want)
        delta = plan.delta()
        if delta:
            log.info(
                "%s: %d VIP(s) added, %d removed, %d repaired in %.3fs (%d operations)",
                DUMMY_IF, len(delta.added), len(delta.removed), len(delta.repaired),
                time.monotonic() - started, len(plan.ops),
            )  # fmt: skip
        return delta

    async def _settle_v6(self, index: int, vips: set[str], want: Mapping[str, str]) -> None:
        """Delete the kernel's own local routes of new IPv6 VIPs (#1698); the kernel inserts
        them from a work queue, so poll for them a little while."""
        pending = set(vips)
        deadline = time.monotonic() + self.v6_settle_s
        while pending:
            extra = [
                r
                for r in await self.kernel.routes("ipv6")
                if r.oif == index and r.dst in pending and r != vip_route(index, r.dst, want[r.dst])
            ]
            if extra:
                failures = real_failures(
                    await self.kernel.apply([Op("del-route", route=r) for r in extra])
                )
                if failures:
                    raise VipOpError(failures)
                pending -= {r.dst for r in extra}
            if not pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(V6_SETTLE_STEP_S)
        if pending:
            log.debug(
                "%d IPv6 VIP(s) got no kernel route to delete within %.1fs",
                len(pending),
                self.v6_settle_s,
            )

    def close(self) -> None:
        """Release the kernel connection (the real adapter's socket); a no-op here."""

    async def _find_link(self) -> Link | None:
        return next((link for link in await self.kernel.links() if link.name == DUMMY_IF), None)

    async def _ensure_link(self) -> int:
        link = await self._find_link()
        if link is None:
            log.info("creating %s for the service VIPs", DUMMY_IF)
            await self._must(Op("add-link", name=DUMMY_IF))
            link = await self._find_link()
            if link is None:
                raise VipError(f"{DUMMY_IF} was created but is not listed")
        if not link.up:
            await self._must(Op("set-up", index=link.index))
        self._index = link.index
        return link.index

    async def _must(self, op: Op) -> None:
        failures = await self.kernel.apply([op])
        if failures:
            raise VipOpError(failures)

    async def local_addresses(self) -> dict[Family, set[str]]:
        """Every address of every link whose name contains none of dummy, kube, docker
        (upstream's getAllLocalIPs: loopback and IPv6 link-local included)."""
        skip = {
            link.index
            for link in await self.kernel.links()
            if any(word in link.name for word in LOCAL_IPS_EXCLUDED)
        }
        out: dict[Family, set[str]] = {"ipv4": set(), "ipv6": set()}
        for addr in await self.kernel.addresses():
            if addr.index not in skip:
                out[addr.family].add(addr.address)
        return out

    async def delete(self) -> None:
        """Remove kube-dummy-if (its addresses and routes go with it); absent is fine."""
        self._index = self._applied = None
        link = await self._find_link()
        if link is None:
            return
        failures = [
            (op, e)
            for op, e in await self.kernel.apply([Op("del-link", index=link.index)])
            if e != errno.ENODEV
        ]
        if failures:
            raise VipOpError(failures)
        log.info("deleted %s", DUMMY_IF)

    async def state(self) -> VipState | None:
        link = await self._find_link()
        if link is None:
            return None
        addrs = frozenset(
            a.address
            for a in await self.kernel.addresses()
            if a.index == link.index and not is_link_local(a.address)
        )
        every = [r for family in FAMILIES for r in await self.kernel.routes(family)]
        routes = frozenset(
            r
            for r in every
            if r.oif == link.index
            and r.dst
            and not is_link_local(r.dst)
            and r.type in (RTN_LOCAL, RTN_UNICAST)
        )
        return VipState(link.up, addrs, routes)
