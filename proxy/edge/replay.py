"""Recent SSE events of one MCP session, so a client whose response stream broke can resume it.

Streamable HTTP resumability: every event the server writes on a stream gets an id; a client that
lost the stream reconnects with `GET` + `Last-Event-ID` and receives what it missed, then the rest
live. The SDK asks an `EventStore` to keep and replay those events. This one is in memory and
bounded: a stream keeps at most `max_events` events (the oldest progress notifications go first;
the final response is always the newest), and a stream is forgotten `linger` seconds after its
final response, the longest a client that missed it may take to come back.

One store per MCP session: stream ids are JSON-RPC request ids (and one fixed id for the session's
GET stream), so they repeat across sessions, and a store shared by sessions would replay one
client's events to another.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCError, JSONRPCMessage, JSONRPCResponse

MAX_EVENTS_PER_STREAM = 100


@dataclass
class _Stream:
    token: str  # tells this stream apart from an earlier one under the same request id
    events: deque[tuple[int, JSONRPCMessage | None]]
    seq: int = 0
    finished_at: float | None = None


@dataclass
class SessionEvents(EventStore):
    """The SSE events of one session's streams, for replay after a reconnect."""

    linger: float
    max_events: int = MAX_EVENTS_PER_STREAM
    clock: Callable[[], float] = time.monotonic
    _streams: dict[StreamId, _Stream] = field(default_factory=dict)
    _finished: deque[tuple[float, StreamId, str]] = field(default_factory=deque)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        self._forget_finished()
        stream = self._streams.get(stream_id)
        # `None` is the priming event that opens a request's stream (and re-primes a resumed one):
        # after a finished stream under the same id, it starts a new one.
        if stream is None or (message is None and stream.finished_at is not None):
            stream = _Stream(secrets.token_hex(6), deque(maxlen=self.max_events))
            self._streams[stream_id] = stream
        stream.seq += 1
        stream.events.append((stream.seq, message))
        if stream.finished_at is None and _answers(message, stream_id):
            stream.finished_at = self.clock()
            self._finished.append((stream.finished_at, stream_id, stream.token))
        return event_id(stream.token, stream.seq, stream_id)

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        parsed = parse_event_id(last_event_id)
        if parsed is None:
            return None
        token, after, stream_id = parsed
        stream = self._streams.get(stream_id)
        if stream is None or stream.token != token:
            return None
        for seq, message in list(stream.events):
            if seq > after and message is not None:
                await send_callback(EventMessage(message, event_id(token, seq, stream_id)))
        # A finished stream has nothing more to send: returning None lets the resumed response end
        # after the replay instead of staying open for messages that will never come.
        return stream_id if stream.finished_at is None else None

    def _forget_finished(self) -> None:
        cutoff = self.clock() - self.linger
        while self._finished and self._finished[0][0] <= cutoff:
            _, stream_id, token = self._finished.popleft()
            stream = self._streams.get(stream_id)
            if stream is not None and stream.token == token:
                del self._streams[stream_id]

    @property
    def streams_kept(self) -> int:
        """How many streams are kept (not `__len__`: the SDK tests a store's truthiness)."""
        return len(self._streams)


def event_id(token: str, seq: int, stream_id: StreamId) -> EventId:
    """An SSE event id naming its stream; the request id is encoded, as it may hold any character."""
    encoded = base64.urlsafe_b64encode(stream_id.encode()).decode().rstrip("=")
    return f"{token}.{seq}.{encoded}"


def stream_of(last_event_id: str) -> StreamId | None:
    """The stream (request id) an event id of ours belongs to; None if it is not one of ours."""
    parsed = parse_event_id(last_event_id)
    return parsed[2] if parsed is not None else None


def parse_event_id(value: str) -> tuple[str, int, StreamId] | None:
    """(stream token, sequence number, stream id) of an event id of ours; None if it is not one."""
    parts = value.split(".", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        return None
    token, seq, encoded = parts
    try:
        stream_id = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return token, int(seq), stream_id


def _answers(message: JSONRPCMessage | None, stream_id: StreamId) -> bool:
    return isinstance(message, JSONRPCResponse | JSONRPCError) and str(message.id) == stream_id
