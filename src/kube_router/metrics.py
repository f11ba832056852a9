"""Prometheus metrics: upstream's names (all prefixed ``kube_router_``) on our own registry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)

from kube_router.httpserver import HTTPServer
from kube_router.version import PYTHON_VERSION, VERSION

log = logging.getLogger(__name__)

NAMESPACE = "kube_router"
HEARTBEAT_INTERVAL_S = 3.0
SYNC_PERIOD_S = 5.0


class Metrics:
    """Owns the registry the controllers add their metrics to (in their ``start()``)."""

    def __init__(self) -> None:
        # Upstream (Go) exposes no *_created series; keep the scrape output alike.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.build_info = Gauge(
            "build_info",
            "Expose version and other build information",
            ["goversion", "version"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        # goversion keeps upstream's label name; it carries the Python version here.
        self.build_info.labels(goversion=PYTHON_VERSION, version=VERSION).set(1)
        self.handler_requests = Counter(
            "promhttp_metric_handler_requests",
            "Total number of scrapes by HTTP status code.",
            ["code"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer(HTTPServer):
    """Serves the registry at ``--metrics-addr:--metrics-port`` and ``--metrics-path``."""

    def __init__(self, metrics: Metrics, addr: str, port: int, path: str) -> None:
        super().__init__("metrics", addr, port)
        self.metrics = metrics
        self.path = path or "/metrics"

    async def _handle(self, _request: web.Request) -> web.Response:
        body = self.metrics.render()
        self.metrics.handler_requests.labels(code="200").inc()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(self.path, self._handle)
        await self.serve(app)
        log.info("metrics: serving %s on %s:%d", self.path, self.addr or "*", self.port)


async def heartbeat_loop(beat: Callable[[], None], interval: float = HEARTBEAT_INTERVAL_S) -> None:
    """The metrics controller's heartbeat (upstream ticks every 3 s against a 5 s period)."""
    while True:
        beat()
        await asyncio.sleep(interval)
