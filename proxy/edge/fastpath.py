"""The lean Streamable HTTP path: `tools/call` and `tools/list` answered without the SDK's server stack.

The SDK's Streamable HTTP server builds, per request, a session transport, memory streams, an SSE
writer with several tasks and pydantic models of every message: most of a proxied call's CPU. A call
that needs none of that — an existing session, nothing the upstream might ask the client, no
progress to relay, not held for a human — is answered here instead: the body parsed once (orjson),
the call run through the same pipeline, the result passed through untouched, and the reply written
in one piece (a JSON body, or a single pre-framed SSE event when the front speaks SSE). Everything
else (initialize, notifications, GET/DELETE, held calls, progress, sampling, errors we do not write
ourselves) goes on to the SDK exactly as before, with the body replayed.
"""

from __future__ import annotations

import fnmatch
import re
import uuid
from typing import Any

import orjson
from mcp.shared.exceptions import MCPError
from mcp_types import CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from proxy.edge.gateway import Gateway
from proxy.edge.sessions import Downstream
from proxy.identity import ANONYMOUS
from proxy.metrics import Metrics

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
    ) -> None:
        self.app = app
        self.gateway = gateway
        self.path = path
        self.json_response = json_response
        self.body_limit = body_limit
        # As the SDK does for a loopback front: refuse other Host/Origin values (DNS rebinding).
        self.hosts = ("127.0.0.1:*", "localhost:*", "[::1]:*") if loopback else None
        self.answered = {method: metrics.lean_answers.labels(method) for method in LEAN_METHODS}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        body, complete = await _read_body(receive, self.body_limit)
        if complete and len(body) <= self.body_limit and self._plain_request(headers):
            message = _parse(body)
            down = self._session(scope, headers, message) if message is not None else None
            if message is not None and down is not None and self._answerable(down, message):
                await self._answer(send, headers, down, message)
                return
            del message, down
        # What this frame parsed must not stay alive while the SDK serves (a held call, for minutes).
        del headers
        await self.app(scope, _replay(body, complete, receive), send)

    # -- deciding -------------------------------------------------------------------------------

    def _plain_request(self, headers: dict[str, str]) -> bool:
        accept = headers.get("accept", "")
        if "application/json" not in accept or "text/event-stream" not in accept:
            return False  # the SDK answers 406 with its own words
        if not headers.get("content-type", "").startswith("application/json"):
            return False
        if self.hosts is not None:
            if not any(fnmatch.fnmatch(headers.get("host", ""), h) for h in self.hosts):
                return False
            origin = headers.get("origin")
            if origin is not None and not any(fnmatch.fnmatch(origin, f"http://{h}") for h in self.hosts):
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

    def _answerable(self, down: Downstream, message: dict[str, Any]) -> bool:
        if message.get("method") not in LEAN_METHODS:
            return False
        params = message.get("params")
        if params is None:
            params = message["params"] = {}
        if not isinstance(params, dict) or not isinstance(params.get("_meta", {}), dict):
            return False  # the SDK names what is wrong with the request
        if message["method"] == "tools/list":
            return not down.capabilities and "progressToken" not in (params.get("_meta") or {})
        name, arguments = params.get("name"), params.get("arguments", {})
        if not isinstance(name, str) or not isinstance(arguments, dict):
            return False  # the SDK names what is wrong with the request
        return self.gateway.answers_at_once(down, params)

    # -- answering ------------------------------------------------------------------------------

    async def _answer(
        self, send: Any, headers: dict[str, str], down: Downstream, message: dict[str, Any]
    ) -> None:
        self.answered[message["method"]].inc()
        request_id = message["id"]
        params = message["params"]
        try:
            if message["method"] == "tools/call":
                result = await self.gateway.tools_call(down, params)
            else:
                result = await self.gateway.tools_list(down, params)
            if down.modern:
                result.setdefault("resultType", "complete")
                if message["method"] == "tools/list":
                    # The 2026-07-28 list results carry cache hints; ours, like the SDK path's, say
                    # "do not cache" (the list depends on the caller and the live policy).
                    result.setdefault("ttlMs", 0)
                    result.setdefault("cacheScope", "private")
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "result": result}
        except MCPError as e:
            error: dict[str, Any] = {"code": e.error.code, "message": e.error.message}
            if e.error.data is not None:
                error["data"] = e.error.data
            reply = {"jsonrpc": "2.0", "id": request_id, "error": error}
        await self._send(send, headers, reply)

    async def _send(self, send: Any, headers: dict[str, str], reply: dict[str, Any]) -> None:
        try:
            payload = orjson.dumps(reply)
        except TypeError:  # an integer beyond 64 bits in an upstream's result: the slow, exact way
            import json

            payload = json.dumps(reply).encode()
        if self.json_response:
            content_type, body = b"application/json", payload
        else:
            content_type, body = b"text/event-stream", b"event: message\r\ndata: " + payload + b"\r\n\r\n"
        response_headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-cache, no-transform"),
        ]
        session_id = headers.get("mcp-session-id")
        if session_id is not None:
            response_headers.append((b"mcp-session-id", session_id.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})


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


def _parse(body: bytes) -> dict[str, Any] | None:
    """One JSON-RPC request, or None for anything else (batches, notifications, bad JSON: the SDK's)."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
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
    return message


_LONG_DIGITS = re.compile(rb"\d{19}")


def _has_big_number(body: bytes) -> bool:
    """Whether the raw JSON may hold an integer too long for orjson to keep exactly (cheap check).

    Nineteen digits in a row (in a number, or in a string: then the SDK path simply takes it).
    """
    return _LONG_DIGITS.search(body) is not None
