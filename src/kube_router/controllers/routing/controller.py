"""The network routing controller (NRC): pod networking over BGP, as upstream's.

Start (upstream's order, kube-router.md §4.2): the CNI conf file gets this node's pod CIDRs and
MTU; the node's sets and FORWARD/MASQUERADE rules are written (then the policy controller may
start: ``cni_firewall_setup``); kube-bridge and the bridge sysctls; the overlay's table 77 and
rules; gobgpd (started, or adopted from the previous agent) with the global settings.

Sync (every ``--routes-sync-period``, the first one, after a failure, and on any Node, Service
or EndpointSlice change): the node sets and rules, the BGP peers (iBGP from the Nodes, external
from flags or annotations), the paths this node originates (pod CIDRs, service VIPs; only the
Services an event touched are looked at again on a partial sync), the import and export
policies, and ``bgp_peer_info``. gobgpd's state is reconciled, never re-added blindly.

Beside the sync: two watch streams (best paths, peer states) feed the route injector, which
writes learned routes into the kernel in coalesced netlink batches; the route syncer puts them
back every ``--injected-routes-sync-period``. When gobgpd restarts, everything is pushed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

from kube_router import health
from kube_router.bgp.engine import EngineError
from kube_router.bgp.model import PeerEvent, PeerSpec, RouteEvent
from kube_router.config_checks import peer_passwords
from kube_router.controllers.base import Controller, RunContext
from kube_router.controllers.routing import metrics as rmetrics
from kube_router.controllers.routing import node_setup
from kube_router.controllers.routing.aws import Ec2Client
from kube_router.controllers.routing.compile import advertise, peers, policies
from kube_router.controllers.routing.compile.settings import (
    Problem,
    RoutingSettings,
    SettingsError,
    bfd_warning,
    build_settings,
)
from kube_router.controllers.routing.injector import RouteInjector
from kube_router.controllers.routing.ports import RoutingPorts
from kube_router.controllers.shared.services import Ranges
from kube_router.controllers.sync import Clock, RealClock, SyncRunner
from kube_router.dataplane.ipvs import Family
from kube_router.k8s.informer import FuncHandler
from kube_router.k8s.informers import SERVICE_NAME_INDEX, slice_service
from kube_router.k8s.models import EndpointSlice, Node, Service, object_key
from kube_router.node import NodeIdentityError, primary_ip

log = logging.getLogger(__name__)

WATCH_RETRY_S: Final = 1.0
EVENT_QUEUE_MAX: Final = 0  # unbounded: gobgpd sends one path per event


class RoutingStartError(Exception):
    """The routing controller cannot start (bad BGP settings of this node)."""


class RoutingController(Controller):
    name = health.ROUTES

    def __init__(
        self,
        ctx: RunContext,
        ports: RoutingPorts | None = None,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        self.ports = ports
        self.env = env
        self.clock = clock or RealClock()
        self.runner = SyncRunner(
            "routing",
            self.sync,
            period=cfg.routes_sync_period,
            on_success=self.beat,
            clock=self.clock,
        )
        self.settings: RoutingSettings | None = None
        self.injector: RouteInjector | None = None
        self.counters = rmetrics.Counters()
        self.metrics: rmetrics.RoutingMetrics | None = None
        self.vips = advertise.VipTable()
        self.ranges = Ranges.parse(
            cfg.strict_external_ip_validation,
            cfg.service_cluster_ip_range,
            cfg.service_external_ip_range,
            cfg.loadbalancer_ip_range,
        )
        self.events: asyncio.Queue[RouteEvent | PeerEvent] = asyncio.Queue(EVENT_QUEUE_MAX)
        self._dirty_services: set[str] = set()
        self._nodes_changed = True
        self._known_nodes: dict[str, str] = {}  # node name -> primary IP, to withdraw its routes
        self._reported: dict[str, str] = {}
        self._bfd_warned = False  # gobgpd has no BFD: said once, whoever asked for it
        self._vip_services: set[str] = set()  # Services with VIPs in the table
        self._external: list[str] = []  # addresses of the external peers
        self._advertised: frozenset[str] = frozenset()  # VIPs in the last sync
        self._lock = asyncio.Lock()
        #: --disable-source-dest-check: the EC2 client (tests give a fake); set before start.
        self.aws_client: Ec2Client | None = None
        self.node_setup: node_setup.NodeSetup | None = None

    @property
    def aws_task(self) -> asyncio.Task[None] | None:
        """The running EC2 source/destination check, if any."""
        return self.node_setup.aws_task if self.node_setup is not None else None

    @property
    def sync_period(self) -> float:
        return float(self.ctx.config.routes_sync_period)

    @property
    def families(self) -> tuple[Family, ...]:
        cfg = self.ctx.config
        both: tuple[tuple[Family, bool], ...] = (
            ("ipv4", cfg.enable_ipv4),
            ("ipv6", cfg.enable_ipv6),
        )
        return tuple(f for f, on in both if on)

    def local_node(self) -> Node:
        node = self.ctx.informers.nodes.store.get(self.ctx.node.name)
        if node is None:
            raise RoutingStartError(f"node {self.ctx.node.name} is not in the API")
        return node

    # --- start-up ----------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.ctx.config
        try:
            self.settings = build_settings(cfg, self.ctx.node, self.local_node())
        except SettingsError as err:
            raise RoutingStartError(f"routing: {err}") from err
        self._report_problems("settings", self.settings.problems)
        if self.ports is None:
            self.ports = await RoutingPorts.real(cfg, self.families, self.env)
        if self.ctx.metrics is not None:
            # Added before RoutingMetrics' own hook, so that one writes fresh counts.
            self.ctx.metrics.add_scrape_hook(self._refresh_metrics)
            self.metrics = rmetrics.RoutingMetrics(self.ctx.metrics, self.counters)
        hist = self.metrics.host_sync_time if self.metrics else None
        self.node_setup = node_setup.NodeSetup(
            self.ctx,
            self.ports,
            self.settings,
            self.families,
            env=self.env,
            on_sync_time=hist.observe if hist else None,
            aws_client=self.aws_client,
        )
        await self.node_setup.prepare()
        self.ctx.barriers.cni_firewall_setup.set()
        self.injector = await self.node_setup.make_injector()
        await self._start_bgp()
        # Upstream's route syncer heartbeats as its own component.
        self.ctx.health.register(health.ROUTE_SYNC, float(cfg.injected_routes_sync_period))
        self._add_handlers()

    async def _start_bgp(self) -> None:
        assert self.ports is not None and self.settings is not None
        warning = bfd_warning(self.settings)
        if warning:
            self._bfd_warned = True
            log.warning("%s", warning)
        if self.ports.daemon is not None:
            self.ports.daemon.on_restart = self._gobgpd_restarted
            adopted = await self.ports.daemon.start()
            log.info(
                "gobgpd %s (%s)", "adopted" if adopted else "started", self.ports.daemon.target
            )
        await self.ports.engine.ensure_global(self.settings.global_spec())

    async def _gobgpd_restarted(self) -> None:
        """gobgpd came back empty: global settings now, the rest at the next (full) sync."""
        assert self.ports is not None and self.settings is not None
        log.warning("gobgpd restarted; pushing the BGP state again")
        await self.ports.engine.ensure_global(self.settings.global_spec())
        self._nodes_changed = True
        self.runner.request_full()

    def _add_handlers(self) -> None:
        inf = self.ctx.informers
        inf.nodes.add_handler(
            FuncHandler[Node](
                add=self._node_changed,
                update=lambda _o, n: self._node_changed(n),
                delete=self._node_changed,
            )
        )
        inf.services.add_handler(
            FuncHandler[Service](
                add=self._service_changed,
                update=lambda _o, n: self._service_changed(n),
                delete=self._service_changed,
            )
        )
        inf.endpointslices.add_handler(
            FuncHandler[EndpointSlice](
                add=self._slice_changed,
                update=self._slice_updated,
                delete=self._slice_changed,
            )
        )

    # --- handlers: note and poke -----------------------------------------------------------------

    def _node_changed(self, _node: Node) -> None:
        self._nodes_changed = True
        self.runner.poke()

    def _service_changed(self, svc: Service) -> None:
        self._dirty_services.add(object_key(svc.metadata))
        self.runner.poke()

    def _slice_changed(self, es: EndpointSlice) -> None:
        name = slice_service(es)
        if name:
            self._dirty_services.add(name)
            self.runner.poke()

    def _slice_updated(self, old: EndpointSlice, new: EndpointSlice) -> None:
        self._slice_changed(old)
        self._slice_changed(new)

    # --- run -------------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.start()
        assert self.injector is not None
        tasks = [
            asyncio.create_task(self.runner.run(), name="routing-sync"),
            asyncio.create_task(self.injector.run(self.events), name="routing-injector"),
            asyncio.create_task(self._watch(self._route_stream, "routes"), name="routing-best"),
            asyncio.create_task(self._watch(self._peer_stream, "peers"), name="routing-peers"),
            asyncio.create_task(self._route_syncer(), name="routing-route-syncer"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.stop()

    async def stop(self) -> None:
        """Without graceful restart BGP stops (peers withdraw our routes); with it, gobgpd
        stays for the next agent to adopt, and peers keep our routes meanwhile."""
        assert self.ports is not None and self.settings is not None
        keep = self.settings.graceful_restart.enabled
        if self.ports.daemon is not None:
            with contextlib.suppress(Exception):
                await self.ports.daemon.stop(keep_running=keep)
        elif not keep:
            with contextlib.suppress(EngineError):
                await self.ports.engine.stop_bgp()
        if self.ctx.metrics is not None:
            self.ctx.metrics.remove_scrape_hook(self._refresh_metrics)
        if self.metrics is not None:
            self.metrics.close()

    async def _refresh_metrics(self) -> bytes:
        """At each scrape, the injector's counts as they are now rather than as of the last
        sync, minutes ago (upstream counts a route when it writes it)."""
        if self.injector is not None:
            self.counters.routes_added = self.injector.routes_added
            self.counters.routes_removed = self.injector.routes_removed
            if self.metrics is not None:
                self.metrics.host_synced.set(self.injector.routes_synced)
        return b""

    def _route_stream(self) -> AsyncIterator[RouteEvent | PeerEvent]:
        assert self.ports is not None
        return self.ports.engine.watch_routes()

    def _peer_stream(self) -> AsyncIterator[RouteEvent | PeerEvent]:
        assert self.ports is not None
        return self.ports.engine.watch_peers()

    async def _watch(
        self, stream: Callable[[], AsyncIterator[RouteEvent | PeerEvent]], what: str
    ) -> None:
        """Feed one gobgpd stream into the injector's queue; reopen it when it ends."""
        while True:
            try:
                async for event in stream():
                    if isinstance(event, RouteEvent):
                        self.counters.received += 1
                    self.events.put_nowait(event)
            except EngineError as err:
                log.debug("gobgpd %s stream ended: %s", what, err)
            await self.clock.sleep(WATCH_RETRY_S)

    async def _route_syncer(self) -> None:
        assert self.injector is not None
        period = float(self.ctx.config.injected_routes_sync_period)
        while True:
            await self.clock.sleep(period)
            try:
                result = await self.injector.sync_routes()
            except Exception:
                log.exception("route syncer failed; trying again in %.0fs", period)
                continue
            if result.ok:
                self.ctx.health.beat(health.ROUTE_SYNC)
            else:
                log.warning("route syncer: %s", "; ".join(result.errors) or "failures")

    # --- sync ------------------------------------------------------------------------------------

    async def sync(self, full: bool) -> None:
        async with self._lock:
            await self._sync(full)

    async def _sync(self, full: bool) -> None:
        assert self.ports is not None and self.settings is not None
        inf = self.ctx.informers
        nodes = inf.nodes.store.list()
        if full or self._nodes_changed:
            self._nodes_changed = False
            with rmetrics.timed(self.metrics.routes_sync_time if self.metrics else None):
                assert self.node_setup is not None
                await self.node_setup.sync_firewall(nodes)
            await self._forget_gone_nodes(nodes)
        wanted = self._peers(nodes)
        with rmetrics.timed(self.metrics.peers_sync_time if self.metrics else None):
            await self.ports.engine.sync_peers(wanted)
        self._update_vips(full)
        await self._sync_paths_and_policies(nodes)
        if self.metrics is not None:
            self.metrics.set_peers(await self.ports.engine.peer_status())
            if self.injector is not None:
                self.metrics.host_synced.set(self.injector.routes_synced)
        if self.injector is not None:
            self.counters.routes_added = self.injector.routes_added
            self.counters.routes_removed = self.injector.routes_removed

    def _peers(self, nodes: list[Node]) -> list[PeerSpec]:
        assert self.settings is not None
        cfg = self.ctx.config
        local = self.local_node()
        wanted: list[PeerSpec] = []
        if cfg.enable_ibgp:
            internal = peers.internal_peers(nodes, self.settings)
            self._report_problems("ibgp", internal.problems)
            wanted += internal.peers
        external = peers.external_peers(cfg, self.settings, local, peer_passwords(cfg))
        self._report_problems("peers", external.problems)
        if external.bfd_requested and not self._bfd_warned:
            self._bfd_warned = True  # a warning, once (not an error, not again with the flag)
            warning = bfd_warning(self.settings, peers_ask_bfd=True)
            log.warning("routing: node %s: %s", self.settings.node_name, warning)
        self._external = [p.address for p in external.peers]
        return wanted + list(external.peers)

    def _update_vips(self, full: bool) -> None:
        assert self.settings is not None
        inf = self.ctx.informers
        names, self._dirty_services = self._dirty_services, set()
        if full:
            names |= set(inf.services.store.key_list())
            names |= self._vip_services
        for name in names:
            svc = inf.services.store.get(name)
            if svc is None:
                self.vips.remove(name)
                self._vip_services.discard(name)
                continue
            slices = inf.endpointslices.store.by_index(SERVICE_NAME_INDEX, name)
            found = advertise.service_vips(svc, slices, self.settings, self.ranges)
            if found.errors:
                self._report_problems(f"service {name}", [Problem(name, e) for e in found.errors])
            self.vips.update(name, found.advertise)
            if found.advertise:
                self._vip_services.add(name)
            else:
                self._vip_services.discard(name)

    async def _sync_paths_and_policies(self, nodes: list[Node]) -> None:
        assert self.ports is not None and self.settings is not None
        vips = self.vips.vips()
        paths = advertise.originated_paths(self.settings, vips)
        state = policies.policy_state(
            self.settings,
            ibgp_peer_ips=peers.node_primary_ips(nodes) if self.ctx.config.enable_ibgp else [],
            external_peer_ips=self._external,
            vips=vips,
        )
        # Policies first, so a new VIP never leaves under the previous export policy.
        await self.ports.engine.sync_policies(state)
        await self.ports.engine.sync_paths(paths)
        self.counters.count_sent(rmetrics.SENT_POD_ROUTE, len(self.settings.pod_cidrs))
        previous = self._advertised
        self.counters.count_sent(rmetrics.SENT_ADVERTISE_VIP, len(vips - previous))
        self.counters.count_sent(rmetrics.SENT_WITHDRAW_VIP, len(previous - vips))
        self._advertised = vips

    async def _forget_gone_nodes(self, nodes: list[Node]) -> None:
        """A deleted Node's routes and tunnel go now (its peer may not have said so yet)."""
        current = {n.metadata.name: ip for n in nodes if (ip := _primary(n))}
        gone = [ip for name, ip in self._known_nodes.items() if name not in current]
        self._known_nodes = current
        if self.injector is None:
            return
        for ip in gone:
            log.info("node with IP %s deleted: removing its routes", ip)
            await self.injector.remove_peer(ip)

    def _report_problems(self, what: str, problems: Any) -> None:
        """Log each problem once (until it changes)."""
        text = "; ".join(str(p) for p in problems)
        if text and self._reported.get(what) != text:
            log.error("routing: %s (the rest is applied)", text)
        if text:
            self._reported[what] = text
        else:
            self._reported.pop(what, None)


def _primary(node: Node) -> str:
    try:
        return str(primary_ip(node))
    except NodeIdentityError:
        return ""
