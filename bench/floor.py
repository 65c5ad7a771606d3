"""The floor: the least a Python forwarder does on the gateway's path, to measure the hop itself.

uvloop, httptools and orjson; one stdio pipe to the upstream (the gateway's upstream, started the
same way); JSON-RPC ids remapped; each reply one pre-framed SSE event (or a JSON body with --json).
No authentication, policy, audit or metrics, no MCP session beyond answering `initialize`, no
error handling worth the name: a benchmark fixture, never a server. `make bench` runs it beside the
direct server and the gateway; its ratio to the direct server is what any Python hop costs on this
machine, and what the gateway's ratio cannot go below.

    python bench/floor.py PORT [--json] -- COMMAND [ARGS...]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from typing import Any

import httptools
import orjson
import uvloop

PROTOCOL = "2025-11-25"
ENVELOPE_PREFIX = "io.modelcontextprotocol/"  # the 2026-07-28 era's per-request _meta keys


class Upstream:
    """The stdio upstream: requests written as lines, replies matched to them by id."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)

    async def start(self) -> None:
        asyncio.get_running_loop().create_task(self._read())
        params = {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "floor", "version": "1"},
        }
        await self.request("initialize", params)
        self._write({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def request(self, method: str, params: Any) -> asyncio.Future[dict[str, Any]]:
        request_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = future
        self._write({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return future

    def _write(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(message) + b"\n")

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = orjson.loads(line)
            future = self.waiting.pop(message.get("id"), None)
            if future is not None:
                future.set_result(message)


class Front(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests parsed by httptools, answered in order."""

    upstream: Upstream
    json_replies = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.body = b""

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.body = b""

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        asyncio.get_running_loop().create_task(self._answer(orjson.loads(self.body)))

    async def _answer(self, message: dict[str, Any]) -> None:
        if "id" not in message:  # a notification
            self.transport.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            return
        if message.get("method") == "initialize":
            result = {
                "protocolVersion": PROTOCOL,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "floor", "version": "1"},
            }
            self._reply(
                {"jsonrpc": "2.0", "id": message["id"], "result": result}, b"mcp-session-id: floor\r\n"
            )
            return
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if meta:  # the upstream speaks the handshake era, as it does behind the gateway
            params["_meta"] = {k: v for k, v in meta.items() if not k.startswith(ENVELOPE_PREFIX)}
        reply = await self.upstream.request(message["method"], params)
        reply["id"] = message["id"]
        self._reply(reply, b"")

    def _reply(self, message: dict[str, Any], extra_headers: bytes) -> None:
        if self.json_replies:
            content_type, body = b"application/json", orjson.dumps(message)
        else:
            content_type, body = (
                b"text/event-stream",
                b"event: message\r\ndata: " + orjson.dumps(message) + b"\r\n\r\n",
            )
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncache-control: no-cache\r\ncontent-length: %d\r\n%s\r\n"
            % (
                content_type,
                len(body),
                extra_headers,
            )
        )
        self.transport.write(head + body)


async def serve(port: int, command: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24
    )
    Front.upstream = Upstream(proc)
    await Front.upstream.start()
    server = await asyncio.get_running_loop().create_server(Front, "127.0.0.1", port)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("port", type=int)
    parser.add_argument("--json", action="store_true", help="JSON replies instead of one SSE event")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the upstream's command line")
    a = parser.parse_args()
    Front.json_replies = a.json
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    uvloop.run(serve(a.port, command))


if __name__ == "__main__":
    main()
