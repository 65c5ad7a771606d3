"""The control port (aiohttp): health, readiness, metrics; other parts add their routes.

It is a separate socket from the agent-facing MCP port, so Slack's webhook and the approvals page
can be exposed without exposing the MCP endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger("signoff.control")


class ControlServer:
    """An aiohttp app served from the gateway's own event loop."""

    def __init__(
        self,
        host: str,
        port: int,
        ready: Callable[[], tuple[bool, dict[str, str]]],
        metrics: Callable[[], bytes],
    ) -> None:
        self.host = host
        self.port = port
        self.app = web.Application(client_max_size=4 * 1024 * 1024)
        self._ready = ready
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics)

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        ok, upstreams = self._ready()
        return web.json_response({"ready": ok, "upstreams": upstreams}, status=200 if ok else 503)

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0 and site._server is not None:
            self.port = site._server.sockets[0].getsockname()[1]
        log.info("control port on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
