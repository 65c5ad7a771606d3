"""Client sessions: who is connected, what they are waiting for, and how upstream traffic reaches them."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.message import ServerMessageMetadata
from pydantic import BaseModel, ConfigDict

from proxy.edge.sdk_internals import connection_of
from proxy.edge.upstreams import Link, LinkHooks, Upstream
from proxy.identity import Identity

log = logging.getLogger("signoff.sessions")

# Server -> client requests we relay, and their typed request models.
_RELAYED_REQUESTS: dict[str, type[BaseModel]] = {
    "sampling/createMessage": types.CreateMessageRequest,
    "elicitation/create": types.ElicitRequest,
    "roots/list": types.ListRootsRequest,
}
_LIST_CHANGED = {
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
}


class _AnyResult(BaseModel):
    # Keeps every field of the client's answer, so relaying does not drop what we don't model.
    model_config = ConfigDict(extra="allow")


@dataclass(eq=False)
class Downstream:
    """One connected MCP client session."""

    connection: Any
    identity: Identity
    id: str
    client_name: str | None = None
    capabilities: frozenset[str] = frozenset()
    links: dict[str, Link] = field(default_factory=dict)
    inflight: dict[Any, tuple[str, ServerRequestContext[Any, Any]]] = field(default_factory=dict)
    subscriptions: set[tuple[str, str]] = field(default_factory=set)
    closed: bool = False
    modern: bool = False  # a 2026-07-28 request: a "session" that lives for one request
    last_used: dict[str, float] = field(default_factory=dict)
    on_close: list[Callable[[Downstream], Awaitable[None]]] = field(default_factory=list)

    @classmethod
    def for_context(cls, ctx: ServerRequestContext[Any, Any], identity: Identity) -> Downstream:
        """The session object for this request's connection, created on first use."""
        conn = connection_of(ctx)
        down = conn.state.get("signoff")
        if down is None:
            params = conn.client_params
            caps = conn.client_capabilities
            names = frozenset(
                n for n in ("sampling", "elicitation", "roots") if caps is not None and getattr(caps, n, None)
            )
            down = cls(
                connection=conn,
                identity=identity,
                # Stateless HTTP requests (json replies, the 2026-07-28 era) have no MCP session id.
                id=conn.session_id
                or f"{'http' if ctx.request is not None else 'stdio'}-{uuid.uuid4().hex[:12]}",
                client_name=params.client_info.name if params is not None else None,
                capabilities=names,
            )
            conn.state["signoff"] = down
            conn.exit_stack.push_async_callback(down.close)
        return down

    def link_for(self, upstream: Upstream) -> Link:
        """The connection this session uses for `upstream`: its own when routing needs it, else shared."""
        link = self.links.get(upstream.name)
        if link is not None:
            self.last_used[upstream.name] = time.monotonic()
            return link
        if not upstream.wants_private_link(self.capabilities):
            return upstream.shared
        hooks = LinkHooks(
            notify=self._upstream_notification,
            request=self._upstream_request,
            capabilities=self.capabilities,
            client_info=self._client_info(),
        )
        link = upstream.private_link(hooks)
        self.links[upstream.name] = link
        self.last_used[upstream.name] = time.monotonic()
        link.start()
        return link

    async def reap_idle(self, max_idle: float) -> None:
        """Close private links nobody used for `max_idle` seconds (reopened on next use).

        Clients often leave without ending their session; without this a stdio upstream process
        per forgotten session would live until the session's idle timeout.
        """
        now = time.monotonic()
        busy = {name for name, _ in self.inflight.values()} | {name for name, _ in self.subscriptions}
        for name in list(self.links):
            if name not in busy and now - self.last_used.get(name, now) > max_idle:
                link = self.links.pop(name)
                await link.close()

    def _client_info(self) -> types.Implementation | None:
        params = self.connection.client_params
        return params.client_info if params is not None else None

    @contextlib.contextmanager
    def tracking(self, upstream: str, ctx: ServerRequestContext[Any, Any]) -> Any:
        """Remember that `ctx` is waiting on `upstream`, so upstream requests can ride its stream."""
        self.inflight[ctx.request_id] = (upstream, ctx)
        try:
            yield
        finally:
            self.inflight.pop(ctx.request_id, None)

    def only_request_on(self, upstream: str) -> ServerRequestContext[Any, Any] | None:
        """The single in-flight request on `upstream`, if exactly one (else attribution is ambiguous)."""
        found = [ctx for name, ctx in self.inflight.values() if name == upstream]
        return found[0] if len(found) == 1 else None

    async def _upstream_request(self, link: Link, method: str, params: dict[str, Any]) -> dict[str, Any]:
        model = _RELAYED_REQUESTS.get(method)
        if model is None:
            raise ValueError(f"unsupported server request {method}")
        request = model.model_validate({"method": method, "params": params or None})
        ctx = self.only_request_on(link.name)
        if ctx is not None:
            meta = ServerMessageMetadata(related_request_id=ctx.request_id)
            result = await ctx.session.send_request(request, _AnyResult, metadata=meta)
            return result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return await self.connection.outbound.send_raw_request(method, params)

    async def _upstream_notification(self, link: Link, method: str, params: dict[str, Any] | None) -> None:
        await self.deliver(link.name, method, params)

    async def deliver(self, upstream: str, method: str, params: dict[str, Any] | None) -> None:
        """Send an upstream notification to this client: on the causing request's stream when known."""
        if self.closed:
            return
        if method == "notifications/message":
            ctx = self.only_request_on(upstream)
            if ctx is not None:
                p = params or {}
                await ctx.session.send_log_message(
                    p.get("level", "info"), p.get("data"), p.get("logger"), related_request_id=ctx.request_id
                )
                return
        await self.connection.outbound.notify(method, params)

    async def close(self) -> None:
        """The client went away: drop its private links and run the close hooks (withdraw its approvals)."""
        self.closed = True
        for hook in self.on_close:
            try:
                await hook(self)
            except Exception:
                log.exception("session close hook failed")
        for link in self.links.values():
            await link.close()
        self.links.clear()


def is_list_changed(method: str) -> bool:
    return method in _LIST_CHANGED
