"""Learned routes into the kernel: the route injector, its route syncer and the overlay set-up.

Upstream's ``watchBgpUpdates``/``injectRoute`` and route syncer (kube-router.md §4.2 "Learned
routes → kernel", §5.2). gobgpd sends one best path per event (gobgp.md §4.4), so the
controller queues :class:`~kube_router.bgp.model.RouteEvent` and
:class:`~kube_router.bgp.model.PeerEvent` (peer events come on a stream of their own) and hands
every burst to :meth:`RouteInjector.handle`, or lets :meth:`RouteInjector.run` drain the queue:
the last event per prefix wins and the burst becomes one batch of netlink requests.

Per announced prefix (next hop NH, from neighbour N):

- overlay on, ``--override-nexthop`` off, and (``--overlay-type=full`` or NH outside every
  local node subnet): tunnel ``tun-<hash of NH>`` (ipip/ip6tnl, or GUE-encapsulated with FoU)
  from the node IP of that family to NH, the route ``PREFIX dev tun-x src NODE_IP proto 17``
  and ``NH/32 dev tun-x table 77 proto 17`` (pods' traffic to the node itself, through the
  ``from <pod CIDR> lookup 77`` rules);
- else NH on a local node subnet: ``PREFIX via NH proto 17``;
- else nothing (logged once): the host's own routes must carry it.

A withdrawal deletes our route to the prefix. A tunnel no route uses any longer is deleted
when its peer is not established (kept while it is, so a flapping route does not churn it).

Public API (for the controller):

- :class:`RouteInjector` ``(port, settings, node, on_sync_time=None)``; ``port`` a
  :class:`~kube_router.dataplane.routes.RoutePort` (``NetlinkRoutes(netns)`` or ``FakeRoutes``)
- ``await setup_overlay()``: at start and after a settings change: rt_tables' ``77
  kube-router``, the ``from <pod CIDR> lookup 77`` rules (removed with the overlay off), FoU
  modules and GUE ports (the port removed when encap is not FoU)
- ``await handle(events) -> BatchResult``: one coalesced burst
- ``await run(queue)``: drains an ``asyncio.Queue`` of events into :meth:`handle` forever
- ``await sync_routes() -> BatchResult``: the route syncer, every
  ``--injected-routes-sync-period``: recreates missing or changed tunnels, replaces every route
  of the map, deletes proto-17 routes (main table and 77) and ``tun-*`` tunnels not in it
- ``await remove_peer(address)``: a node deleted or a peer gone: its routes and tunnel go
- ``await update(settings=None, node=None)``: new overlay settings or node addresses; the
  overlay set-up again, then every route decided again (an encap switch recreates the tunnels)
- metrics: ``routes_synced`` (routes in the map), ``routes_added``, ``routes_removed``,
  ``events_received``, ``last_sync_s``; ``on_sync_time(seconds)`` after each syncer run
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from kube_router.bgp.model import PeerEvent, RouteEvent, SessionState
from kube_router.controllers.routing.injector_model import (
    OVERLAY_FULL,
    OVERLAY_SUBNET,
    BatchResult,
    Decision,
    Event,
    InjectorSettings,
    NodeInfo,
)
from kube_router.dataplane.routes import (
    FOU_MODULES,
    MAIN_TABLE,
    OVERLAY_TABLE,
    OVERLAY_TABLE_NAME,
    Encap,
    Route,
    RouteError,
    RoutePort,
    RtTablesError,
    Rule,
    Tunnel,
    TunnelError,
    canonical_cidr,
    family_of,
    host_prefix,
    tunnel_name,
)

__all__ = [
    "OVERLAY_FULL",
    "OVERLAY_SUBNET",
    "BatchResult",
    "Decision",
    "Event",
    "InjectorSettings",
    "NodeInfo",
    "RouteInjector",
    "tunnel_route",
]

log = logging.getLogger(__name__)

OUR_TABLES: Final = frozenset({MAIN_TABLE, OVERLAY_TABLE})


@functools.lru_cache(maxsize=64)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A node subnet, parsed once (it is asked about for every learned route)."""
    return ipaddress.ip_network(cidr, strict=False)


def tunnel_route(tunnel: Tunnel) -> Route:
    """``REMOTE/32 dev tun-x table 77 proto 17``."""
    return Route(host_prefix(tunnel.remote), dev=tunnel.name, table=OVERLAY_TABLE)


class RouteInjector:
    """Routes learned over BGP, kept in a state map and in the kernel (see the module doc)."""

    def __init__(
        self,
        port: RoutePort,
        settings: InjectorSettings,
        node: NodeInfo,
        on_sync_time: Callable[[float], None] | None = None,
    ) -> None:
        self.port = port
        self.settings = settings
        self.node = node
        self.on_sync_time = on_sync_time
        self.routes_added = 0
        self.routes_removed = 0
        self.events_received = 0
        self.last_sync_s = 0.0
        self._announced: dict[str, RouteEvent] = {}  # prefix -> its last announcement
        self._decided: dict[str, Decision] = {}  # prefix -> what is (to be) in the kernel
        self._tunnels: dict[str, Tunnel] = {}  # tunnels we made, by name
        self._tunnel_peer: dict[str, str] = {}  # tunnel name -> the neighbour that needed it
        self._peers: dict[str, SessionState] = {}
        self._logged: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()

    # --- state the controller reads ---

    @property
    def routes_synced(self) -> int:
        """Routes in the state map (upstream's host_routes_synced)."""
        return sum(1 for d in self._decided.values() if d.route is not None)

    def wanted_routes(self) -> list[Route]:
        routes = [d.route for d in self._decided.values() if d.route is not None]
        return routes + [tunnel_route(t) for t in self._tunnels.values()]

    def wanted_tunnels(self) -> dict[str, Tunnel]:
        return dict(self._tunnels)

    # --- deciding ---

    def _once(self, prefix: str, message: str, *args: object) -> None:
        if (prefix, message) not in self._logged:
            self._logged.add((prefix, message))
            log.warning(message, *args)

    def _on_local_subnet(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        for cidr in self.node.subnets:
            net = _network(cidr)
            if net.version == ip.version and ip in net:
                return True
        return False

    def decide(self, event: RouteEvent) -> Decision:
        """Where ``event``'s prefix goes (no route: a log line, once)."""
        try:
            prefix = canonical_cidr(event.prefix)
            next_hop = str(ipaddress.ip_address(event.next_hop))
        except (RouteError, ValueError):
            self._once(
                event.prefix, "not injecting %s via %r: malformed", event.prefix, event.next_hop
            )
            return Decision(None)
        family = family_of(prefix)
        node_ip = self.node.ips.get(family, "")
        if family_of(next_hop) != family or next_hop == node_ip:
            self._once(
                prefix,
                "not injecting %s via %s: next hop of another family or ours",
                prefix,
                next_hop,
            )
            return Decision(None)
        on_subnet = self._on_local_subnet(next_hop)
        s = self.settings
        if (
            s.enable_overlay
            and not s.override_next_hop
            and (s.overlay_type == OVERLAY_FULL or not on_subnet)
        ):
            if not node_ip:
                self._once(
                    prefix, "no %s node IP: no tunnel for %s via %s", family, prefix, next_hop
                )
                return Decision(None)
            port = s.encap_port if s.encap is Encap.FOU else 0
            tunnel = Tunnel(tunnel_name(next_hop), node_ip, next_hop, s.encap, port)
            route = Route(prefix, dev=tunnel.name, src=node_ip)
            return Decision(route, tunnel, event.neighbor)
        if on_subnet:
            return Decision(Route(prefix, gateway=next_hop), None, event.neighbor)
        self._once(
            prefix,
            "not injecting %s: next hop %s is on no local subnet and the overlay is off",
            prefix,
            next_hop,
        )
        return Decision(None, None, event.neighbor)

    # --- handling events ---

    async def handle(self, events: Iterable[Event]) -> BatchResult:
        """One burst: peer states first, then the last event per prefix, in one batch."""
        latest: dict[str, RouteEvent] = {}
        for event in events:
            if isinstance(event, PeerEvent):
                self._peers[event.address] = event.state
            else:
                self.events_received += 1
                latest[event.prefix] = event
        async with self._lock:
            for prefix, event in latest.items():
                if event.withdraw:
                    self._announced.pop(prefix, None)
                else:
                    self._announced[prefix] = event
            return await self._reconcile(set(latest))

    async def run(self, queue: asyncio.Queue[Event]) -> None:
        """Forever: wait for an event, drain what else is queued, handle it as one batch.
        A failed batch is logged (the syncer repairs); cancellation ends it."""
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            try:
                result = await self.handle(batch)
            except RouteError as err:
                log.error("injecting %d learned route event(s) failed: %s", len(batch), err)
                continue
            _log_result("learned routes", result)

    async def remove_peer(self, address: str) -> BatchResult:
        """A node was deleted or a peer is gone: its routes and its tunnel go."""
        async with self._lock:
            self._peers.pop(address, None)
            gone = {p for p, e in self._announced.items() if address in (e.neighbor, e.next_hop)}
            for prefix in gone:
                del self._announced[prefix]
            for name, peer in list(self._tunnel_peer.items()):
                tunnel = self._tunnels.get(name)
                if peer == address or (tunnel is not None and tunnel.remote == address):
                    self._tunnel_peer[name] = ""  # no established peer keeps it now
            return await self._reconcile(gone)

    async def update(
        self, settings: InjectorSettings | None = None, node: NodeInfo | None = None
    ) -> BatchResult:
        """New settings or node addresses: the overlay set-up again (as
        :meth:`setup_overlay`), then every route decided again (an encap switch recreates
        every tunnel). Raises RouteError when the set-up fails (routes untouched then)."""
        async with self._lock:
            self.settings = settings or self.settings
            self.node = node or self.node
            self._logged.clear()
            await self._setup_overlay()
            return await self._reconcile(set(self._announced) | set(self._decided))

    # --- applying ---

    async def _reconcile(self, prefixes: set[str]) -> BatchResult:
        result = BatchResult()
        new: dict[str, Decision] = {}
        for prefix in prefixes:
            event = self._announced.get(prefix)
            new[prefix] = self.decide(event) if event is not None else Decision(None)
        fresh = await self._ensure_tunnels(
            {d.tunnel.name: (d.tunnel, d.neighbor) for d in new.values() if d.tunnel}, result
        )
        replace_routes: list[Route] = [tunnel_route(self._tunnels[n]) for n in fresh]
        delete_routes: list[Route] = []
        for prefix, decision in new.items():
            old = self._decided.get(prefix)
            old_route = old.route if old else None
            if decision.route is None:
                if old_route is not None:
                    delete_routes.append(old_route)
                    self.routes_removed += 1
                self._decided.pop(prefix, None)
                continue
            if old_route is None:
                self.routes_added += 1
            if decision.route != old_route or (decision.tunnel and decision.tunnel.name in fresh):
                replace_routes.append(decision.route)
            self._decided[prefix] = decision
        # A tunnel recreated lost every route through it, those of other prefixes too. (Only
        # then is the whole map walked: a burst costs its own size, not the map's.)
        if fresh:
            replace_routes += [
                d.route
                for p, d in self._decided.items()
                if p not in new and d.route is not None and d.tunnel and d.tunnel.name in fresh
            ]
        await self._apply(replace_routes, delete_routes, result)
        await self._collect_tunnels(result)
        return result

    async def _ensure_tunnels(
        self, wanted: Mapping[str, tuple[Tunnel, str]], result: BatchResult
    ) -> set[str]:
        """Create the tunnels not made yet (recreate one whose kernel twin differs: another
        encap, port or end); the names (re)created, whose routes must be written again."""
        fresh: set[str] = set()
        kernel: dict[str, Tunnel] | None = None
        for name, (tunnel, neighbor) in wanted.items():
            self._tunnel_peer[name] = neighbor or self._tunnel_peer.get(name, "")
            if self._tunnels.get(name) == tunnel:
                continue
            if kernel is None:
                kernel = {t.name: t for t in await self.port.tunnels()}
            if await self._make_tunnel(tunnel, kernel.get(name), result):
                fresh.add(name)
        return fresh

    async def _make_tunnel(self, tunnel: Tunnel, have: Tunnel | None, result: BatchResult) -> bool:
        """``tunnel`` in the kernel, given what the kernel has under its name; False: failed."""
        try:
            if have is not None and have != tunnel:
                log.info("recreating tunnel %s as %s", have.describe(), tunnel.describe())
                await self.port.delete_tunnel(tunnel.name)
                have = None
            if have is None:
                await self.port.add_tunnel(tunnel)
                result.tunnels_added.append(tunnel.name)
        except TunnelError as err:
            result.errors.append(str(err))
            return False
        self._tunnels[tunnel.name] = tunnel
        return True

    def _current_spec(self, tunnel: Tunnel) -> bool:
        """Whether ``tunnel`` is what the present settings would make to its remote end."""
        s = self.settings
        port = s.encap_port if s.encap is Encap.FOU else 0
        local = self.node.ips.get(tunnel.family, "")
        return s.enable_overlay and tunnel == Tunnel(
            tunnel.name, local, tunnel.remote, s.encap, port
        )

    async def _collect_tunnels(self, result: BatchResult) -> None:
        """Delete the tunnels no route uses, unless their peer is established (and they are
        what the settings would make now)."""
        if not self._tunnels:  # no tunnel to weigh: the map is not walked for each burst
            return
        used = {d.tunnel.name for d in self._decided.values() if d.tunnel is not None}
        for name, tunnel in list(self._tunnels.items()):
            if name in used:
                continue
            peer = self._tunnel_peer.get(name, "")
            if (
                peer
                and self._peers.get(peer) is SessionState.ESTABLISHED
                and self._current_spec(tunnel)
            ):
                continue
            try:
                await self.port.delete_tunnel(name)
            except TunnelError as err:
                result.errors.append(str(err))
                continue
            del self._tunnels[name]
            self._tunnel_peer.pop(name, None)
            result.tunnels_deleted.append(name)

    async def _apply(
        self, replace_routes: list[Route], delete_routes: list[Route], result: BatchResult
    ) -> None:
        failures = await self.port.apply_routes(replace_routes, delete_routes)
        refused = {(f.op, f.route) for f in failures}
        result.replaced += sum(1 for r in replace_routes if ("replace", r) not in refused)
        result.deleted += sum(1 for r in delete_routes if ("delete", r) not in refused)
        result.failures += failures

    # --- the route syncer ---

    async def sync_routes(self) -> BatchResult:
        """Put the kernel back to the state map: missing or changed tunnels recreated, every
        route replaced, proto-17 routes (main table and 77) and tun-* tunnels not in the map
        deleted. Run it every --injected-routes-sync-period, the first time one period after
        the initial events were handled (an empty map would delete what graceful restart
        kept)."""
        async with self._lock:
            started = time.monotonic()
            result = BatchResult()
            kernel = {t.name: t for t in await self.port.tunnels()}
            for name, tunnel in list(self._tunnels.items()):
                if kernel.get(name) != tunnel:
                    await self._make_tunnel(tunnel, kernel.get(name), result)
            for name in kernel.keys() - self._tunnels.keys():
                try:
                    await self.port.delete_tunnel(name)
                    result.tunnels_deleted.append(name)
                except TunnelError as err:
                    result.errors.append(str(err))
            wanted = self.wanted_routes()
            keys = {r.key for r in wanted}
            stale = [
                r for r in await self.port.routes() if r.table in OUR_TABLES and r.key not in keys
            ]
            await self._apply(wanted, stale, result)
            self.last_sync_s = time.monotonic() - started
        if self.on_sync_time is not None:
            self.on_sync_time(self.last_sync_s)
        _log_result("route syncer", result)
        return result

    # --- overlay set-up ---

    async def setup_overlay(self) -> None:
        """rt_tables' ``77 kube-router`` line and the ``from <pod CIDR> lookup 77`` rules with
        the overlay on (the rules removed with it off); with FoU, its modules and GUE port per
        family (the port removed otherwise). Raises RouteError (the controller retries)."""
        async with self._lock:
            await self._setup_overlay()

    async def _setup_overlay(self) -> None:
        on = self.settings.enable_overlay
        if on:
            try:
                path = self.port.ensure_table_name(OVERLAY_TABLE, OVERLAY_TABLE_NAME)
                log.debug("table %d named in %s", OVERLAY_TABLE, path)
            except RtTablesError as err:
                log.warning("table %d keeps no name: %s", OVERLAY_TABLE, err)
        await self._sync_rules(on)
        await self._sync_fou()

    async def _sync_rules(self, on: bool) -> None:
        ours = {Rule(canonical_cidr(c)) for c in self.node.pod_cidrs}
        have = [r for r in await self.port.rules() if r in ours]
        if on:
            for rule in sorted(ours - set(have)):
                await self.port.add_rule(rule)
                log.info("added rule from %s lookup %d", rule.src, rule.table)
            return
        for rule in have:
            await self.port.delete_rule(rule)
            log.info("deleted rule from %s lookup %d (overlay off)", rule.src, rule.table)

    async def _sync_fou(self) -> None:
        s = self.settings
        families = [f for f in FOU_MODULES if self.node.ips.get(f)]
        if s.enable_overlay and s.encap is Encap.FOU:
            await self.port.load_modules([FOU_MODULES[f] for f in families])
            have = await self.port.fou_ports()
            for family in families:
                if (s.encap_port, family) not in have:
                    await self.port.add_fou_port(s.encap_port, family)
                    log.info("added FoU GUE port %d (%s)", s.encap_port, family)
            return
        have = await self.port.fou_ports()
        for family in families:
            if (s.encap_port, family) in have:
                await self.port.delete_fou_port(s.encap_port, family)
                log.info("deleted FoU GUE port %d (%s): encap is not fou", s.encap_port, family)


def _log_result(what: str, result: BatchResult) -> None:
    if result.failures:
        shown = "; ".join(f.describe() for f in result.failures[:5])
        log.error("%s: the kernel refused %d route op(s): %s", what, len(result.failures), shown)
    for error in result.errors:
        log.error("%s: %s", what, error)
    if result.tunnels_added or result.tunnels_deleted:
        log.info(
            "%s: tunnels added %s, deleted %s",
            what, result.tunnels_added or "-", result.tunnels_deleted or "-",
        )  # fmt: skip
    log.debug("%s: %d route(s) written, %d deleted", what, result.replaced, result.deleted)


__all__ = [
    "OVERLAY_FULL",
    "OVERLAY_SUBNET",
    "BatchResult",
    "Decision",
    "InjectorSettings",
    "NodeInfo",
    "RouteInjector",
]
