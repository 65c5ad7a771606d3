"""Wiring: build every part from the config and run them in one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp.shared.message import SessionMessage

from proxy.auth import BearerAuth, IdentityTable
from proxy.config import Config, ConfigError
from proxy.control import ControlServer
from proxy.gateway import Gateway
from proxy.metrics import Metrics
from proxy.naming import Names
from proxy.pipeline import Pipeline
from proxy.upstreams import Upstream

log = logging.getLogger("signoff")


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        # signoff handles SIGINT/SIGTERM itself so that it can flush the audit log before exiting;
        # uvicorn's handler would re-raise the signal and kill the process first.
        yield


class App:
    """One gateway process: upstreams, the MCP fronts, the control port and everything between."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.identities = IdentityTable.from_config(config.identities, config.stdio_identity)
        self.upstreams = {
            name: Upstream(name, cfg, config.base_dir, notify=_ignore)
            for name, cfg in config.upstreams.items()
        }
        self.names = Names(list(self.upstreams), config.tool_separator, config.prefixed)
        self.pipeline = Pipeline(self.metrics)
        self.gateway = Gateway(
            self.upstreams,
            self.names,
            self.pipeline,
            stdio_identity=self.identities.stdio,
            max_argument_bytes=config.max_argument_bytes,
        )
        self.control = ControlServer(
            config.control.host, config.control.port, self.readiness, self.render_metrics
        )
        self._http: _Uvicorn | None = None
        self.stopping = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect upstreams and open the control port."""
        for up in self.upstreams.values():
            up.shared.start()
        await self.control.start()
        # Give upstreams a moment so the first client sees their capabilities and tools.
        timeout = max(up.config.connect_timeout for up in self.upstreams.values())
        await asyncio.gather(*(up.shared.wait_ready(timeout) for up in self.upstreams.values()))
        for up in self.upstreams.values():
            if up.shared.ready.is_set():
                with contextlib.suppress(Exception):
                    await up.refresh_tools()
            else:
                log.error("upstream %s is not available yet: %s", up.name, up.shared.unavailable_reason())

    async def stop(self) -> None:
        """Close everything in reverse order; safe to call twice."""
        await self.control.stop()
        for up in self.upstreams.values():
            await up.shared.close()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)

    # -- fronts ------------------------------------------------------------------------------

    def http_app(self) -> Any:
        """The agent-facing Streamable HTTP app (Starlette from the SDK) behind bearer-token auth."""
        listen = self.config.listen
        starlette = self.gateway.server.streamable_http_app(
            streamable_http_path=listen.path,
            json_response=listen.json_response,
            host=listen.host,
            max_request_body_size=self.config.max_argument_bytes + 64 * 1024,
        )
        return BearerAuth(starlette, self.identities), starlette

    def bind_http(self) -> socket.socket:
        """Open the agent-facing socket now, so a taken port fails at start with a clear message."""
        listen = self.config.listen
        sock = socket.socket(socket.AF_INET6 if ":" in listen.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listen.host, listen.port))
        except OSError as e:
            sock.close()
            raise ConfigError(
                [f"listen: cannot listen on {listen.host}:{listen.port}: {e.strerror}"]
            ) from None
        sock.listen(2048)
        sock.setblocking(False)
        self.listen_port = sock.getsockname()[1]
        return sock

    async def serve_http(self, sock: socket.socket) -> None:
        """Serve the HTTP front until a signal or `stopping` is set."""
        app, starlette = self.http_app()
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=3)
        self._http = _Uvicorn(config)
        # The SDK's session manager normally runs from Starlette's lifespan; we run it ourselves so
        # that it lives exactly as long as the server task.
        async with self.gateway.server.session_manager.run():
            task = asyncio.create_task(self._http.serve(sockets=[sock]))
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            self._http.should_exit = True
            await task
            stop.cancel()
        _ = starlette

    async def serve_stdio(self) -> None:
        """Serve one client over stdin/stdout until it disconnects or a signal arrives."""
        from mcp.server.stdio import stdio_server

        server = self.gateway.server
        async with stdio_server() as (raw_read, write), _answer_parse_errors(raw_read, write) as read:
            task = asyncio.create_task(server.run(read, write, server.create_initialization_options()))
            stop = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            stop.cancel()

    # -- status ------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, str]]:
        states = {}
        for name, up in self.upstreams.items():
            link = up.shared
            states[name] = "up" if link.state == "up" else f"{link.state}: {link.unavailable_reason()}"
        return all(up.shared.state == "up" for up in self.upstreams.values()), states

    def render_metrics(self) -> bytes:
        for name, up in self.upstreams.items():
            self.metrics.upstream_up.labels(name).set(1 if up.shared.state == "up" else 0)
            self.metrics.upstream_restarts.labels(name).set(up.shared.restarts)
        return self.metrics.render()


@contextlib.asynccontextmanager
async def _answer_parse_errors(read: Any, write: Any) -> Any:
    """Answer unparseable stdio lines with a JSON-RPC parse error (the SDK drops them silently)."""
    send, receive = anyio.create_memory_object_stream[Any](0)

    async def pump() -> None:
        async with send:
            async for item in read:
                if isinstance(item, Exception):
                    message = "Parse error: the line is not a valid JSON-RPC 2.0 message"
                    error = types.ErrorData(code=types.PARSE_ERROR, message=message)
                    await write.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=None, error=error)))
                else:
                    await send.send(item)

    task = asyncio.create_task(pump())
    try:
        yield receive
    finally:
        task.cancel()


async def _ignore(*_: Any) -> None:
    return None


async def run(config: Config, *, stdio: bool) -> None:
    """Run a gateway until it is told to stop."""
    app = App(config)
    app.install_signal_handlers()
    sock = None if stdio else app.bind_http()
    await app.start()
    try:
        if sock is None:
            await app.serve_stdio()
        else:
            log.info("MCP front on http://%s:%d%s", config.listen.host, app.listen_port, config.listen.path)
            await app.serve_http(sock)
    finally:
        await app.stop()
