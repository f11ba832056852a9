"""The small HTTP servers the agent runs (health, metrics): bind with a clear error, stop."""

from __future__ import annotations

import logging

from aiohttp import web

log = logging.getLogger(__name__)


class HTTPServer:
    """An aiohttp application on ``addr:port`` (empty addr = every address)."""

    def __init__(self, what: str, addr: str, port: int) -> None:
        self.what = what
        self.addr = addr
        self.port = port
        self._runner: web.AppRunner | None = None

    async def serve(self, app: web.Application) -> None:
        """Bind and serve; a bind failure raises OSError naming the server and address."""
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.addr or None, self.port)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            raise OSError(
                f"binding {self.what} server to {self.addr or '*'}:{self.port}: {err}"
            ) from err
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
