"""The agent-facing HTTP/1.1 connection: the lean path's requests served on it, the rest by uvicorn.

uvicorn gives every request a cycle with an `asyncio.Event`, a per-connection deque and flow
control with another Event, a scope, an ASGI task and a frame for each middleware: ≈ 7 kB that a
held call keeps for as long as it waits (10,000 held calls: ≈ 70 MB), and CPU on every call. Here a
connection reads each request itself — the head parsed by httptools, as uvicorn does, the body
counted by its `Content-Length` — and asks the lean path whether the request is its own. A request
that is not, and anything out of the ordinary (another path or method, a chunked body, `Expect`, an
upgrade, HTTP/1.0, a bad or missing token), is lent with the connection to uvicorn's own protocol,
with every byte read so far, the way uvicorn hands a connection to its WebSocket protocol; uvicorn
answers it through the same ASGI stack as before and, once it has answered everything it read,
gives the connection back.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy.edge.auth import BearerAuth
from proxy.edge.fastpath import WATCH_HANGUP, LeanPath, Plan

log = logging.getLogger("signoff.gateway")

MAX_HEAD = 16 * 1024  # a longer head is not one of ours: uvicorn answers it
PAUSE_AT = 64 * 1024  # stop reading when this much of the next requests waits behind the current one


class FrontProtocol(asyncio.Protocol):
    """One agent connection, until it hands itself over to uvicorn (built by uvicorn, per connection)."""

    # Thousands of connections wait at once, each with a held call: no per-instance dict.
    __slots__ = (
        "app_state",
        "auth",
        "buffer",
        "client",
        "closing",
        "config",
        "head",
        "idle",
        "keep_alive",
        "lean",
        "on_hangup",
        "response",
        "server_state",
        "tracing",
        "transport",
        "writable",
    )

    def __init__(
        self,
        lean: LeanPath,
        auth: BearerAuth,
        tracing: bool,
        *,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.lean = lean
        self.auth = auth
        self.tracing = tracing  # a request with a `traceparent` goes to uvicorn, whose stack reads it
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.buffer = bytearray()
        self.head: _Head | None = None  # the head of the request being read, once it is whole
        self.response: _Response | None = None  # the request being answered
        self.keep_alive = True
        self.closing = False  # the server is stopping: close once the answer is out
        self.idle: asyncio.TimerHandle | None = None
        self.on_hangup: Callable[[], None] | None = None
        self.writable: asyncio.Future[None] | None = None  # set while the transport's buffer is full

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._stop_idle_timer()
        self.buffer += data
        if self.response is not None:
            if len(self.buffer) > PAUSE_AT and self.transport is not None:
                self.transport.pause_reading()  # resumed when the current answer is out
            return
        self._serve_next()

    def eof_received(self) -> bool | None:
        return None  # close the transport: a half-closed client is gone for our purposes

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self._stop_idle_timer()
        self.transport = None
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        hung_up, self.on_hangup = self.on_hangup, None
        if hung_up is not None:
            hung_up()

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def shutdown(self) -> None:
        """The server is stopping (uvicorn calls this): close now if idle, else after the answer."""
        self.closing = True
        if self.response is None and self.transport is not None:
            self.transport.close()

    # -- reading requests ---------------------------------------------------------------------

    def _serve_next(self) -> None:
        """Take the next whole request in the buffer: answer it here, or hand the connection over."""
        if self.transport is None or self.response is not None or self.closing:
            return
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
            if end < 0:
                if len(self.buffer) >= MAX_HEAD:
                    self._hand_over()
                return
            self.head = _read_head(bytes(self.buffer[: end + 4]), self.lean, self.tracing)
            if self.head is None:
                self._hand_over()
                return
            scope = self.head.scope
            scope["client"] = self.client
            scope[WATCH_HANGUP] = self._watch_hangup
            # Before the body is waited for: a request without a valid token gets no further here.
            identity = self.auth.identify(scope)
            if identity is None:
                self._hand_over()  # uvicorn's stack answers 401 and logs why
                return
            scope["signoff.identity"] = identity
        head = self.head
        total = head.size + head.length
        if len(self.buffer) < total:
            return  # the rest of the body is on its way
        plan = self.lean.route(head.scope, bytes(self.buffer[head.size : total]))
        if plan is None:
            self._hand_over()
            return
        del self.buffer[:total]
        self.head = None
        self.keep_alive = head.keep_alive
        self.response = _Response(self)
        task = asyncio.get_running_loop().create_task(self._answer(plan, self.response))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    def _hand_over(self) -> None:
        """Lend the connection to uvicorn's protocol from this request on (with the bytes read so far)."""
        transport = self.transport
        if transport is None:
            return
        self.server_state.connections.discard(self)
        self._stop_idle_timer()
        data = bytes(self.buffer)
        self.buffer.clear()
        self.head = None
        self.transport = None
        transport.resume_reading()
        protocol = _Lent(self, config=self.config, server_state=self.server_state, app_state=self.app_state)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        transport.set_protocol(protocol)
        if self.closing:
            protocol.shutdown()
        if data:
            protocol.data_received(data)

    def _take_back(self, transport: asyncio.Transport) -> None:
        """uvicorn answered what it was lent and nothing more was sent: the next request is ours again."""
        self.transport = transport
        transport.set_protocol(self)
        self.server_state.connections.add(self)
        self.idle = asyncio.get_running_loop().call_later(self.config.timeout_keep_alive, self._close_idle)

    # -- answering ----------------------------------------------------------------------------

    async def _answer(self, plan: Plan, response: _Response) -> None:
        try:
            await self.lean.respond(plan, None, response.send)  # a hang-up: `_watch_hangup`
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("answering a request on the lean path failed")
            if not response.started:
                await response.send(_SERVER_ERROR_HEAD)
                await response.send(_SERVER_ERROR_BODY)
        finally:
            self.on_hangup = None
            if not response.complete and self.transport is not None:
                self.transport.close()  # an answer cut short: the client must not wait for the rest

    def _watch_hangup(self, on_hangup: Callable[[], None]) -> Callable[[], None]:
        self.on_hangup = on_hangup

        def unwatch() -> None:
            if self.on_hangup is on_hangup:
                self.on_hangup = None

        return unwatch

    def _answered(self) -> None:
        """The answer is out: the next request (if any is waiting), or wait for one."""
        self.response = None
        self.server_state.total_requests += 1
        transport = self.transport
        if transport is None:
            return
        if not self.keep_alive or self.closing:
            transport.close()
            return
        transport.resume_reading()
        if self.buffer:
            asyncio.get_running_loop().call_soon(self._serve_next)
        else:
            self.idle = asyncio.get_running_loop().call_later(
                self.config.timeout_keep_alive, self._close_idle
            )

    def _close_idle(self) -> None:
        self.idle = None
        if self.transport is not None and self.response is None and not self.buffer:
            self.transport.close()

    def _stop_idle_timer(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None


class _Lent(HttpToolsProtocol):
    """uvicorn's protocol on a connection the front lent it, given back once it has answered all it read.

    A client that opened its session on a connection (`initialize` is the SDK's) goes on to make its
    calls on it: without the way back, every call of a keep-alive client would take uvicorn's path.
    """

    def __init__(self, front: FrontProtocol, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.front = front
        self.reading = False  # a request has begun that is not read whole yet

    def on_message_begin(self) -> None:
        self.reading = True
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self.reading = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        transport = self.transport
        # Not with a request begun or queued behind this one: its bytes are in this parser now.
        if self.reading or self.pipeline or transport.is_closing() or not self.cycle.response_complete:
            return
        self._unset_keepalive_if_required()
        self.connections.discard(self)
        self.front._take_back(transport)


class _Head:
    """What a request's head says: its size, its body's length, and its ASGI scope for the lean path."""

    __slots__ = ("keep_alive", "length", "scope", "size")

    def __init__(self, size: int, scope: dict[str, Any], length: int, keep_alive: bool) -> None:
        self.size = size
        self.scope = scope
        self.length = length
        self.keep_alive = keep_alive


class _HeadParser:
    """httptools callbacks for one request's head."""

    __slots__ = ("done", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # As uvicorn: names lowercased, the trailing whitespace llhttp keeps dropped (RFC 9110 §5.5).
        self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.done = True


def _read_head(raw: bytes, lean: LeanPath, tracing: bool) -> _Head | None:
    """The head of a plain `POST` to the MCP path with a `Content-Length`; None for anything else."""
    callbacks = _HeadParser()
    parser = httptools.HttpRequestParser(callbacks)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserError:
        return None  # uvicorn answers 400
    if (
        not callbacks.done
        or parser.get_method() != b"POST"
        or parser.get_http_version() != "1.1"
        or parser.should_upgrade()
        or callbacks.url != lean.path.encode()
    ):
        return None
    length: int | None = None
    for name, value in callbacks.headers:
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif name in (b"transfer-encoding", b"expect", b"upgrade") or (tracing and name == b"traceparent"):
            return None
    if length is None or length > lean.body_limit:
        return None
    scope = {"type": "http", "method": "POST", "path": lean.path, "headers": callbacks.headers}
    return _Head(len(raw), scope, length, parser.should_keep_alive())


class _Response:
    """ASGI `send` for one answer, written straight to the connection."""

    __slots__ = ("chunked", "complete", "conn", "head", "started")

    def __init__(self, conn: FrontProtocol) -> None:
        self.conn = conn
        self.started = False
        self.complete = False
        self.chunked = False
        self.head = b""  # written with the first part of the body: one write for a whole answer

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn.writable is not None and not conn.writable.done():
            await conn.writable
        transport = conn.transport
        if transport is None or self.complete:
            return  # the client left: as uvicorn, what is sent after that goes nowhere
        if message["type"] == "http.response.start":
            self._start(message["status"], message.get("headers", ()))
            return
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self.chunked:
            data = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + (b"" if more else b"0\r\n\r\n")
        else:
            data = body
        if self.head:
            data, self.head = self.head + data, b""
        if data:
            transport.write(data)
        if not more:
            self.complete = True
            conn._answered()

    def _start(self, status: int, headers: Any) -> None:
        conn = self.conn
        self.started = True
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, http.HTTPStatus(status).phrase.encode())]
        lines += [b"%b: %b\r\n" % pair for pair in conn.server_state.default_headers]
        closes = not conn.keep_alive or conn.closing
        length = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"connection":
                closes = closes or value.lower() == b"close"
                continue  # HTTP/1.1 keeps a connection unless told: only a close is said, below
            lines.append(b"%b: %b\r\n" % (name, value))
            length = length or lowered == b"content-length"
        if not length and status >= 200 and status not in (204, 304):
            self.chunked = True
            lines.append(b"transfer-encoding: chunked\r\n")
        if closes:
            conn.keep_alive = False
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        self.head = b"".join(lines)


_SERVER_ERROR_HEAD = {
    "type": "http.response.start",
    "status": 500,
    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")],
}
_SERVER_ERROR_BODY = {"type": "http.response.body", "body": b"Internal Server Error"}
