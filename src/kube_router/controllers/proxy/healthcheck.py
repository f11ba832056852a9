"""Health-check NodePorts: one HTTP server per Service with ``spec.healthCheckNodePort``.

A load balancer in front of the nodes probes ``/healthz`` on that port to learn whether this
node has endpoints of a Service with ``externalTrafficPolicy: Local``. As upstream
(``nodeport_healthcheck.go``): any method on exactly ``/healthz`` answers 200
``"<n> Service Endpoints found\\n"`` when n > 0 local endpoints are not terminating, else 503
``"No Service Endpoints Found\\n"``, as ``text/plain; charset=utf-8``; any other path is Go's
404 ``"404 page not found\\n"``. The servers listen on every address unless ``addr`` is given.

A count change updates a running server in place. A port that cannot be bound is logged once
(with its Service) and tried again on every :meth:`HealthCheckServers.update`; it never stops
the controller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Final

from aiohttp import web

from kube_router.httpserver import HTTPServer

log = logging.getLogger(__name__)

PATH: Final = "/healthz"
CONTENT_TYPE: Final = "text/plain"
CHARSET: Final = "utf-8"
NOT_FOUND_BODY: Final = "404 page not found\n"
NO_ENDPOINTS_BODY: Final = "No Service Endpoints Found\n"
PORT_MAX: Final = 65535


def answer(count: int) -> tuple[int, str]:
    """Status and body for a Service with ``count`` local, non-terminating endpoints."""
    if count > 0:
        return web.HTTPOk.status_code, f"{count} Service Endpoints found\n"
    return web.HTTPServiceUnavailable.status_code, NO_ENDPOINTS_BODY


class _PortServer(HTTPServer):
    """The server of one health-check port; ``service`` and ``count`` change in place."""

    def __init__(self, addr: str, port: int, service: str, count: int) -> None:
        super().__init__(f"health-check NodePort ({service})", addr, port)
        self.service = service
        self.count = count

    async def _healthz(self, _request: web.Request) -> web.Response:
        status, body = answer(self.count)
        return web.Response(status=status, text=body, content_type=CONTENT_TYPE, charset=CHARSET)

    @staticmethod
    async def _not_found(_request: web.Request) -> web.Response:
        return web.Response(
            status=web.HTTPNotFound.status_code,
            text=NOT_FOUND_BODY,
            content_type=CONTENT_TYPE,
            charset=CHARSET,
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", PATH, self._healthz)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        await self.serve(app)


class HealthCheckServers:
    """The health-check NodePort servers the Services ask for (port -> Service, local count)."""

    def __init__(self, addr: str = "") -> None:
        self.addr = addr
        self._servers: dict[int, _PortServer] = {}
        self._failed: dict[int, str] = {}  # port -> Service whose bind failure was logged
        self._lock = asyncio.Lock()

    @property
    def ports(self) -> set[int]:
        """The ports being served now."""
        return set(self._servers)

    @property
    def failed(self) -> dict[int, str]:
        """Ports that could not be bound at the last update, with their Service."""
        return dict(self._failed)

    async def update(self, wanted: Mapping[int, tuple[str, int]]) -> None:
        """Serve exactly ``wanted``: port -> (``namespace/name``, local serving endpoints)."""
        async with self._lock:
            valid = {p: v for p, v in wanted.items() if 0 < p <= PORT_MAX}
            for port in sorted(set(self._servers) - set(valid)):
                await self._stop(port)
            for port in set(self._failed) - set(valid):
                del self._failed[port]
            for port, (service, count) in sorted(valid.items()):
                server = self._servers.get(port)
                if server is None:
                    await self._start(port, service, count)
                else:
                    server.service, server.count = service, count

    async def _start(self, port: int, service: str, count: int) -> None:
        server = _PortServer(self.addr, port, service, count)
        try:
            await server.start()
        except OSError as err:
            if self._failed.get(port) != service:
                log.error("%s (retried on the next sync)", err)
            self._failed[port] = service
            return
        if self._failed.pop(port, None) is not None:
            log.info("health-check NodePort %d of %s bound at last", port, service)
        else:
            log.info("serving health-check NodePort %d of %s", port, service)
        self._servers[port] = server

    async def _stop(self, port: int) -> None:
        server = self._servers.pop(port)
        await server.stop()
        log.info("stopped health-check NodePort %d of %s", port, server.service)

    async def stop(self) -> None:
        """Stop every server (the controller is stopping)."""
        async with self._lock:
            for port in sorted(self._servers):
                await self._stop(port)
            self._failed.clear()
