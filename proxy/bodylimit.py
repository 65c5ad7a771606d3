"""The HTTP front's answer to an oversized request body: a JSON-RPC error that names the limit.

The SDK refuses a body over `max_request_body_size` with a plain-text 413 that no MCP client can show
usefully; this middleware rewrites that one response and passes everything else through untouched.
"""

from __future__ import annotations

import json
from typing import Any

ENVELOPE_BYTES = 64 * 1024  # room for the JSON-RPC envelope around arguments of max_argument_bytes


class JsonBodyLimit:
    """ASGI middleware: turn the SDK's plain-text 413 into a JSON-RPC error saying what the limit is."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rewriting = False

        async def send_json_413(message: dict[str, Any]) -> None:
            nonlocal rewriting
            if message["type"] == "http.response.start" and message["status"] == 413:
                rewriting = True
                return
            if not rewriting:
                await send(message)
                return
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                body = self._body()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 413,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, send_json_413)

    def _body(self) -> bytes:
        message = (
            f"Request body too large: the limit is {self.limit} bytes "
            f"(max_argument_bytes plus {ENVELOPE_BYTES // 1024} KiB for the JSON-RPC envelope). Nothing ran."
        )
        error = {"code": -32600, "message": message}
        return json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
