"""Prometheus metrics: upstream's names (all prefixed ``kube_router_``) on our own registry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

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

# Exposition text a controller produces at scrape time from an asynchronous read (the IPVS
# counters). Text rather than a Collector: upstream's Go counters such as
# kube_router_service_bytes_in carry no _total suffix, and prometheus_client's text format always
# adds one to a counter family; the hook writes those families as Go does.
ScrapeHook = Callable[[], Awaitable[bytes]]


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
        self._scrape_hooks: list[ScrapeHook] = []

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def add_scrape_hook(self, hook: ScrapeHook) -> None:
        """Run ``hook`` on every scrape; its text is served after the registry's."""
        self._scrape_hooks.append(hook)

    def remove_scrape_hook(self, hook: ScrapeHook) -> None:
        if hook in self._scrape_hooks:
            self._scrape_hooks.remove(hook)

    async def scrape(self) -> bytes:
        """What a scrape serves. Hooks run first, so what they observe in the registry shows
        now; a failing hook is logged and the rest is still served."""
        extra: list[bytes] = []
        for hook in list(self._scrape_hooks):
            try:
                extra.append(await hook())
            except Exception:
                log.exception("metrics: scrape hook %s failed", getattr(hook, "__qualname__", hook))
        return self.render() + b"".join(extra)


class MetricsServer(HTTPServer):
    """Serves the registry at ``--metrics-addr:--metrics-port`` and ``--metrics-path``."""

    def __init__(self, metrics: Metrics, addr: str, port: int, path: str) -> None:
        super().__init__("metrics", addr, port)
        self.metrics = metrics
        self.path = path or "/metrics"

    async def _handle(self, _request: web.Request) -> web.Response:
        body = await self.metrics.scrape()
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
