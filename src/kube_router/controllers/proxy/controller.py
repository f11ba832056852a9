"""The network services controller (NSC): every Service through IPVS, as kube-proxy's IPVS mode.

Handlers only note which Service changed (a Service event, or an EndpointSlice event for its
Service) and poke the sync runner. A partial sync replans those Services and sends IPVS only what
changed for their virtual services; the VIP addresses, the NSC ipsets and rules, the health-check
NodePorts and the UDP conntrack flushes follow from the same plans. A full sync (every
``--ipvs-sync-period``, the first one, and after any failure) replans every Service and compares
with what the kernel holds, repairing damage from outside. With ``--ipvs-graceful-termination`` a
real server that goes is set to weight 0 and deleted by a scan every 5 s once idle or past its
grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from prometheus_client import Gauge

from kube_router import health
from kube_router.controllers.base import Controller, RunContext
from kube_router.controllers.proxy import firewall, graceful
from kube_router.controllers.proxy import metrics as proxy_metrics
from kube_router.controllers.proxy.compile import NodeAddresses, ServicePlan, Settings
from kube_router.controllers.proxy.endpoints import service_endpoints
from kube_router.controllers.proxy.ipvs_sync import IPVSSync, SyncResult
from kube_router.controllers.proxy.ports import ProxyDataplane
from kube_router.controllers.shared.pod_cidrs import node_pod_cidrs
from kube_router.controllers.shared.services import Ranges
from kube_router.controllers.sync import Clock, RealClock, SyncRunner
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs import Family
from kube_router.k8s.informer import FuncHandler
from kube_router.k8s.informers import SERVICE_NAME_INDEX, slice_service
from kube_router.k8s.models import EndpointSlice, Node, Service, object_key

log = logging.getLogger(__name__)

GRACEFUL_SCAN_S: Final = graceful.GRACEFUL_SCAN_S


def settings_of(cfg: Any) -> Settings:
    both: tuple[tuple[Family, bool], ...] = (("ipv4", cfg.enable_ipv4), ("ipv6", cfg.enable_ipv6))
    families = tuple(f for f, on in both if on)
    ranges = Ranges.parse(
        cfg.strict_external_ip_validation,
        cfg.service_cluster_ip_range,
        cfg.service_external_ip_range,
        cfg.loadbalancer_ip_range,
    )
    return Settings(families, cfg.nodeport_bindon_all_ip, ranges)


def excluded_networks(cidrs: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]


class ServiceProxyController(Controller):
    name = health.SERVICES

    def __init__(
        self, ctx: RunContext, dataplane: ProxyDataplane | None = None, clock: Clock | None = None
    ) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        self.dataplane = dataplane
        self.settings = settings_of(cfg)
        self.clock = clock or RealClock()
        self.runner = SyncRunner(
            "proxy", self.sync, period=cfg.ipvs_sync_period, on_success=self.beat, clock=self.clock
        )
        self.ipvs: IPVSSync | None = None
        self.default_grace = float(cfg.ipvs_graceful_period)
        self.queue = graceful.GracefulQueue(self.clock, self.default_grace)
        self._dirty: set[str] = set()
        self._shapes: dict[str, tuple[Any, ...]] = {}
        self._lock = asyncio.Lock()
        self._reported: dict[str, list[str]] = {}
        self._local: dict[Family, set[str]] = {}
        self._metrics: proxy_metrics.ProxyMetrics | None = None
        self._errors_gauge: Gauge | None = None

    @property
    def sync_period(self) -> float:
        return float(self.ctx.config.ipvs_sync_period)

    @property
    def families(self) -> tuple[Family, ...]:
        return self.settings.families

    def primary(self) -> dict[Family, str]:
        node = self.ctx.node
        found = {"ipv4": node.ipv4, "ipv6": node.ipv6}
        return {f: str(ip) for f, ip in found.items() if ip is not None and f in self.families}

    # --- start-up ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Ports, kernel settings, metrics and handlers (after the caches synced)."""
        cfg = self.ctx.config
        if self.dataplane is None:
            self.dataplane = await ProxyDataplane.real(self.families)
        await self.dataplane.setup(cfg, self.ctx.node.link.name if self.ctx.node.link else None)
        self._local = await self.dataplane.vips.local_addresses()
        self.ipvs = IPVSSync(
            self.dataplane.ipvs,
            self.settings,
            NodeAddresses(self.primary(), self._local_tuple()),
            cfg.ipvs_graceful_termination,
            excluded_networks(cfg.excluded_cidrs),
        )
        if self.ctx.metrics is not None:
            self._metrics = proxy_metrics.ProxyMetrics(
                self.ctx.metrics, self.dataplane.ipvs, self._owners
            )
            self._errors_gauge = Gauge(
                "controller_ipvs_service_errors",
                "Services with input the proxy cannot program (each logged once)",
                namespace="kube_router",
                registry=self.ctx.metrics.registry,
            )
        inf = self.ctx.informers
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
        inf.nodes.add_handler(
            FuncHandler[Node](
                add=self._node_changed,
                update=lambda _o, n: self._node_changed(n),
                delete=self._node_changed,
            )
        )

    async def run(self) -> None:
        await self.start()
        tasks = [asyncio.create_task(self.runner.run(), name="proxy-sync")]
        if self.ctx.config.ipvs_graceful_termination:
            tasks.append(asyncio.create_task(self._graceful_loop(), name="proxy-graceful"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert self.dataplane is not None
            await self.dataplane.health.stop()

    def _local_tuple(self) -> dict[Family, tuple[str, ...]]:
        return {f: tuple(sorted(ips)) for f, ips in self._local.items()}

    # --- handlers: note and poke, nothing else -------------------------------------------------

    def _service_changed(self, svc: Service) -> None:
        self._dirty.add(object_key(svc.metadata))
        self.runner.poke()

    def _slice_changed(self, es: EndpointSlice) -> None:
        name = slice_service(es)
        if name:
            self._dirty.add(name)
            self.runner.poke()

    def _slice_updated(self, old: EndpointSlice, new: EndpointSlice) -> None:
        self._slice_changed(old)
        self._slice_changed(new)

    def _node_changed(self, node: Node) -> None:
        if node.metadata.name == self.ctx.node.name:
            self.runner.request_full()

    # --- sync ----------------------------------------------------------------------------------

    def _replan(self, name: str) -> None:
        assert self.ipvs is not None
        inf = self.ctx.informers
        svc = inf.services.store.get(name)
        slices = inf.endpointslices.store.by_index(SERVICE_NAME_INDEX, name) if svc else []
        self.ipvs.update(name, svc, service_endpoints(slices, self.ctx.node.name))

    async def _refresh_node(self) -> None:
        """Local addresses and the node's IPs, read again on every full sync."""
        assert self.dataplane is not None and self.ipvs is not None
        self._local = await self.dataplane.vips.local_addresses()
        self.ipvs.node = NodeAddresses(self.primary(), self._local_tuple())

    async def sync(self, full: bool) -> None:
        timed = self._metrics.timed_sync() if self._metrics else contextlib.nullcontext()
        async with self._lock:
            with timed:
                await self._sync(full)
        self.ctx.barriers.proxy_firewall_setup.set()

    async def _sync(self, full: bool) -> None:
        assert self.ipvs is not None
        start = time.perf_counter()
        names, self._dirty = self._dirty, set()
        if full:
            await self._refresh_node()
            names |= set(self.ctx.informers.services.store.key_list()) | set(self.ipvs.plans)
        before = {n: self._shapes.get(n) for n in names}
        for name in names:
            self._replan(name)
            self._note_shape(name)
        result = await self.ipvs.sync(full)
        self._report(result.errors)
        reshaped = full or any(self._shapes.get(n) != before[n] for n in names)
        await self._follow(result, reshaped, full)
        elapsed = time.perf_counter() - start
        log.debug("proxy %s sync of %d services: %.3fs", _kind(full), len(names), elapsed)
        if self._errors_gauge is not None:
            self._errors_gauge.set(len(self._reported))

    def _note_shape(self, name: str) -> None:
        """What of a Service's plan the VIPs, the firewall and the health checks follow."""
        assert self.ipvs is not None
        plan = self.ipvs.plans.get(name)
        if plan is None:
            self._shapes.pop(name, None)
            return
        hairpin = firewall.hairpin_rules(plan, self.ctx.config.hairpin_mode)
        local = plan.local_serving if plan.health_check_port else 0
        self._shapes[name] = (
            frozenset(plan.virtual),
            frozenset(hairpin),
            plan.health_check_port,
            local,
        )

    async def _follow(self, result: SyncResult, reshaped: bool, full: bool) -> None:
        """What follows the IPVS state: conntrack flushes and drains, and, when a Service's
        shape changed (not only its real servers), the VIPs, the firewall and health checks."""
        assert self.dataplane is not None and self.ipvs is not None
        dp, plans = self.dataplane, self.ipvs.plans
        for key, _dest in result.plan.removed + result.plan.drained:
            if key.protocol == ipvs.UDP:
                await dp.flush_udp(key.address, key.port)
        self._queue_drained(result)
        if not reshaped:
            return
        await dp.vips.sync(_dummy_ips(self.ipvs.desired()), self.primary(), full)
        specs = firewall.build_specs(
            plans.values(), self._local, self.primary(), self._firewall_settings()
        )
        await dp.firewall.apply(specs, full)
        await dp.health.update(_health_ports(plans))

    def _queue_drained(self, result: SyncResult) -> None:
        """Drained servers wait in the queue; servers wanted again leave it."""
        for op in result.plan.tx.ops:
            if op.kind in ("add-dest", "edit-dest") and op.dest is not None and op.dest.weight:
                self.queue.discard(op.service.key, op.dest)
        if not result.plan.drained:
            return
        pods = self.ctx.informers.pods.store.list()
        for key, dest in result.plan.drained:
            self.queue.add(key, dest, graceful.grace_period(pods, dest.address, self.default_grace))

    def _firewall_settings(self) -> firewall.Settings:
        cfg = self.ctx.config
        return firewall.Settings(
            pod_cidrs=tuple(self._pod_cidrs()),
            masquerade_all=cfg.masquerade_all,
            permit_all=cfg.ipvs_permit_all,
            hairpin=cfg.hairpin_mode,
        )

    def _pod_cidrs(self) -> list[str]:
        return list(node_pod_cidrs(self.ctx.informers.nodes.store.get(self.ctx.node.name))[0])

    def _report(self, errors: Mapping[str, list[str]]) -> None:
        """Log each Service's problems once (until they change)."""
        for name, problems in errors.items():
            if self._reported.get(name) != problems:
                log.error("service %s: %s (the rest is programmed)", name, "; ".join(problems))
        self._reported = {k: list(v) for k, v in errors.items()}

    def _owners(self) -> Mapping[ipvs.ServiceKey, tuple[str, str]]:
        """Which Service owns each virtual service, for the metrics (read at scrape time)."""
        if self.ipvs is None:
            return {}
        return proxy_metrics.owners_of(self.ipvs.desired(), set(self.primary().values()))

    # --- graceful termination ------------------------------------------------------------------

    async def _graceful_loop(self) -> None:
        while True:
            await self.clock.sleep(GRACEFUL_SCAN_S)
            try:
                await self.graceful_scan()
            except Exception:
                log.exception("proxy: graceful termination scan failed; a full sync follows")
                self.runner.request_full()

    async def graceful_scan(self) -> None:
        """Delete drained real servers that are idle or past their grace period."""
        async with self._lock:
            assert self.dataplane is not None and self.ipvs is not None
            for pending in list(self.queue):
                if self.ipvs.wanted(pending.key, pending.dest):
                    self.queue.discard(pending.key, pending.dest)
            if not len(self.queue):
                return
            tx = self.queue.due(await self.dataplane.ipvs.dump())
            if len(tx):
                await self.dataplane.ipvs.apply(tx)
                self.ipvs.forget((op.service.key, op.dest) for op in tx.ops if op.dest)


def _kind(full: bool) -> str:
    return "full" if full else "partial"


def _dummy_ips(desired: Mapping[Any, Any]) -> dict[Family, set[str]]:
    out: dict[Family, set[str]] = {}
    for key, vs in desired.items():
        if vs.kind != "nodeport" and key.address:
            out.setdefault(key.family, set()).add(key.address)
    return out


def _health_ports(plans: Mapping[str, ServicePlan]) -> dict[int, tuple[str, int]]:
    return {
        p.health_check_port: (name, p.local_serving)
        for name, p in plans.items()
        if p.health_check_port
    }
