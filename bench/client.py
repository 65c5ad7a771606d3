"""The bench's load client: a separate process that talks Streamable HTTP and prints JSON.

It is its own process so that its CPU never shares a GIL with the gateway or the upstream. The load
phases use a minimal Streamable HTTP client (asyncio streams + orjson: one keep-alive connection per
session, SSE or JSON replies, protocol 2025-11-25 negotiated by `initialize`, exactly as the SDK's
`mode="legacy"` does). It costs a few tens of microseconds of CPU per call where the SDK's client
costs about a millisecond: on a 2-core machine every client microsecond is taken from the servers
being measured (the gateway path runs three processes: client, gateway, upstream), so a heavy
client would both inflate absolute latency and hide the gateway's cost in the ratios. The `sdk`
mode measures the same calls with the SDK's `mcp.Client(mode="legacy")`, for reference.

Usage (each prints one JSON object on its last stdout line):
    client.py seq URL [--calls 300] [--warmup 50] [--payload-bytes 0] [--modern]
    client.py throughput URL [--sessions 8] [--calls 100] [--warmup 20]
    client.py sdk URL [--calls 300] [--warmup 50]
    client.py hold URL --count 10000 --sessions 100 [--window 100] [--metrics CONTROL/metrics]
        (prints progress lines {"event": ...} as it goes; waits for every held call to finish)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import resource
import statistics
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import orjson

PROTOCOL = "2025-11-25"  # what mcp.Client(mode="legacy") negotiates with the 2.x SDK
MODERN_PROTOCOL = "2026-07-28"  # --modern: stateless, no handshake; every request says its version
MODERN = False
TOKEN: str | None = None  # bearer token for the gateway's front (--token)
_IDS = itertools.count(1)  # JSON-RPC ids, unique across every connection of a session


class HttpError(Exception):
    pass


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")
    sys.stdout.flush()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile of `samples` (q in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class Conn:
    """One HTTP/1.1 keep-alive connection speaking MCP Streamable HTTP (POST + SSE or JSON reply)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path or "/mcp"
        self.session_id: str | None = None
        self.token = TOKEN
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    def _head(self, body_len: int, message: dict[str, Any]) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            "Accept: application/json, text/event-stream",
            f"Content-Length: {body_len}",
        ]
        if self.token:
            lines.append(f"Authorization: Bearer {self.token}")
        if MODERN:  # as the SDK's modern client: the version, the method and the tool in headers too
            lines += [f"Mcp-Protocol-Version: {MODERN_PROTOCOL}", f"Mcp-Method: {message['method']}"]
            name = (message.get("params") or {}).get("name")
            if isinstance(name, str):
                lines.append(f"Mcp-Name: {name}")
        elif self.session_id is not None:
            lines.append(f"Mcp-Session-Id: {self.session_id}")
            lines.append(f"Mcp-Protocol-Version: {PROTOCOL}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def post(self, message: dict[str, Any], on_headers: Any = None) -> dict[str, Any] | None:
        """Send one JSON-RPC message; return the JSON-RPC response (None for a notification's 202)."""
        assert self.reader is not None and self.writer is not None
        body = orjson.dumps(message)
        self.writer.write(self._head(len(body), message) + body)
        reader = self.reader
        status_line = await reader.readline()
        if not status_line:
            raise HttpError("connection closed")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[bytes, bytes] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip()
        if on_headers is not None:
            on_headers()
        sid = headers.get(b"mcp-session-id")
        if sid is not None:
            self.session_id = sid.decode()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            payload = await self._chunked(reader, headers)
        else:
            n = int(headers.get(b"content-length", b"0"))
            payload = await reader.readexactly(n) if n else b""
        if headers.get(b"connection", b"").lower() == b"close":
            await self.close()
            await self.open()
        if status == 202:
            return None
        if status != 200:
            raise HttpError(f"HTTP {status}: {payload[:300]!r}")
        if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            return self._last_response(payload, message.get("id"))
        return orjson.loads(payload)

    async def _chunked(self, reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await reader.readline()  # the empty trailer line
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    @staticmethod
    def _last_response(payload: bytes, request_id: Any) -> dict[str, Any]:
        """The JSON-RPC response among the SSE events (progress notifications and pings are skipped)."""
        for event in payload.replace(b"\r\n", b"\n").split(b"\n\n"):
            data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
            if not data:
                continue
            msg = orjson.loads(data)
            if msg.get("id") == request_id and ("result" in msg or "error" in msg):
                return msg
        raise HttpError(f"no response for request {request_id} in the SSE stream: {payload[:300]!r}")

    def next_id(self) -> int:
        return next(_IDS)

    async def initialize(self) -> dict[str, Any]:
        if MODERN:
            return {}  # the 2026-07-28 era has no handshake
        init = {
            "jsonrpc": "2.0",
            "id": self.next_id(),
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL,
                "capabilities": {},
                "clientInfo": {"name": "signoff-bench", "version": "1"},
            },
        }
        reply = await self.post(init)
        assert reply is not None and "result" in reply, reply
        version = reply["result"]["protocolVersion"]
        if version != PROTOCOL:
            raise HttpError(f"negotiated {version}, expected {PROTOCOL}")
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return reply["result"]

    async def call(self, name: str, arguments: dict[str, Any], on_headers: Any = None) -> dict[str, Any]:
        req = {
            "jsonrpc": "2.0",
            "id": self.next_id(),
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments},
        }
        if MODERN:
            req["params"]["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": MODERN_PROTOCOL,
                "io.modelcontextprotocol/clientInfo": {"name": "signoff-bench", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        reply = await self.post(req, on_headers)
        assert reply is not None
        if "error" in reply:
            raise HttpError(f"tools/call {name}: {reply['error']}")
        result = reply["result"]
        if result.get("isError"):
            raise HttpError(f"tools/call {name} failed: {result.get('content')}")
        return result


async def _session(url: str) -> Conn:
    conn = Conn(url)
    await conn.open()
    await conn.initialize()
    return conn


# -- modes -------------------------------------------------------------------------------------


async def seq(url: str, calls: int, warmup: int, payload_bytes: int) -> dict[str, Any]:
    conn = await _session(url)
    text = "x" * payload_bytes if payload_bytes else "hello"
    for _ in range(warmup):
        await conn.call("echo", {"text": text})
    samples: list[float] = []
    clock = time.perf_counter
    cpu0 = _cpu()
    for _ in range(calls):
        t0 = clock()
        result = await conn.call("echo", {"text": text})
        samples.append((clock() - t0) * 1000)
    cpu = _cpu() - cpu0
    assert result["content"][0]["text"] == text
    await conn.close()
    return {
        "calls": calls,
        "payload_bytes": payload_bytes,
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "mean_ms": round(statistics.fmean(samples), 3),
        "min_ms": round(min(samples), 3),
        "client_cpu_us_per_call": round(cpu / calls * 1e6, 1),
    }


async def throughput(url: str, sessions: int, calls: int, warmup: int) -> dict[str, Any]:
    conns = [await _session(url) for _ in range(sessions)]
    for conn in conns:
        for _ in range(warmup):
            await conn.call("echo", {"text": "warm"})
    samples: list[float] = []
    clock = time.perf_counter

    async def run(conn: Conn) -> None:
        for i in range(calls):
            t0 = clock()
            await conn.call("echo", {"text": f"call {i}"})
            samples.append((clock() - t0) * 1000)

    cpu0 = _cpu()
    started = clock()
    await asyncio.gather(*(run(c) for c in conns))
    wall = clock() - started
    cpu = _cpu() - cpu0
    for conn in conns:
        await conn.close()
    total = sessions * calls
    return {
        "sessions": sessions,
        "calls": total,
        "seconds": round(wall, 3),
        "calls_per_s": round(total / wall, 1),
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "client_cpu_share": round(cpu / wall, 3),  # cores the client used meanwhile
    }


async def sdk(url: str, calls: int, warmup: int) -> dict[str, Any]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else None
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0))
    async with (
        http,
        Client(streamable_http_client(url, http_client=http), mode="legacy", cache=None) as client,
    ):
        assert client.session.protocol_version == PROTOCOL, client.session.protocol_version
        for _ in range(warmup):
            await client.call_tool("echo", {"text": "hello"})
        samples: list[float] = []
        cpu0 = _cpu()
        for _ in range(calls):
            t0 = time.perf_counter()
            result = await client.call_tool("echo", {"text": "hello"})
            samples.append((time.perf_counter() - t0) * 1000)
        cpu = _cpu() - cpu0
        assert not result.is_error
    return {
        "calls": calls,
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "client_cpu_us_per_call": round(cpu / calls * 1e6, 1),
    }


async def _pending_gauge(metrics_url: str) -> int:
    """signoff_pending_approvals from the gateway's /metrics (the number of calls it holds)."""
    conn = Conn(metrics_url)
    await conn.open()
    try:
        assert conn.writer is not None and conn.reader is not None
        conn.writer.write(f"GET {conn.path} HTTP/1.1\r\nHost: {conn.host}:{conn.port}\r\n\r\n".encode())
        head = await conn.reader.readuntil(b"\r\n\r\n")
        length = int(
            next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
        )
        body = await conn.reader.readexactly(length)
    finally:
        await conn.close()
    for line in body.decode().splitlines():
        if line.startswith("signoff_pending_approvals "):
            return int(float(line.split()[1]))
    return -1


async def hold(url: str, count: int, sessions: int, window: int, metrics_url: str | None) -> dict[str, Any]:
    """Start `count` concurrent `hold_me` calls over `sessions` MCP sessions; wait for them all.

    HTTP/1.1 carries one open SSE response per connection, so every in-flight call has its own
    connection (bound to its session by Mcp-Session-Id), as any Streamable HTTP client would.

    Arrivals are closed-loop when `metrics_url` is given: at most `window` calls are sent but not yet
    held (counted by the gateway's pending gauge), so the bench measures 10,000 *held* calls rather
    than the gateway's behaviour under a burst of 10,000 arrivals. Without it (open loop), a call is
    started as soon as at most `window` calls are still waiting for their response headers.
    """
    session_ids = []
    for _ in range(sessions):
        conn = await _session(url)
        assert conn.session_id is not None
        session_ids.append(conn.session_id)
        await conn.close()
    started = 0
    done = 0
    pending = 0
    errors: list[str] = []
    finished_at: dict[int, float] = {}
    t_start = time.monotonic()
    headers_gate = asyncio.Semaphore(window)

    async def one(n: int) -> None:
        nonlocal done
        released = False

        def headers() -> None:
            nonlocal released
            if not released:
                released = True
                headers_gate.release()

        conn = Conn(url)
        conn.session_id = session_ids[n % sessions]
        try:
            await conn.open()
            await conn.call("hold_me", {"n": n}, on_headers=headers)
            finished_at[n] = time.time()
        except Exception as e:
            errors.append(f"{n}: {type(e).__name__}: {e}"[:300])
        finally:
            headers()
            done += 1
            await conn.close()

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            _emit(
                {
                    "event": "progress",
                    "seconds": round(time.monotonic() - t_start, 1),
                    "started": started,
                    "pending": pending,
                    "done": done,
                    "errors": len(errors),
                }
            )

    reporter = asyncio.create_task(report())
    tasks = []
    for n in range(count):
        if metrics_url is not None:
            while started - pending - done >= window:
                await asyncio.sleep(0.1)
                pending = await _pending_gauge(metrics_url)
        else:
            await headers_gate.acquire()
        tasks.append(asyncio.create_task(one(n)))
        started += 1
    _emit({"event": "all_sent", "seconds": round(time.monotonic() - t_start, 1)})
    await asyncio.gather(*tasks)
    reporter.cancel()
    return {
        "count": count,
        "sessions": sessions,
        "window": window,
        "closed_loop": metrics_url is not None,
        "ok": len(finished_at),
        "errors": len(errors),
        "first_errors": errors[:5],
        "seconds": round(time.monotonic() - t_start, 1),
        "client_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["seq", "throughput", "sdk", "hold"])
    parser.add_argument("url")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--payload-bytes", type=int, default=0)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=100, help="hold: calls sent but not yet held")
    parser.add_argument("--metrics", help="hold: the gateway's /metrics URL (closed-loop arrivals)")
    parser.add_argument("--token", help="bearer token (the gateway's front requires one)")
    parser.add_argument("--modern", action="store_true", help="speak the 2026-07-28 era (stateless)")
    a = parser.parse_args()
    global TOKEN, MODERN
    MODERN = a.modern
    TOKEN = a.token
    if a.mode == "seq":
        out = asyncio.run(seq(a.url, a.calls, a.warmup, a.payload_bytes))
    elif a.mode == "throughput":
        out = asyncio.run(throughput(a.url, a.sessions, a.calls, a.warmup))
    elif a.mode == "sdk":
        out = asyncio.run(sdk(a.url, a.calls, a.warmup))
    else:
        out = asyncio.run(hold(a.url, a.count, a.sessions, a.window, a.metrics))
    _emit({"event": "result", **out})


if __name__ == "__main__":
    main()
