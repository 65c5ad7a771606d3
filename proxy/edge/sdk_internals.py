"""Every place signoff relies on the mcp SDK (2.3) beyond its public API, each saying what it assumes.

Kept in one module so that an SDK upgrade has one file to check (`tests/test_clients.py` and
`tests/test_conformance.py` exercise all of it against real clients).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import EventStore
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route

Ctx = ServerRequestContext[Any, Any]


def connection_of(ctx: Ctx) -> Connection:
    """The per-client `Connection` behind a request context."""
    # mcp 2.3 builds `ServerRequestContext` without the connection; its `ServerSession` holds it.
    return ctx.session._connection


def peer_cancelled(ctx: Ctx) -> bool:
    """Whether the client sent `notifications/cancelled` for this request.

    Read when the request's handler is cancelled, to tell the client cancelling it from the
    client's session ending (DELETE, expiry, a closed stdio pipe): the dispatcher sets the public
    `DispatchContext.cancel_requested` before it cancels the handler, but only for the former.
    `ServerRequestContext` does not expose the dispatch context; its `ServerSession` holds it.
    """
    return ctx.session._request_outbound.cancel_requested.is_set()


class _StorePerSession(StreamableHTTPSessionManager):
    """The SDK's session manager, giving every session a new event store of its own.

    The manager passes `self.event_store` to each session's transport as it creates it (and reads
    it nowhere else), so a property that returns a fresh store scopes replay to one session.
    """

    def __init__(self, app: Server[Any], new_store: Callable[[], EventStore], **options: Any) -> None:
        self._new_store = new_store
        super().__init__(app, **options)

    @property  # type: ignore[override]
    def event_store(self) -> EventStore:
        return self._new_store()

    @event_store.setter
    def event_store(self, value: EventStore | None) -> None:
        if value is not None:  # the base class assigns its (absent) shared store
            raise ValueError("give new_store, not a shared event store")


def streamable_http_app(
    server: Server[Any],
    *,
    path: str,
    json_response: bool,
    host: str,
    max_request_body_size: int,
    new_store: Callable[[], EventStore],
) -> tuple[Starlette, StreamableHTTPSessionManager]:
    """`Server.streamable_http_app` with a resumability event store per session; returns the app and manager.

    Run the manager (`async with manager.run()`) around serving the app.
    """
    # As `Server.streamable_http_app` does: DNS-rebinding protection for a loopback host.
    security = None
    if host in ("127.0.0.1", "localhost", "::1"):
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    manager = _StorePerSession(
        server,
        new_store,
        json_response=json_response,
        security_settings=security,
        max_request_body_size=max_request_body_size,
    )
    app = Starlette(routes=[Route(path, endpoint=StreamableHTTPASGIApp(manager))])
    return app, manager
