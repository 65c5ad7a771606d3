"""Whether an HTTP client still waits for a request's answer, or went away without a word.

A client that times out, is killed or loses its network often says nothing: no
`notifications/cancelled`, no session DELETE. The only sign is that the HTTP response it was reading
the answer from closed. Streamable HTTP lets a client resume a broken stream (`GET` with
`Last-Event-ID`), so a closed stream is not the end yet: the client is gone once no response carries
the request's answer for `grace` seconds.

`ResponseStream` is one HTTP response; `WatchResponses` (ASGI middleware, outside the SDK) opens one
per request and closes it when the response ends or the client hangs up. `Presence` ties the streams
of one in-flight request together and reports the request abandoned when the grace runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from proxy.edge.replay import stream_of

SCOPE_KEY = "signoff.response"  # the ASGI scope entry holding a request's ResponseStream


class ResponseStream:
    """One HTTP response a client reads answers from; closed when it ends or the client hangs up."""

    def __init__(self) -> None:
        self.closed = False
        self._on_close: list[Callable[[], None]] = []

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the response closes (now, if it already has)."""
        if self.closed:
            callback()
        else:
            self._on_close.append(callback)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()


class Attendance:
    """The open responses of one in-flight request; `on_gone` runs once none was open for `grace` s."""

    def __init__(self, grace: float, owner: str, on_gone: Callable[[], None]) -> None:
        self.grace = grace
        self.owner = owner  # the identity that made the request: only it may resume the stream
        self.on_gone = on_gone
        self.open = 0
        self.ended = False  # answered, or given up on
        self._timer: asyncio.TimerHandle | None = None

    def attach(self, stream: ResponseStream) -> None:
        """`stream` now carries this request's answer (the original response or a resumed one)."""
        if self.ended:
            return
        if not stream.closed:
            self.open += 1
            self._stop_timer()
            stream.when_closed(self._detach)
        self._start_timer_if_unheard()

    def finish(self) -> None:
        """The request ended (answered, refused or cancelled): nothing to watch any more."""
        self.ended = True
        self._stop_timer()

    def _detach(self) -> None:
        self.open -= 1
        self._start_timer_if_unheard()

    def _start_timer_if_unheard(self) -> None:
        if self.open == 0 and self._timer is None and not self.ended:
            self._timer = asyncio.get_running_loop().call_later(self.grace, self._expire)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.open == 0 and not self.ended:
            self.ended = True
            self.on_gone()


class Presence:
    """Which in-flight HTTP requests still have a client listening for the answer."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._waiting: dict[tuple[str, str], Attendance] = {}

    @contextlib.contextmanager
    def watching(
        self,
        session_id: str,
        request_id: Any,
        owner: str,
        stream: ResponseStream,
        on_gone: Callable[[], None],
    ) -> Iterator[Attendance]:
        """Watch a request while the block runs; `on_gone` if its client leaves for longer than the grace."""
        key = (session_id, str(request_id))  # the SDK names a request's stream str(JSON-RPC id)
        attendance = Attendance(self.grace, owner, on_gone)
        self._waiting[key] = attendance
        attendance.attach(stream)
        try:
            yield attendance
        finally:
            attendance.finish()
            if self._waiting.get(key) is attendance:
                del self._waiting[key]

    def resume(self, session_id: str, request_id: str, owner: str, stream: ResponseStream) -> bool:
        """A client reconnected to a request's stream; True if that request is being watched."""
        attendance = self._waiting.get((session_id, request_id))
        if attendance is None or attendance.owner != owner:
            return False
        attendance.attach(stream)
        return True


class WatchResponses:
    """ASGI middleware: a `ResponseStream` per request, closed when the response ends or the client leaves.

    It watches the client from outside the SDK, so it needs none of the SDK's internals: the response
    ends when the app returns, and a hang-up is the ASGI `http.disconnect` message. An SSE response
    (sse-starlette) asks for that message itself and we see it pass by; nothing asks while a JSON
    response (`json_response` mode) waits for its answer, so there we listen once the body is read.
    """

    def __init__(self, app: Any, presence: Presence, *, json_response: bool = False) -> None:
        self.app = app
        self.presence = presence
        self.json_response = json_response

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "POST"):
            await self.app(scope, receive, send)
            return
        stream = ResponseStream()
        scope[SCOPE_KEY] = stream
        if scope["method"] == "GET":
            self._resume(scope, stream)
        hangup: asyncio.Task[None] | None = None

        async def receive_watching() -> dict[str, Any]:
            nonlocal hangup
            message = await receive()
            if message["type"] == "http.disconnect":
                stream.close()
            elif self.json_response and not message.get("more_body", False) and hangup is None:
                # The body is read: from now on `receive` only ever says the client left (uvicorn
                # answers every caller, should an SSE response of this request listen too).
                hangup = asyncio.create_task(_until_hangup(receive, stream))
            return message

        try:
            await self.app(scope, receive_watching, send)
        finally:
            stream.close()
            if hangup is not None:
                hangup.cancel()

    def _resume(self, scope: dict[str, Any], stream: ResponseStream) -> None:
        """A GET with `Last-Event-ID` resumes a request's stream: it counts as that request's client."""
        headers = dict(scope.get("headers") or ())
        last_event_id = headers.get(b"last-event-id")
        session_id = headers.get(b"mcp-session-id")
        if last_event_id is None or session_id is None:
            return
        request_id = stream_of(last_event_id.decode("latin-1"))
        identity = scope.get("signoff.identity")
        if request_id is not None and identity is not None:
            self.presence.resume(session_id.decode("latin-1"), request_id, identity.name, stream)


async def _until_hangup(receive: Any, stream: ResponseStream) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.close()
