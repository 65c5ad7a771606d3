"""The lean Streamable HTTP path: `tools/call` and `tools/list` answered without the SDK's server stack.

The SDK's Streamable HTTP server builds, per request, a session transport, memory streams, an SSE
writer with several tasks and pydantic models of every message: most of a proxied call's CPU, and
most of a held call's memory. A call from a session the upstream cannot send requests to (no
sampling, elicitation or roots) is answered here instead: the body parsed once (orjson), the call
run through the same pipeline, the result passed through untouched. One that is answered at once
gets its reply in one piece (a JSON body, or a single pre-framed SSE event when the front speaks
SSE); one that may wait — held for a person, or reporting progress — gets a `CallStream`
(`proxy.edge.callstream`): watched for a client that leaves, resumable with `Last-Event-ID`, ended
by `notifications/cancelled`. Everything else (initialize, other notifications, other GETs, DELETE,
the 2026-07-28 era's waiting calls, sampling, errors we do not write ourselves) goes on to the SDK
exactly as before, with the body replayed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from mcp.shared.exceptions import MCPError
from mcp_types import CLIENT_INFO_META_KEY, INTERNAL_ERROR, PROTOCOL_VERSION_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from proxy.calls import ProgressFn
from proxy.edge.callstream import REQUEST_CANCELLED, CallStream, CallStreams, dumps, until_hangup
from proxy.edge.gateway import Gateway, Watched
from proxy.edge.replay import parse_event_id
from proxy.edge.sessions import Downstream
from proxy.identity import ANONYMOUS
from proxy.metrics import Metrics
from proxy.presence import ResponseStream

log = logging.getLogger("signoff.gateway")

LEAN_METHODS = frozenset({"tools/call", "tools/list"})


class LeanPath:
    """ASGI middleware in front of the SDK's app: answers the calls it can, passes on the rest."""

    def __init__(
        self,
        app: Any,
        gateway: Gateway,
        metrics: Metrics,
        *,
        path: str,
        json_response: bool,
        body_limit: int,
        loopback: bool,
        linger: float,
    ) -> None:
        self.app = app
        self.gateway = gateway
        self.path = path
        self.json_response = json_response
        self.body_limit = body_limit
        # As the SDK does for a loopback front: refuse other Host/Origin values (DNS rebinding).
        self.hosts = ("127.0.0.1:*", "localhost:*", "[::1]:*") if loopback else None
        # "host:*" means that host on any port, as the SDK reads it: a prefix check, worked out once.
        self._host_prefixes = tuple(h.removesuffix("*") for h in self.hosts or ())
        self._origin_prefixes = tuple(f"http://{p}" for p in self._host_prefixes)
        self.answered = {method: metrics.lean_answers.labels(method) for method in LEAN_METHODS}
        # A waiting call's events are kept for `linger` s after its answer, for a client that missed it.
        self.streams = CallStreams(linger)
        gateway.on_session_close.append(self._session_closed)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET":
            if not await self._resume(scope, receive, send):
                await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive, self.body_limit)
        plan = self.route(scope, body) if complete and len(body) <= self.body_limit else None
        if plan is not None:
            del body  # a held call waits for minutes: not with its request's body
            await self.respond(plan, receive, send)
            return
        await self.app(scope, _replay(body, complete, receive), send)

    def route(self, scope: dict[str, Any], body: bytes) -> Plan | None:
        """How this path answers a POST with this whole body, or None: the SDK's (nothing is sent)."""
        headers = _headers(scope)
        if not self._plain_request(headers):
            return None
        loaded = _load(body)
        message = _request(loaded, body)
        if message is None:
            stream = self._to_cancel(scope, headers, loaded)
            return Plan("cancel", stream=stream) if stream is not None else None
        down = self._session(scope, headers, message)
        how = self._how(down, message) if down is not None else None
        if how is None:
            return None
        return Plan(
            how,
            session_id=headers.get("mcp-session-id"),
            version=headers.get("mcp-protocol-version", ""),
            down=down,
            method=message["method"],
            request_id=message["id"],
            params=message["params"],
            watch_hangup=scope.get(WATCH_HANGUP),
        )

    async def respond(self, plan: Plan, receive: Any, send: Any) -> None:
        """Answer a request `route` took; `receive` is only read to learn that the client left.

        (A front that reports a hang-up itself, `WATCH_HANGUP` in the scope, passes no `receive`.)
        """
        if plan.kind == "cancel":
            await self._cancelled(plan, send)
        elif plan.kind == "now":
            await self._answer(send, plan)
        else:
            await self._stream(receive, send, plan)

    # -- deciding -------------------------------------------------------------------------------

    def _plain_request(self, headers: dict[str, str]) -> bool:
        accept = headers.get("accept", "")
        if "application/json" not in accept or "text/event-stream" not in accept:
            return False  # the SDK answers 406 with its own words
        if not headers.get("content-type", "").startswith("application/json"):
            return False
        return self._host_allowed(headers)

    def _host_allowed(self, headers: dict[str, str]) -> bool:
        # Anything else goes to the SDK, which refuses it or lets it through by the same rules.
        if self.hosts is not None:
            if not headers.get("host", "").startswith(self._host_prefixes):
                return False
            origin = headers.get("origin")
            if origin is not None and not origin.startswith(self._origin_prefixes):
                return False
        return True

    def _session(
        self, scope: dict[str, Any], headers: dict[str, str], message: dict[str, Any]
    ) -> Downstream | None:
        """The client session the request belongs to, if this path can serve it."""
        identity = scope.get("signoff.identity", ANONYMOUS)
        session_id = headers.get("mcp-session-id")
        if session_id is not None:
            down = self.gateway.by_session_id.get(session_id)
            # Another identity's session, or one we do not know: the SDK answers (404).
            if down is None or down.identity != identity or down.closed:
                return None
            if headers.get("mcp-protocol-version") in MODERN_PROTOCOL_VERSIONS:
                return None
            return down
        # The stateless 2026-07-28 era: every request says its protocol version in `_meta`.
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
        if version in MODERN_PROTOCOL_VERSIONS and headers.get("mcp-protocol-version") == version:
            info = meta.get(CLIENT_INFO_META_KEY) if isinstance(meta, dict) else None
            name = info.get("name") if isinstance(info, dict) else None
            return Downstream(
                connection=None,
                identity=identity,
                id=f"http-{uuid.uuid4().hex[:12]}",
                client_name=name if isinstance(name, str) else None,
                modern=True,
            )
        return None

    def _how(self, down: Downstream, message: dict[str, Any]) -> str | None:
        """How to answer: "now" (in one piece), "stream" (a call that may wait) or None (the SDK)."""
        if message.get("method") not in LEAN_METHODS:
            return None
        params = message.get("params")
        if params is None:
            params = message["params"] = {}
        if not isinstance(params, dict) or not isinstance(params.get("_meta", {}), dict):
            return None  # the SDK names what is wrong with the request
        if message["method"] == "tools/list":
            plain = not down.capabilities and "progressToken" not in (params.get("_meta") or {})
            return "now" if plain else None
        name, arguments = params.get("name"), params.get("arguments", {})
        if not isinstance(name, str) or not isinstance(arguments, dict):
            return None  # the SDK names what is wrong with the request
        if self.gateway.answers_at_once(down, params):
            return "now"
        # Upstream requests ride the SDK's request stream; the 2026-07-28 era's waits are the SDK's.
        return "stream" if not down.capabilities and not down.modern else None

    # -- answering ------------------------------------------------------------------------------

    async def _answer(self, send: Any, plan: Plan) -> None:
        self.answered[plan.method].inc()
        down, params = plan.down, plan.params
        try:
            if plan.method == "tools/call":
                result = await self.gateway.tools_call(down, params)
            else:
                result = await self.gateway.tools_list(down, params)
            if down.modern:
                result.setdefault("resultType", "complete")
                if plan.method == "tools/list":
                    # The 2026-07-28 list results carry cache hints; ours, like the SDK path's, say
                    # "do not cache" (the list depends on the caller and the live policy).
                    result.setdefault("ttlMs", 0)
                    result.setdefault("cacheScope", "private")
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": plan.request_id, "result": result}
        except MCPError as e:
            reply = {"jsonrpc": "2.0", "id": plan.request_id, "error": _error(e)}
        await self._send(send, plan.session_id, reply)

    async def _send(self, send: Any, session_id: str | None, reply: dict[str, Any]) -> None:
        payload = dumps(reply)
        if self.json_response:
            content_type, body = b"application/json", payload
        else:
            content_type, body = b"text/event-stream", b"event: message\r\ndata: " + payload + b"\r\n\r\n"
        response_headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-cache, no-transform"),
        ]
        if session_id is not None:
            response_headers.append((b"mcp-session-id", session_id.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})

    # -- calls that may wait --------------------------------------------------------------------

    async def _stream(self, receive: Any, send: Any, plan: Plan) -> None:
        """A call that may wait: events on its own stream (SSE front) or one JSON reply at the end."""
        self.answered["tools/call"].inc()
        down, request_id, params = plan.down, plan.request_id, plan.params
        stream = self.streams.open(down.id, request_id, down.identity.name)
        response, unwatch = _watch_hangup(stream, receive, send, plan.watch_hangup)
        progress: ProgressFn | None = None
        if not self.json_response:
            start = {
                "type": "http.response.start",
                "status": 200,
                "headers": _sse_headers(plan.session_id),
            }
            await send(start)
            stream.carried_by(send)
            if _primes(plan.version):
                await stream.event(None)
            token = (params.get("_meta") or {}).get("progressToken")
            progress = _progress(stream, token) if token is not None else None
        watched = Watched(request_id, response, lambda: stream.cancelled_by_client)
        stream.task = asyncio.current_task()
        try:
            result = await self.gateway.tools_call(down, params, progress=progress, watched=watched)
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "result": result}
        except MCPError as e:
            reply = {"jsonrpc": "2.0", "id": request_id, "error": _error(e)}
        except asyncio.CancelledError:
            if not _cancelled_here(stream):
                self.streams.dropped(stream)
                raise  # the server is stopping
            # As the SDK's 2025-era transport: a cancelled request's stream ends with an error for it.
            reply = {"jsonrpc": "2.0", "id": request_id, "error": _CANCELLED}
        except Exception:
            log.exception("tools/call %r failed", params.get("name"))
            reply = {"jsonrpc": "2.0", "id": request_id, "error": _INTERNAL}
        finally:
            # Nothing awaited since the call ended: a cancel from now on cannot land in it.
            stream.task = None
            unwatch()
            response.close()
        if self.json_response:
            self.streams.answered(stream)
            await self._send(send, plan.session_id, reply)
            return
        await stream.event(reply)
        self.streams.answered(stream)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _resume(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """A `GET` with `Last-Event-ID` for one of our streams: what it missed, then the rest live."""
        headers = _headers(scope)
        parsed = parse_event_id(headers.get("last-event-id", ""))
        session_id = headers.get("mcp-session-id")
        if parsed is None or session_id is None or "text/event-stream" not in headers.get("accept", ""):
            return False
        token, seen, request_id = parsed
        stream = self.streams.get(session_id, request_id)
        identity = scope.get("signoff.identity", ANONYMOUS)
        down = self.gateway.by_session_id.get(session_id)
        if (
            stream is None
            or stream.token != token
            or stream.owner != identity.name
            or down is None
            or down.closed
            or not self._host_allowed(headers)
        ):
            return False
        await send({"type": "http.response.start", "status": 200, "headers": _sse_headers(session_id)})
        # What it missed — including what arrives while that is written — then live, with no gap.
        while missed := stream.after(seen):
            for n, chunk in missed:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                seen = n
        if not stream.finished:
            response, hung_up = _response_for(stream, send)
            hangup = asyncio.create_task(until_hangup(receive, hung_up))
            stream.carried_by(send)
            if _primes(headers.get("mcp-protocol-version", "")):
                await stream.event(None)
            if self.gateway.presence is not None:
                self.gateway.presence.resume(session_id, request_id, identity.name, response)
            answered = asyncio.ensure_future(stream.wait_finished())
            try:
                await asyncio.wait({answered, hangup}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                answered.cancel()
                hangup.cancel()
                response.close()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    def _to_cancel(self, scope: dict[str, Any], headers: dict[str, str], message: Any) -> CallStream | None:
        """The stream of ours a `notifications/cancelled` is for (the SDK stops its own calls)."""
        if not isinstance(message, dict) or message.get("method") != "notifications/cancelled":
            return None
        params = message.get("params")
        request_id = params.get("requestId") if isinstance(params, dict) else None
        session_id = headers.get("mcp-session-id")
        if "id" in message or request_id is None or session_id is None:
            return None
        stream = self.streams.get(session_id, str(request_id))
        identity = scope.get("signoff.identity", ANONYMOUS)
        if stream is None or stream.owner != identity.name or stream.finished:
            return None
        return stream

    async def _cancelled(self, plan: Plan, send: Any) -> None:
        stream = plan.stream
        assert stream is not None
        stream.cancel(by_client=True)
        accepted = [(b"mcp-session-id", stream.session_id.encode())]
        await send({"type": "http.response.start", "status": 202, "headers": accepted})
        await send({"type": "http.response.body", "body": b""})

    async def _session_closed(self, down: Downstream) -> None:
        self.streams.session_closed(down.id)


_CANCELLED = {"code": REQUEST_CANCELLED, "message": "Request cancelled"}
_INTERNAL = {"code": INTERNAL_ERROR, "message": "Internal error"}


def _response_for(stream: CallStream, send: Any) -> tuple[ResponseStream, Callable[[], None]]:
    """The response `send` writes, and what to do when its client hangs up (close it, detach `stream`)."""
    response = ResponseStream()

    def hung_up() -> None:
        stream.detach(send)
        response.close()

    return response, hung_up


def _watch_hangup(
    stream: CallStream, receive: Any, send: Any, watch: WatchHangup | None
) -> tuple[ResponseStream, Callable[[], None]]:
    """`_response_for`, watched: returns the response and a function that stops watching.

    A front that knows when its connection is lost (`proxy.edge.front`) says so itself; otherwise
    a task reads `receive` until it says so.
    """
    response, hung_up = _response_for(stream, send)
    if watch is not None:
        return response, watch(hung_up)
    return response, asyncio.create_task(until_hangup(receive, hung_up)).cancel


def _cancelled_here(stream: CallStream) -> bool:
    """Whether the cancellation came from the stream (the client, or its session's end)."""
    task = asyncio.current_task()
    if task is None or task.cancelling() != 1 or not stream.cancel_requested:
        return False
    task.uncancel()
    return True


def _error(e: MCPError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": e.error.code, "message": e.error.message}
    if e.error.data is not None:
        error["data"] = e.error.data
    return error


def _progress(stream: CallStream, token: Any) -> ProgressFn:
    """Report progress on the call's stream, against the client's token."""

    async def report(progress: float, total: float | None, message: str | None) -> None:
        params: dict[str, Any] = {"progressToken": token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await stream.event({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})

    return report


def _primes(version: str) -> bool:
    """Whether the client reads an empty priming event (2025-11-25 on; older ones cannot parse it)."""
    return version >= "2025-11-25"


WATCH_HANGUP = "signoff.watch_hangup"
"""Scope key of a front's `WatchHangup`: `watch(on_hangup)` returns a function that stops watching."""

WatchHangup = Callable[[Callable[[], None]], Callable[[], None]]


@dataclass(slots=True)
class Plan:
    """A request the lean path answers: how, and the little of it the answer needs.

    A held call keeps this for minutes, not the request's body and headers.
    """

    kind: str  # "now" (in one piece), "stream" (a call that may wait) or "cancel"
    session_id: str | None = None
    version: str = ""
    down: Downstream = None  # type: ignore[assignment]  # set for "now" and "stream"
    method: str = ""
    request_id: Any = None
    params: dict[str, Any] = None  # type: ignore[assignment]
    watch_hangup: WatchHangup | None = None
    stream: CallStream | None = None  # "cancel": the stream to stop


def _sse_headers(session_id: str | None) -> list[tuple[bytes, bytes]]:
    out = [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache, no-transform"),
        (b"connection", b"keep-alive"),
        (b"x-accel-buffering", b"no"),
    ]
    if session_id is not None:
        out.append((b"mcp-session-id", session_id.encode()))
    return out


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


async def _read_body(receive: Any, limit: int) -> tuple[bytes, bool]:
    """The request body, and whether all of it was read (False: over `limit`, the rest still unread)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False  # a disconnect: let the SDK see it
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > limit:
            return b"".join(chunks), False


def _replay(body: bytes, complete: bool, receive: Any) -> Any:
    """A `receive` that gives the SDK the body already read, then whatever the client sends next."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()

    return replay


def _load(body: bytes) -> Any:
    """The body's JSON (None if it is not JSON: the SDK names the problem)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _request(message: Any, body: bytes) -> dict[str, Any] | None:
    """The body as one JSON-RPC request, or None for anything else (batches, notifications: the SDK's)."""
    if (
        not isinstance(message, dict)
        or message.get("jsonrpc") != "2.0"
        or "id" not in message
        or not isinstance(message.get("id"), int | str)
        or isinstance(message.get("id"), bool)
        or not isinstance(message.get("method"), str)
    ):
        return None
    if _has_big_number(body):
        return None  # orjson would have turned an integer beyond 64 bits into a float: not what was sent
    if body.count(b"{") + body.count(b"[") >= _ORJSON_DEPTH:
        try:  # nesting this deep may be more than orjson writes back; the SDK's parser refuses it
            orjson.dumps(message)
        except TypeError:
            return None
    return message


_ORJSON_DEPTH = 255  # orjson.dumps refuses deeper nesting; fewer brackets than this cannot reach it


# Every digit as "0", everything else as " ": then nineteen digits in a row are one substring search.
# (A regex for \d{19} took ~0.7 ms over a 100 KB argument of text; this takes a tenth of that.)
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_NINETEEN_DIGITS = b"0" * 19


def _has_big_number(body: bytes) -> bool:
    """Whether the raw JSON may hold an integer too long for orjson to keep exactly (cheap check).

    Nineteen digits in a row (in a number, or in a string: then the SDK path simply takes it).
    """
    return _NINETEEN_DIGITS in body.translate(_DIGITS_AS_ZEROS)
