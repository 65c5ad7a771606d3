"""The stdio front: one MCP client on stdin/stdout, answered from the first fraction of a second.

Desktop clients start one stdio server per session and give up when `initialize` is slow (the
Inspector after 15 s; several clients starting at once share two cores). Importing the MCP SDK and
the rest of the gateway alone takes about a second. So this front answers `initialize` itself at
once, keeps every later line until the gateway is up, then hands the session over: the gateway's MCP
server is given the same `initialize` (its answer is dropped, the client has one) and then every
queued line, in order. Upstreams connect in the background; `tools/list` waits for them, bounded.

Only the standard library is imported at module level: that is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from proxy.config import ConfigError
from proxy.errors import StartupError

if TYPE_CHECKING:
    from proxy.app import App
    from proxy.config import Config

log = logging.getLogger("signoff.stdio")

VERSION = "0.1.0"
# Protocol versions of the initialize handshake, newest first (the SDK's list for this era).
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
# What the gateway offers while no upstream has said what it has: everything an upstream might.
EARLY_CAPABILITIES = {
    "tools": {"listChanged": True},
    "prompts": {"listChanged": True},
    "resources": {"subscribe": True, "listChanged": True},
    "logging": {},
    "completions": {},
}
PARSE_ERROR = -32700


def early_initialize_result(params: Any) -> dict[str, Any]:
    """The `initialize` result given before the gateway is up (pure)."""
    requested = params.get("protocolVersion") if isinstance(params, dict) else None
    version = requested if requested in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[0]
    return {
        "protocolVersion": version,
        "capabilities": EARLY_CAPABILITIES,
        "serverInfo": {"name": "signoff", "version": VERSION},
    }


def _parse_error(detail: str) -> bytes:
    message = f"Parse error: the line is not a valid JSON-RPC 2.0 message ({detail})"
    return _line({"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": message}})


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class Wire:
    """The client's end: lines from stdin, lines to stdout, each on its own thread.

    Writes go through one thread in order, so a slow reader on the client side never blocks the
    event loop. The real stdout is kept on a private descriptor and fd 1 is pointed at stderr, so a
    stray `print` anywhere can never corrupt the protocol.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
        with contextlib.suppress(OSError):
            os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        self._outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        threading.Thread(target=self._read, name="stdio-in", daemon=True).start()
        self._writer = asyncio.ensure_future(self._write())

    def _read(self) -> None:
        stream = sys.stdin.buffer
        while True:
            try:
                line = stream.readline()
            except (OSError, ValueError):
                line = b""
            self.loop.call_soon_threadsafe(self.incoming.put_nowait, line or None)
            if not line:
                return

    async def _write(self) -> None:
        while (data := await self._outgoing.get()) is not None:
            try:
                await asyncio.to_thread(self._out.write, data)
            except (OSError, ValueError):
                return  # the client is gone; the reader will see end of input

    def send(self, data: bytes) -> None:
        self._outgoing.put_nowait(data)

    async def close(self) -> None:
        self._outgoing.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer, 5)
        with contextlib.suppress(OSError):
            self._out.close()


async def serve(config: Config) -> None:
    """Serve one client on stdin/stdout until it disconnects or the process is told to stop."""
    wire = Wire(asyncio.get_running_loop())
    starting = asyncio.create_task(_start_gateway(config))
    queued: list[bytes] = []
    answered_init: Any = None  # the id of the initialize we answered early
    try:
        while not starting.done():
            line = await _next_line(wire, starting)
            if line is None:
                break
            if line is _READY:
                continue
            message = _peek(line)
            if answered_init is None and message is not None and message.get("method") == "initialize":
                answered_init = message.get("id")
                result = early_initialize_result(message.get("params"))
                wire.send(_line({"jsonrpc": "2.0", "id": answered_init, "result": result}))
            queued.append(line)
        if not starting.done():  # the client left before the gateway was up
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            return
        app = starting.result()
        try:
            await _hand_over(app, wire, queued, answered_init)
        finally:
            await app.stop()
    except (StartupError, ConfigError):
        raise  # the command line says these plainly
    except Exception:
        # Said here, while stderr is surely still the client's log: a silent exit is the worst answer.
        log.exception("the stdio front failed")
        raise
    finally:
        await wire.close()


_READY: Any = object()


async def _next_line(wire: Wire, starting: asyncio.Task[Any]) -> Any:
    """The next line from the client, or `_READY` when the gateway finished starting first."""
    getting = asyncio.ensure_future(wire.incoming.get())
    done, _ = await asyncio.wait({getting, starting}, return_when=asyncio.FIRST_COMPLETED)
    if getting in done:
        return getting.result()
    getting.cancel()
    return _READY


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("stdio front: %s failed", task.get_name(), exc_info=task.exception())


def _peek(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to be a message we answer early
        return None
    return message if isinstance(message, dict) else None


async def _start_gateway(config: Config) -> App:
    """Import and start the gateway; the import runs on a thread so the loop keeps answering."""
    module = await asyncio.to_thread(importlib.import_module, "proxy.app")
    app: App = module.App(config)
    app.front = "stdio"
    app.install_signal_handlers()
    try:
        await app.start(wait_for_upstreams=False)
    except BaseException:
        await app.stop()
        raise
    module.settle_memory()
    return app


async def _hand_over(app: App, wire: Wire, queued: list[bytes], answered_init: Any) -> None:
    """Run the gateway's MCP server on the wire: replay the queued lines, then pass everything through."""
    import anyio
    import mcp_types as types
    from mcp.shared.message import SessionMessage

    server = app.gateway.server
    to_server, server_reads = anyio.create_memory_object_stream[Any](64)
    server_writes, from_server = anyio.create_memory_object_stream[Any](64)
    dropped = {"init": answered_init is None}

    async def deliver(line: bytes) -> None:
        try:
            message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        except (ValueError, RecursionError) as e:
            wire.send(_parse_error(type(e).__name__))
            return
        await to_server.send(SessionMessage(message))

    async def pump_out() -> None:
        async for item in from_server:
            message = item.message
            if (
                not dropped["init"]
                and isinstance(message, types.JSONRPCResponse | types.JSONRPCError)
                and message.id == answered_init
            ):
                dropped["init"] = True  # the client already has its answer
                continue
            wire.send(message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")

    async def pump_in() -> None:
        for line in queued:
            if line.strip():
                await deliver(line)
        while (line := await wire.incoming.get()) is not None:
            if line.strip():
                await deliver(line)
        await to_server.aclose()

    running = asyncio.create_task(
        server.run(server_reads, server_writes, server.create_initialization_options())
    )
    tasks = [asyncio.create_task(pump_out()), asyncio.create_task(pump_in()), running]
    for task in tasks:
        task.add_done_callback(_log_failure)
    stop = asyncio.create_task(app.stopping.wait())
    try:
        done, _ = await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
        if running not in done:  # told to stop while the client is still there: say why, not "went away"
            from proxy.approvals import GATEWAY_STOPPED

            await app.broker.withdraw_held(GATEWAY_STOPPED)
    finally:
        for task in [*tasks, stop]:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
