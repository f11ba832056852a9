"""Prometheus metrics: upstream's names (all prefixed ``kube_router_``) on our own registry."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Final

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
GO_EXPONENT_FROM: Final = 6  # Go's shortest %g switches to an exponent from 1e+06 on
GO_EXPONENT_BELOW: Final = -4  # ... and below 1e-04

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


def go_float(value: float) -> str:
    """A sample value as Go's ``strconv.FormatFloat(v, 'g', -1, 64)`` writes it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digit_tuple, exponent = Decimal(repr(float(value))).normalize().as_tuple()
    assert isinstance(exponent, int)  # finite
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exponent  # digits before the decimal point
    minus = "-" if sign else ""
    exp = point - 1
    if exp < GO_EXPONENT_BELOW or exp >= GO_EXPONENT_FROM:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{minus}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{minus}{digits}{'0' * (point - len(digits))}"
    return f"{minus}{digits[:point]}.{digits[point:]}"


def _escape(value: str, quotes: bool) -> str:
    out = value.replace("\\", "\\\\").replace("\n", "\\n")
    return out.replace('"', '\\"') if quotes else out


def write_family(
    name: str, help_text: str, kind: str, series: Sequence[tuple[Mapping[str, str], float]]
) -> str:
    """One family in the text format, as Go writes it (nothing for a family without series)."""
    if not series:
        return ""
    full = f"{NAMESPACE}_{name}"
    lines = [f"# HELP {full} {_escape(help_text, False)}", f"# TYPE {full} {kind}"]
    rows = sorted(
        (tuple(sorted(labels.items())), value) for labels, value in series
    )  # Go sorts series by their label values
    for pairs, value in rows:
        text = ",".join(f'{k}="{_escape(v, True)}"' for k, v in pairs)
        lines.append(f"{full}{{{text}}} {go_float(value)}" if text else f"{full} {go_float(value)}")
    return "\n".join(lines) + "\n"
