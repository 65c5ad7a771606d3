"""The control port (aiohttp): health, readiness, metrics; other parts add their routes.

It is a separate socket from the agent-facing MCP port, so Slack's webhook and the approvals page
can be exposed without exposing the MCP endpoint.
"""

from __future__ import annotations

import logging
import socket
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
        self._site: web.BaseSite | None = None
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

    @property
    def serving(self) -> bool:
        return self._site is not None

    async def start(self) -> None:
        """Listen on the control port; raises OSError (EADDRINUSE, …) when it cannot."""
        if self._runner is None:
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
        # Bound here, not by aiohttp, so that a taken port leaves no half-registered site behind
        # and the bind can simply be tried again later (another process may let the port go).
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.setblocking(False)
        site = web.SockSite(self._runner, sock)
        await site.start()
        self._site = site
        self.port = sock.getsockname()[1]
        log.info("control port on http://%s:%d", self.host, self.port)

    async def try_start(self) -> bool:
        """Start if the port is free; False (quietly) when another process holds it."""
        try:
            await self.start()
        except OSError:
            return False
        return True

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
