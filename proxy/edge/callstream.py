"""A `tools/call` that waits — held for a person, or reporting progress — answered on a lean stream.

The SDK's Streamable HTTP server gives every request a session transport, memory streams, an SSE
writer with its tasks and a pydantic model of every message: for a call held for minutes, most of
what it costs (≈ 64 of ≈ 97 kB). A `CallStream` keeps what such a call needs and no more: the
events it sent (ids made as `proxy.edge.replay` makes them, so a client that lost the stream resumes
it with `GET` + `Last-Event-ID`), the HTTP response that carries it now, a ping while nothing else
is said, and whether the client cancelled it. `CallStreams` finds a call's stream by session and
request id, for a resumed `GET`, for `notifications/cancelled` and for a session that ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.edge.replay import event_id
from proxy.timers import Timer, later

Send = Callable[[dict[str, Any]], Awaitable[None]]

PING_EVERY = 15.0  # as sse-starlette: an idle stream is not closed by proxies on the way
# Only progress and the answer are ever written to a call's stream, and progress supersedes
# progress: a client that resumes needs the last few, not the hundreds of a long hold.
KEEP_EVENTS = 8
PING = b": ping\r\n\r\n"
REQUEST_CANCELLED = -32800  # how the 2025-era wire ends a request its client cancelled


def frame(eid: str, message: dict[str, Any] | None) -> bytes:
    """One SSE event as the SDK writes it (`None`: the priming event, an id with empty data)."""
    if message is None:
        return b"id: " + eid.encode() + b"\r\ndata: \r\n\r\n"
    return b"id: " + eid.encode() + b"\r\nevent: message\r\ndata: " + dumps(message) + b"\r\n\r\n"


def dumps(message: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(message)
    except TypeError:  # an integer beyond 64 bits in an upstream's result: the slow, exact way
        import json

        return json.dumps(message).encode()


class CallStream:
    """The events of one waiting call and the response that carries them now."""

    # Thousands wait at once: no per-instance dict.
    __slots__ = (
        "_done",
        "_last_write",
        "_ping",
        "_pinging",
        "cancel_requested",
        "cancelled_by_client",
        "events",
        "finished",
        "owner",
        "request_id",
        "send",
        "seq",
        "session_id",
        "task",
        "token",
    )

    def __init__(self, session_id: str, request_id: Any, owner: str) -> None:
        self.session_id = session_id
        self.request_id = request_id
        self.owner = owner  # the identity that made the call: only it may resume or cancel it
        self.token = secrets.token_hex(6)
        self.seq = 0
        self.events: list[tuple[int, bytes]] = []
        self.send: Send | None = None
        self.finished = False
        self.cancel_requested = False
        self.cancelled_by_client = False
        self.task: asyncio.Task[Any] | None = None  # the call, cancelled by the client or its session's end
        self._done: asyncio.Future[None] | None = None
        self._last_write = 0.0
        self._ping: Timer | None = None
        self._pinging: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.session_id, str(self.request_id))

    def next_id(self) -> str:
        self.seq += 1
        return event_id(self.token, self.seq, str(self.request_id))

    async def event(self, message: dict[str, Any] | None) -> None:
        """Keep an event for replay and write it to the response carrying the stream, if any."""
        eid = self.next_id()
        chunk = frame(eid, message)
        if message is not None:
            self.events.append((self.seq, chunk))
            if len(self.events) > KEEP_EVENTS:
                del self.events[0]
        await self.write(chunk)

    async def write(self, chunk: bytes) -> None:
        send = self.send
        if send is None:
            return
        self._last_write = asyncio.get_running_loop().time()
        try:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception:  # the client went: it may resume the stream
            self.detach(send)

    def carried_by(self, send: Send | None) -> None:
        """`send` now carries the stream (None: no response does)."""
        self.send = send
        if send is not None and self._ping is None and not self.finished:
            self._schedule_ping()

    def after(self, seq: int) -> list[tuple[int, bytes]]:
        """The kept events after `seq` (with their numbers), for a client resuming the stream."""
        return [(n, chunk) for n, chunk in self.events if n > seq]

    def detach(self, send: Send) -> None:
        """The response `send` writes to has closed: until a resume, no response carries the stream."""
        if self.send == send:  # `==`: a bound method is a new object each time it is read
            self.send = None

    def finish(self) -> None:
        """The final answer is written: wake a resumed response waiting for it; stop pinging."""
        self.finished = True
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def wait_finished(self) -> None:
        if self.finished:
            return
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._done)

    def cancel(self, by_client: bool) -> None:
        """Stop the call: the client asked (`notifications/cancelled`), or its session ended."""
        if self.task is not None and not self.task.done() and not self.cancel_requested:
            self.cancel_requested = True
            self.cancelled_by_client = by_client
            self.task.cancel()

    def _schedule_ping(self, after: float | None = None) -> None:
        delay = PING_EVERY if after is None else after
        self._ping = later(delay, self._maybe_ping)

    def _maybe_ping(self) -> None:
        # A timer, not a task per stream: thousands of held calls cost a heap entry each while they wait.
        self._ping = None
        if self.finished or self.send is None:
            return
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._last_write
        if quiet < PING_EVERY * 0.99:  # something was said since: look again when it has been quiet long
            self._schedule_ping(PING_EVERY - quiet)
            return
        if self._pinging is None:
            self._pinging = loop.create_task(self._write_ping())
        self._schedule_ping()

    async def _write_ping(self) -> None:
        try:
            await self.write(PING)
        finally:
            self._pinging = None


class CallStreams:
    """The lean path's waiting calls by (session id, request id), kept `linger` s after their answer."""

    def __init__(self, linger: float) -> None:
        self.linger = linger
        self._streams: dict[tuple[str, str], CallStream] = {}
        self._of_session: dict[str, set[CallStream]] = {}

    def open(self, session_id: str, request_id: Any, owner: str) -> CallStream:
        stream = CallStream(session_id, request_id, owner)
        self._streams[stream.key] = stream
        self._of_session.setdefault(session_id, set()).add(stream)
        return stream

    def get(self, session_id: str, request_id: str) -> CallStream | None:
        return self._streams.get((session_id, request_id))

    def answered(self, stream: CallStream) -> None:
        """The call is answered: a client that missed the answer may still fetch it for `linger` s."""
        stream.finish()
        asyncio.get_running_loop().call_later(self.linger, self._forget, stream)

    def dropped(self, stream: CallStream) -> None:
        """The call ended without an answer to give (the server is stopping)."""
        stream.finish()
        self._forget(stream)

    def _forget(self, stream: CallStream) -> None:
        if self._streams.get(stream.key) is stream:
            del self._streams[stream.key]
        others = self._of_session.get(stream.session_id)
        if others is not None:
            others.discard(stream)
            if not others:
                del self._of_session[stream.session_id]

    def session_closed(self, session_id: str) -> None:
        """The client ended its session (or it expired): its waiting calls end with it."""
        for stream in list(self._of_session.get(session_id, ())):
            stream.cancel(by_client=False)
            self._forget(stream)


async def until_hangup(
    receive: Callable[[], Awaitable[dict[str, Any]]], on_hangup: Callable[[], None]
) -> None:
    """Once a request's body is read, `receive` only ever says that the client left."""
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass
    on_hangup()
