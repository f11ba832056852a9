"""Heartbeat-based health, served as ``/healthz`` (upstream's pkg/healthcheck semantics).

Each enabled component beats after a successful sync. A component's TTL is the time from its
start to its first beat (how long one sync takes here); it is unhealthy when
``now - last_beat > sync_period + ttl + 1.5 s``. Components start alive. Checks run every 5 s
and on every beat. ``/healthz`` answers 200 ``OK`` or 500 ``Unhealthy``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from kube_router.httpserver import HTTPServer

log = logging.getLogger(__name__)

GRACE_S = 1.5
CHECK_INTERVAL_S = 5.0
HTTP_OK = 200
HTTP_UNHEALTHY = 500

# Component names as upstream's heartbeats name them.
ROUTES = "NetworkRoutesController"
SERVICES = "NetworkServicesController"
POLICY = "NetworkPolicyController"
LOADBALANCER = "LoadBalancerController"
ROUTE_SYNC = "RouteSyncController"
METRICS = "MetricsController"


@dataclass
class _Component:
    sync_period: float
    started: float
    last_beat: float
    ttl: float | None = None


class HealthChecker:
    """Tracks heartbeats and decides health. The clock is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._components: dict[str, _Component] = {}
        self._healthy = True

    def register(self, name: str, sync_period: float) -> None:
        """Enable a component; it counts as alive from now."""
        now = self.clock()
        self._components[name] = _Component(sync_period, now, now)

    def beat(self, name: str) -> None:
        comp = self._components.get(name)
        if comp is None:
            raise KeyError(f"heartbeat from unregistered component {name}")
        now = self.clock()
        if comp.ttl is None:
            comp.ttl = now - comp.started
        comp.last_beat = now
        self.check()

    def unhealthy_components(self) -> list[str]:
        now = self.clock()
        out = []
        for name, comp in self._components.items():
            limit = comp.sync_period + (comp.ttl or 0.0) + GRACE_S
            if now - comp.last_beat > limit:
                out.append(name)
        return out

    def check(self) -> bool:
        """Recompute health, logging transitions; return whether healthy."""
        bad = self.unhealthy_components()
        healthy = not bad
        if healthy != self._healthy:
            if healthy:
                log.info("health: all components healthy again")
            else:
                log.error("health: heartbeat missed by %s", ", ".join(bad))
        self._healthy = healthy
        return healthy

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def run_checks(self, interval: float = CHECK_INTERVAL_S) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()


class HealthServer(HTTPServer):
    """Serves ``/healthz``; port 0 means no HTTP server (checks are still logged)."""

    def __init__(self, checker: HealthChecker, addr: str, port: int) -> None:
        super().__init__("health", addr, port)
        self.checker = checker

    async def _healthz(self, _request: web.Request) -> web.Response:
        if self.checker.check():
            return web.Response(status=HTTP_OK, text="OK\n")
        return web.Response(status=HTTP_UNHEALTHY, text="Unhealthy")

    async def start(self) -> None:
        if self.port == 0:
            log.info("health: --health-port=0, not serving /healthz")
            return
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        await self.serve(app)
        log.info("health: serving /healthz on %s:%d", self.addr or "*", self.port)
