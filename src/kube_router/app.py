"""The agent process: start-up order, barriers, supervision and shutdown (upstream's model).

Health server first, then metrics, then the informers (the process fails when caches do not
sync within ``--cache-sync-timeout``), then the controllers in upstream's order, each only when
its ``--run-*`` flag is on: routing, [wait CNIFirewallSetup if the firewall runs], service proxy,
[wait ProxyFirewallSetup if the firewall runs], network policy, load-balancer allocator.
Any root task that ends (crash or not) ends the process with status 1; SIGTERM and SIGINT stop
it cleanly with status 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from kube_router import health, metrics
from kube_router.controllers.base import Barriers, Controller, PendingController, RunContext
from kube_router.controllers.netpol.controller import NetworkPolicyController
from kube_router.controllers.netpol.controller import cleanup as netpol_cleanup
from kube_router.controllers.netpol.names import IPV4, IPV6
from kube_router.controllers.netpol.ports import Dataplane
from kube_router.controllers.proxy.controller import ServiceProxyController
from kube_router.controllers.proxy.ports import ProxyDataplane
from kube_router.controllers.proxy.ports import cleanup as proxy_cleanup
from kube_router.controllers.routing.controller import RoutingController
from kube_router.controllers.routing.node_firewall import NodeFirewallError
from kube_router.controllers.routing.ports import RoutingPorts
from kube_router.dataplane.exec import CommandError, Executor
from kube_router.dataplane.ipvs import Family
from kube_router.dataplane.links import link_for_ip
from kube_router.k8s.client import ApiError, ConfigError, KubeClient
from kube_router.k8s.informers import CacheSyncTimeoutError, Informers
from kube_router.node import NodeIdentityError, identify, node_name

if TYPE_CHECKING:
    from kube_router.config import Config

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
# The agent keeps large, long-lived object graphs (every Service's plan, every pod's rules):
# with Python's default 700, collecting them again and again is half of a cold sync at
# 10,000 Services. Collect the young generation less often; cycles are rare in this code.
GC_YOUNG_THRESHOLD = 50_000
GC_OLDER_THRESHOLD = 10


def tune_gc() -> None:
    """The garbage collector's thresholds for the agent (benchmarks call it too)."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_OLDER_THRESHOLD, GC_OLDER_THRESHOLD)


class StartupError(Exception):
    """The agent cannot start; the message says why."""


ControllerFactory = Callable[[RunContext], Controller]


def _pending(name: str, period_attr: str, barrier: str | None = None) -> ControllerFactory:
    def make(ctx: RunContext) -> Controller:
        releases = [getattr(ctx.barriers, barrier)] if barrier else []
        return PendingController(ctx, name, float(getattr(ctx.config, period_attr)), releases)

    return make


# Controller factories by role. The controller issues replace these entries.
FACTORIES: dict[str, ControllerFactory] = {
    "router": RoutingController,
    "proxy": ServiceProxyController,
    "firewall": NetworkPolicyController,
    "loadbalancer": _pending(health.LOADBALANCER, "loadbalancer_sync_period"),
}


class Agent:
    """Owns every long-lived task; ``run`` returns the process exit status."""

    def __init__(self, config: Config, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = dict(os.environ if env is None else env)
        self.stop_event = asyncio.Event()
        self.checker = health.HealthChecker()
        self.metrics: metrics.Metrics | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._crashed: tuple[str, BaseException | None] | None = None
        self._wake = asyncio.Event()
        self._servers: list[health.HealthServer | metrics.MetricsServer] = []
        self.client: KubeClient | None = None
        self.informers: Informers | None = None

    # --- supervision -------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self._adopt(asyncio.create_task(coro, name=name))

    def _adopt(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        self._tasks.append(task)
        task.add_done_callback(self._on_done)
        return task

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._crashed is not None:
            return
        self._crashed = (task.get_name(), task.exception())
        self._wake.set()

    def request_stop(self) -> None:
        self.stop_event.set()
        self._wake.set()

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> int:
        tune_gc()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._start()
            await self._wake.wait()
        except (StartupError, ConfigError, OSError) as err:
            log.error("%s", err)
            return EXIT_FAILURE
        except Exception:
            log.exception("start-up failed")
            return EXIT_FAILURE
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self._shutdown()
        return self._exit_status()

    def _exit_status(self) -> int:
        if self._crashed is None:
            log.info("stopped")
            return EXIT_OK
        name, exc = self._crashed
        if exc is None:
            log.error("root task %s ended unexpectedly; exiting", name)
        elif isinstance(exc, StartupError):
            log.error("%s", exc)
        else:
            log.error("root task %s failed; exiting", name, exc_info=exc)
        return EXIT_FAILURE

    async def _start(self) -> None:
        cfg = self.config
        self.client = await KubeClient.from_flags(cfg.kubeconfig, cfg.master)
        await self._start_servers()
        self.informers = Informers(self.client)
        for task in self.informers.start():
            self._adopt(task)
        if not await self._wait_synced(self.informers):
            return  # stopped, or a root task ended, while the caches were syncing
        ctx = RunContext(
            cfg,
            self.client,
            self.informers,
            await self._identify(),
            self.checker,
            self.metrics,
            Barriers(),
        )
        self.spawn(self.checker.run_checks(), "health-checks")
        self.spawn(self._start_controllers(ctx), "controller-starter")

    async def _start_servers(self) -> None:
        cfg = self.config
        hs = health.HealthServer(self.checker, cfg.health_addr, cfg.health_port)
        await hs.start()
        self._servers.append(hs)
        if cfg.metrics_enabled:
            self.metrics = metrics.Metrics()
            ms = metrics.MetricsServer(
                self.metrics, cfg.metrics_addr, cfg.metrics_port, cfg.metrics_path
            )
            await ms.start()
            self._servers.append(ms)
            self.checker.register(health.METRICS, metrics.SYNC_PERIOD_S)
            self.spawn(
                metrics.heartbeat_loop(lambda: self.checker.beat(health.METRICS)),
                "metrics-heartbeat",
            )

    async def _wait_synced(self, informers: Informers) -> bool:
        """Wait for the caches; False when a stop or a crash came first."""
        waiter = asyncio.ensure_future(
            informers.wait_for_cache_sync(self.config.cache_sync_timeout)
        )
        stopper = asyncio.ensure_future(self._wake.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not waiter.done():
            waiter.cancel()
            return False
        try:
            waiter.result()
        except CacheSyncTimeoutError as err:
            raise StartupError(f"{err} (--cache-sync-timeout)") from err
        return True

    async def _identify(self) -> Any:
        assert self.informers is not None
        name = node_name(self.config.hostname_override, self.env)
        node = self.informers.nodes.store.get(name)
        if node is None:
            raise StartupError(
                f"node {name!r} not found in the API (set NODE_NAME or --hostname-override)"
            )
        try:
            # pyroute2's synchronous API runs its own event loop: keep it off ours.
            ident = await asyncio.to_thread(
                identify, node, self.config.enable_ipv4, self.config.enable_ipv6, link_for_ip
            )
        except NodeIdentityError as err:
            raise StartupError(str(err)) from err
        log.info(
            "node %s: primary IP %s on %s (MTU %s)",
            ident.name,
            ident.primary_ip,
            ident.link.name if ident.link else "?",
            ident.mtu,
        )
        return ident

    async def _start_controllers(self, ctx: RunContext) -> None:
        cfg = self.config
        if cfg.run_loadbalancer and not (cfg.pod_name and cfg.pod_namespace):
            raise StartupError("--run-loadbalancer needs POD_NAME and POD_NAMESPACE")
        order = [
            ("router", cfg.run_router, "cni_firewall_setup"),
            ("proxy", cfg.run_service_proxy, "proxy_firewall_setup"),
            ("firewall", cfg.run_firewall, None),
            ("loadbalancer", cfg.run_loadbalancer, None),
        ]
        for role, enabled, barrier in order:
            if not enabled:
                continue
            ctrl = FACTORIES[role](ctx)
            self.checker.register(ctrl.name, ctrl.sync_period)
            self.spawn(ctrl.run(), f"controller-{role}")
            if barrier and cfg.run_firewall:
                log.debug("waiting for %s", barrier)
                await getattr(ctx.barriers, barrier).wait()
        # Keep this root task alive: its ending would read as a crash.
        await asyncio.Event().wait()

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.stop()
        if self.client is not None:
            await self.client.close()


async def run(config: Config) -> int:
    """Run the agent until a signal or a failure; return the exit status."""
    try:
        return await Agent(config).run()
    except ApiError as err:
        log.error("%s", err)
        return EXIT_FAILURE


async def cleanup(config: Config) -> int:
    """``--cleanup-config``: remove what the controllers own, then exit."""
    status = EXIT_OK
    families = [f for f, on in ((IPV4, config.enable_ipv4), (IPV6, config.enable_ipv6)) if on]
    try:
        await netpol_cleanup(await Dataplane.real(Executor(), families))
        log.info("cleanup: network policy chains, jumps and ipsets removed")
    except CommandError as err:
        log.error("cleanup: network policy: %s", err)
        status = EXIT_FAILURE
    proxy_families: list[Family] = ["ipv4" if f == IPV4 else "ipv6" for f in families]
    try:
        await proxy_cleanup(await ProxyDataplane.real(proxy_families))
        log.info("cleanup: IPVS services, kube-dummy-if, service chains, rules and ipsets removed")
    except (CommandError, OSError) as err:
        log.error("cleanup: service proxy: %s", err)
        status = EXIT_FAILURE
    try:
        ports = await RoutingPorts.real(config, proxy_families)
        await ports.firewall.cleanup()
        log.info("cleanup: pod egress masquerade, FORWARD accepts and the routing ipsets removed")
    except (CommandError, NodeFirewallError, OSError) as err:
        log.error("cleanup: routing: %s", err)
        status = EXIT_FAILURE
    return status
