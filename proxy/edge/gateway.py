"""The agent-facing MCP server: every MCP method, answered by the right upstream.

This module is MCP plumbing only. It names and routes; whether a tool call may run is the
pipeline's business (`proxy.pipeline`), reached through `Gateway.calls`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp.server import Server
from mcp.server.caching import CACHEABLE_METHODS, CacheHint
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    LOG_LEVEL_META_KEY,
    PROTOCOL_VERSION_META_KEY,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from proxy.calls import ProgressFn, ToolCall, UnknownTool, UpstreamErrorReply
from proxy.edge.sdk_internals import connection_of, peer_cancelled
from proxy.edge.sessions import Downstream, is_list_changed
from proxy.edge.upstreams import Link, Upstream, UpstreamError
from proxy.identity import ANONYMOUS, Identity
from proxy.naming import Names
from proxy.presence import SCOPE_KEY, Presence, ResponseStream

log = logging.getLogger("signoff.gateway")

RESOURCE_NOT_FOUND = -32002
Ctx = ServerRequestContext[Any, Any]
CallHandler = Callable[[ToolCall], Awaitable[dict[str, Any]]]


class _GatewayServer(Server[Any]):
    """A low-level Server whose capabilities mirror what the upstreams offer."""

    gateway: Gateway

    def get_capabilities(
        self,
        notification_options: Any = None,
        experimental_capabilities: Any = None,
        extensions: Any = None,
        *,
        protocol_version: str | None = None,
    ) -> types.ServerCapabilities:
        base = super().get_capabilities(
            NotificationOptions(tools_changed=True, prompts_changed=True, resources_changed=True),
            experimental_capabilities,
            extensions,
            protocol_version=protocol_version,
        )
        offered = self.gateway.upstream_capabilities()
        return base.model_copy(
            update={
                "prompts": base.prompts if offered["prompts"] else None,
                "resources": base.resources.model_copy(update={"subscribe": offered["subscribe"]})
                if base.resources is not None and offered["resources"]
                else None,
                "logging": base.logging if offered["logging"] else None,
                "completions": base.completions if offered["completions"] else None,
            }
        )


@dataclass
class Watched:
    """A call's request as presence and cancellation see it, whichever front received it."""

    request_id: Any
    response: ResponseStream | None  # the HTTP response carrying the answer (None: not HTTP)
    cancelled_by_client: Callable[[], bool]  # read when the call is cancelled: asked, or session gone


class Gateway:
    """Routes every MCP request from a client session to the upstream that owns it."""

    def __init__(
        self,
        upstreams: dict[str, Upstream],
        names: Names,
        calls: CallHandler,
        is_hidden: Callable[[str, str], bool] = lambda upstream, tool: False,
        would_hold: Callable[[Identity, str, str, dict[str, Any]], bool] = lambda *_: False,
        stdio_identity: Identity = ANONYMOUS,
        name: str = "signoff",
        presence: Presence | None = None,
    ) -> None:
        self.upstreams = upstreams
        self.names = names
        self.calls = calls
        self.is_hidden = is_hidden
        self.would_hold = would_hold
        self.stdio_identity = stdio_identity
        self.presence = presence  # HTTP front only: notices clients that leave without a word
        self.sessions: set[Downstream] = set()
        self.by_session_id: dict[str, Downstream] = {}  # HTTP sessions, for the lean path
        self.on_session_close: list[Callable[[Downstream], Awaitable[None]]] = []
        # Called with a ToolCall's id when its HTTP client left and did not come back within the grace.
        self.on_call_abandoned: list[Callable[[str], Awaitable[None]]] = []
        # ToolCall id -> whether its client asked to cancel it (else its session ended)
        self._calls_in_flight: dict[str, Callable[[], bool]] = {}
        self._resource_owner: dict[str, str] = {}
        self._template_owner: list[tuple[str, str]] = []
        self._shared_subscribers: dict[tuple[str, str], set[Downstream]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.server = self._build_server(name)
        for up in upstreams.values():
            up.notify = self._on_shared_notification
            up.shared.hooks.notify = self._on_shared_notification

    # -- server ------------------------------------------------------------------------------

    def _build_server(self, name: str) -> Server[Any]:
        # Results depend on the caller's identity and the live policy: never cacheable by clients.
        no_cache = {m: CacheHint(ttl_ms=0, scope="private") for m in CACHEABLE_METHODS}
        server = _GatewayServer(name, version="0.1.0", instructions=None, cache_hints=no_cache)
        server.gateway = self
        handlers: dict[str, Callable[[Ctx, Any], Awaitable[Any]]] = {
            "tools/list": self.list_tools,
            "tools/call": self.call_tool,
            "resources/list": self.list_resources,
            "resources/templates/list": self.list_resource_templates,
            "resources/read": self.read_resource,
            "resources/subscribe": self.subscribe,
            "resources/unsubscribe": self.unsubscribe,
            "prompts/list": self.list_prompts,
            "prompts/get": self.get_prompt,
            "completion/complete": self.complete,
            "logging/setLevel": self.set_logging_level,
        }
        # Handlers read the raw params (ctx.params): the SDK has already checked them against the
        # protocol surface, and forwarding the raw dict keeps every field the client sent.
        for method, handler in handlers.items():
            server.add_request_handler(method, types.RequestParams, _era_shaped(handler))
        server.add_notification_handler(
            "notifications/roots/list_changed", types.NotificationParams, self.roots_list_changed
        )
        server.add_notification_handler(
            "notifications/initialized", types.NotificationParams, self.initialized
        )
        return server

    def upstream_capabilities(self) -> dict[str, bool]:
        """Which optional features at least one upstream offers (all, while none has connected)."""
        caps = [up.shared.server_capabilities for up in self.upstreams.values()]
        known = [c for c in caps if c is not None]
        if not known:
            return dict.fromkeys(("prompts", "resources", "subscribe", "logging", "completions"), True)
        return {
            "prompts": any(c.prompts for c in known),
            "resources": any(c.resources for c in known),
            "subscribe": any(c.resources and c.resources.subscribe for c in known),
            "logging": any(c.logging for c in known),
            "completions": any(c.completions for c in known),
        }

    # -- sessions ----------------------------------------------------------------------------

    def session(self, ctx: Ctx) -> Downstream:
        """The client session of a request, with its identity."""
        down = connection_of(ctx).state.get("signoff")
        if down is not None:
            return down
        down = Downstream.for_context(ctx, self.identity_of(ctx))
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            # Stateless era: a "session" lives for one request and cannot take server requests.
            down.capabilities = frozenset()
        else:
            self.sessions.add(down)
            self.by_session_id[down.id] = down
            down.on_close.append(self._session_closed)
        return down

    def identity_of(self, ctx: Ctx) -> Identity:
        request = ctx.request
        if request is None:
            return self.stdio_identity
        return request.scope.get("signoff.identity", ANONYMOUS)

    async def _session_closed(self, down: Downstream) -> None:
        self.sessions.discard(down)
        self.by_session_id.pop(down.id, None)
        for hook in self.on_session_close:
            await hook(down)
        for key in list(down.subscriptions):
            await self._drop_subscriber(key, down)

    # -- tools -------------------------------------------------------------------------------

    async def list_tools(self, ctx: Ctx, _: Any) -> dict[str, Any]:
        return await self.tools_list(self.session(ctx), ctx.params or {})

    async def tools_list(self, down: Downstream, params: dict[str, Any]) -> dict[str, Any]:
        """`tools/list` for a client session: every upstream's tools, namespaced, hidden ones left out."""
        cursor = params.get("cursor")
        if not self.names.prefixed:
            up = self._only()
            result = await self._request(down, up, "tools/list", {"cursor": cursor} if cursor else None)
            tools = result.get("tools", [])
            if not cursor and not result.get("nextCursor"):
                await up.adopt_catalog({t["name"]: t for t in tools})
            result["tools"] = [t for t in tools if not self.is_hidden(up.name, t["name"])]
            return result
        tools: list[dict[str, Any]] = []
        for up in self.upstreams.values():
            try:
                own = await up.refresh_tools(down.link_for(up))
            except UpstreamError as e:
                log.warning("tools/list: skipping %s", e)
                continue
            for tool in own.values():
                if not self.is_hidden(up.name, tool["name"]):
                    tools.append({**tool, "name": self.names.public(up.name, tool["name"])})
        return {"tools": tools}

    async def call_tool(self, ctx: Ctx, _: Any) -> dict[str, Any]:
        raw = ctx.params or {}
        meta = raw.get("_meta") or {}
        progress = ctx.session.report_progress if "progressToken" in meta else None
        return await self.tools_call(self.session(ctx), raw, progress=progress, ctx=ctx)

    async def tools_call(
        self,
        down: Downstream,
        raw: dict[str, Any],
        *,
        progress: ProgressFn | None = None,
        ctx: Ctx | None = None,
        watched: Watched | None = None,
    ) -> dict[str, Any]:
        """`tools/call` for a client session: through the pipeline, then to the upstream that owns the tool.

        `ctx` is the SDK's request context when the call came through the SDK (it routes upstream
        requests back to this request's stream and watches whether the client stays). The lean
        HTTP path (`proxy.edge.fastpath`) has none: it takes calls from sessions that cannot be
        sent requests, and passes `watched` for a call that may wait.
        """
        public = raw.get("name", "")
        arguments = raw.get("arguments")
        resolved = self.names.resolve(public)
        up = self.upstreams[resolved[0]] if resolved is not None else None
        call = ToolCall(
            identity=down.identity,
            session_id=down.id,
            client_name=down.client_name,
            upstream=up.name if up is not None else "",
            tool=resolved[1] if resolved is not None else public,
            public_name=public,
            arguments=arguments if isinstance(arguments, dict) else {},
            meta=upstream_meta(raw.get("_meta") or {}),
            progress=progress,
            tool_info=None,
        )
        try:
            if up is None:
                raise UnknownTool(public)
            call.tool_info = await self._tool_info(down, up, call.tool)
        except UnknownTool:
            call.known = False  # still goes through the pipeline: every call is audited

        async def forward(c: ToolCall) -> dict[str, Any]:
            assert up is not None
            params: dict[str, Any] = {"name": c.tool, "arguments": c.arguments}
            if c.meta:
                params["_meta"] = c.meta
            link = down.link_for(up)
            # Through the SDK, upstream requests during the call ride this request's stream.
            tracking = down.tracking(up.name, ctx) if ctx is not None else contextlib.nullcontext()
            with tracking:
                return await up.call_tool(
                    params, link, timeout=up.config.call_timeout, on_progress=c.progress
                )

        call.forward = forward
        if ctx is not None:
            response = ctx.request.scope.get(SCOPE_KEY) if ctx.request is not None else None
            watched = Watched(ctx.request_id, response, lambda: peer_cancelled(ctx))
        try:
            if watched is None:
                return await self.calls(call)
            with self._in_flight(call, down, watched):
                return await self.calls(call)
        except UnknownTool:
            raise _unknown_tool(public) from None
        except UpstreamErrorReply as e:
            raise MCPError(e.code, e.message, e.data) from None

    def answers_at_once(self, down: Downstream, raw: dict[str, Any]) -> bool:
        """Whether a `tools/call` can be answered without the SDK's per-request machinery.

        Not when the client session can take server requests (they ride the request's stream), when
        the client wants progress, or when the policy would hold the call for a human (a held call's
        stream is watched and resumable).
        """
        if down.capabilities or "progressToken" in (raw.get("_meta") or {}):
            return False
        resolved = self.names.resolve(raw.get("name", ""))
        if resolved is None:
            return True  # unknown: answered at once, like a hidden tool
        arguments = raw.get("arguments")
        return not self.would_hold(
            down.identity, resolved[0], resolved[1], arguments if isinstance(arguments, dict) else {}
        )

    @contextlib.contextmanager
    def _in_flight(self, call: ToolCall, down: Downstream, watched: Watched) -> Iterator[None]:
        """Remember the call's request while it runs, and watch whether its HTTP client stays."""
        self._calls_in_flight[call.id] = watched.cancelled_by_client
        try:
            if watched.response is None or self.presence is None:
                yield
                return
            with self.presence.watching(
                down.id,
                watched.request_id,
                down.identity.name,
                watched.response,
                lambda: self._background(self._call_abandoned(call.id)),
            ):
                yield
        finally:
            del self._calls_in_flight[call.id]

    async def _call_abandoned(self, call_id: str) -> None:
        for hook in self.on_call_abandoned:
            try:
                await hook(call_id)
            except Exception:
                log.exception("call-abandoned hook failed")

    def cancelled_by_client(self, call_id: str) -> bool:
        """Whether a call's handler is being cancelled because its client asked (else its session ended)."""
        asked = self._calls_in_flight.get(call_id)
        return asked is None or asked()

    async def _tool_info(self, down: Downstream, up: Upstream, tool: str) -> dict[str, Any] | None:
        """The upstream's description of `tool`; raises UnknownTool when its catalog has no such tool.

        An unknown name never makes the call path ask the upstream: that extra round trip is what
        told a hidden tool (answered at once) from a missing one. The catalog is loaded once, for
        every name alike, and refreshed on `list_changed`, on `tools/list` and in the background.
        """
        if not up.catalog_loaded:
            try:
                await up.refresh_tools(down.link_for(up))
            except (UpstreamError, MCPError):
                return None  # upstream down: the call itself will report that
        info = up.tools.get(tool)
        if info is None:
            # Perhaps added without a list_changed: look again in the background, answer now.
            up.refresh_soon(self._background)
            raise UnknownTool(tool)
        return info

    # -- resources ---------------------------------------------------------------------------

    async def list_resources(self, ctx: Ctx, _: Any) -> dict[str, Any]:
        return await self._list_merged(ctx, "resources/list", "resources", "uri", self._resource_owner)

    async def list_resource_templates(self, ctx: Ctx, _: Any) -> dict[str, Any]:
        owners: dict[str, str] = {}
        result = await self._list_merged(
            ctx, "resources/templates/list", "resourceTemplates", "uriTemplate", owners
        )
        self._template_owner = sorted(
            ((t.split("{", 1)[0], up) for t, up in owners.items()), key=lambda p: len(p[0]), reverse=True
        )
        return result

    async def _list_merged(
        self, ctx: Ctx, method: str, key: str, id_field: str, owners: dict[str, str]
    ) -> dict[str, Any]:
        down = self.session(ctx)
        cursor = (ctx.params or {}).get("cursor")
        if len(self.upstreams) == 1:
            up = self._only()
            result = await self._request(down, up, method, {"cursor": cursor} if cursor else None)
            for item in result.get(key, []):
                owners[item.get(id_field, "")] = up.name
            return result
        items: list[dict[str, Any]] = []
        for up in self._offering("resources"):
            page: str | None = None
            try:
                while True:
                    result = await self._request(down, up, method, {"cursor": page} if page else None)
                    for item in result.get(key, []):
                        owners[item.get(id_field, "")] = up.name
                        items.append(item)
                    page = result.get("nextCursor")
                    if not page:
                        break
            except UpstreamError as e:
                log.warning("%s: skipping %s", method, e)
        return {key: items}

    def _resource_upstream(self, uri: str) -> Upstream:
        if len(self.upstreams) == 1:
            return self._only()
        owner = self._resource_owner.get(uri)
        if owner is None:
            owner = next((up for prefix, up in self._template_owner if uri.startswith(prefix)), None)
        if owner is None:
            raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}", {"uri": uri})
        return self.upstreams[owner]

    async def read_resource(self, ctx: Ctx, _: Any) -> dict[str, Any]:
        raw = dict(ctx.params or {})
        up = self._resource_upstream(raw.get("uri", ""))
        return await self._request(self.session(ctx), up, "resources/read", raw, ctx)

    async def subscribe(self, ctx: Ctx, _: Any) -> dict[str, Any]:
        raw = dict(ctx.params or {})
        uri = raw.get("uri", "")
        up = self._resource_upstream(uri)
        down = self.session(ctx)
        link = down.link_for(up)
        key = (up.name, uri)
        if link is up.shared:
            subscribers = self._shared_subscribers.setdefault(key, set())
            if not subscribers:
                await self._request(down, up, "resources/subscribe", raw, ctx)
            subscribers.add(down)
        else:
            await self._request(down, up, "resources/subscribe", raw, ctx)
        down.subscriptions.add(key)
        return {}

    async def unsubscribe(self, ctx: Ctx, _: Any) -> dict[str, Any]:
        raw = dict(ctx.params or {})
        uri = raw.get("uri", "")
        up = self._resource_upstream(uri)
        down = self.session(ctx)
        key = (up.name, uri)
        down.subscriptions.discard(key)
        if down.link_for(up) is up.shared:
            await self._drop_subscriber(key, down)
        else:
            await self._request(down, up, "resources/unsubscribe", raw, ctx)
        return {}

    async def _drop_subscriber(self, key: tuple[str, str], down: Downstream) -> None:
        subscribers = self._shared_subscribers.get(key)
        if subscribers is None or down not in subscribers:
            return
        subscribers.discard(down)
        if not subscribers:
            del self._shared_subscribers[key]
            try:
                await self.upstreams[key[0]].shared.request(
                    "resources/unsubscribe", {"uri": key[1]}, timeout=10
                )
            except (UpstreamError, MCPError) as e:
                log.debug("unsubscribe %s on %s failed: %s", key[1], key[0], e)

    # -- prompts and completion ---------------------------------------------------------------

    async def list_prompts(self, ctx: Ctx, _: Any) -> dict[str, Any]:
        down = self.session(ctx)
        cursor = (ctx.params or {}).get("cursor")
        if not self.names.prefixed:
            return await self._request(
                down, self._only(), "prompts/list", {"cursor": cursor} if cursor else None
            )
        prompts: list[dict[str, Any]] = []
        for up in self._offering("prompts"):
            try:
                result = await self._request(down, up, "prompts/list", None)
            except UpstreamError as e:
                log.warning("prompts/list: skipping %s", e)
                continue
            prompts += [
                {**p, "name": self.names.public(up.name, p["name"])} for p in result.get("prompts", [])
            ]
        return {"prompts": prompts}

    async def get_prompt(self, ctx: Ctx, _: Any) -> dict[str, Any]:
        raw = dict(ctx.params or {})
        resolved = self.names.resolve(raw.get("name", ""))
        if resolved is None:
            raise MCPError(INVALID_PARAMS, f"Unknown prompt: {raw.get('name')}")
        raw["name"] = resolved[1]
        return await self._request(self.session(ctx), self.upstreams[resolved[0]], "prompts/get", raw, ctx)

    async def complete(self, ctx: Ctx, _: Any) -> dict[str, Any]:
        raw = dict(ctx.params or {})
        ref = dict(raw.get("ref") or {})
        if ref.get("type") == "ref/prompt":
            resolved = self.names.resolve(ref.get("name", ""))
            if resolved is None:
                raise MCPError(INVALID_PARAMS, f"Unknown prompt: {ref.get('name')}")
            up, ref["name"] = self.upstreams[resolved[0]], resolved[1]
        else:
            up = self._resource_upstream(ref.get("uri", ""))
        raw["ref"] = ref
        return await self._request(self.session(ctx), up, "completion/complete", raw, ctx)

    async def set_logging_level(self, ctx: Ctx, _: Any) -> dict[str, Any]:
        down = self.session(ctx)
        params = dict(ctx.params or {})
        for up in self._offering("logging"):
            try:
                await self._request(down, up, "logging/setLevel", params)
            except UpstreamError as e:
                log.warning("logging/setLevel: skipping %s", e)
        return {}

    async def initialized(self, ctx: Ctx, _: Any) -> None:
        """A session is ready: know it now, so that its first call can take the lean path too."""
        self.session(ctx)

    async def roots_list_changed(self, ctx: Ctx, _: Any) -> None:
        down = self.session(ctx)
        for link in down.links.values():
            await link.notify("notifications/roots/list_changed", None)

    # -- upstream traffic ----------------------------------------------------------------------

    async def _on_shared_notification(self, link: Link, method: str, params: dict[str, Any] | None) -> None:
        """A notification on a shared link: route it to the sessions it concerns."""
        if method == "notifications/tools/list_changed":
            self._background(self._refresh_quietly(link.name))
        if is_list_changed(method):
            targets = list(self.sessions)
        elif method == "notifications/resources/updated":
            targets = list(self._shared_subscribers.get((link.name, (params or {}).get("uri", "")), ()))
        elif method == "notifications/message":
            # Only attributable when exactly one client is waiting on this shared link.
            waiting = [
                d
                for d in self.sessions
                if d.link_for(self.upstreams[link.name]) is link and d.only_request_on(link.name) is not None
            ]
            targets = waiting if len(waiting) == 1 else []
        else:
            targets = []
        for down in targets:
            try:
                await down.deliver(link.name, method, params)
            except Exception:
                log.debug("could not deliver %s to session %s", method, down.id, exc_info=True)

    async def _refresh_quietly(self, upstream: str) -> None:
        try:
            await self.upstreams[upstream].refresh_tools()
        except (UpstreamError, MCPError) as e:
            log.debug("tool catalog refresh of %s failed: %s", upstream, e)

    async def notify_tools_changed(self) -> None:
        """Tell every client the tool list changed (a policy reload may hide or reveal tools)."""
        for down in list(self.sessions):
            try:
                await down.connection.outbound.notify("notifications/tools/list_changed", None)
            except Exception:
                log.debug("could not notify session %s", down.id, exc_info=True)

    # -- helpers -----------------------------------------------------------------------------

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _only(self) -> Upstream:
        return next(iter(self.upstreams.values()))

    def _offering(self, feature: str) -> list[Upstream]:
        out = []
        for up in self.upstreams.values():
            caps = up.shared.server_capabilities
            if caps is None or getattr(caps, feature, None) is not None:
                out.append(up)
        return out

    async def _request(
        self,
        down: Downstream,
        up: Upstream,
        method: str,
        params: dict[str, Any] | None,
        ctx: Ctx | None = None,
    ) -> dict[str, Any]:
        link = down.link_for(up)
        try:
            if ctx is None:
                return await link.request(method, params, timeout=up.config.call_timeout)
            progress = None
            meta = (params or {}).get("_meta")
            if meta:
                # The upstream gets a progress token of our own; its progress is relayed under the client's.
                progress = ctx.session.report_progress if "progressToken" in meta else None
                params = dict(params or {})
                params["_meta"] = upstream_meta(meta)
                if not params["_meta"]:
                    del params["_meta"]
            with down.tracking(up.name, ctx):
                return await link.request(
                    method, params, timeout=up.config.call_timeout, on_progress=progress
                )
        except UpstreamError as e:
            raise MCPError(INTERNAL_ERROR, str(e), {"reason": e.reason, "upstream": up.name}) from None


def _era_shaped(handler: Callable[[Ctx, Any], Awaitable[Any]]) -> Callable[[Ctx, Any], Awaitable[Any]]:
    """Give a raw result the `resultType` the 2026-07-28 wire requires (older upstreams never send it)."""

    async def shaped(ctx: Ctx, params: Any) -> Any:
        result = await handler(ctx, params)
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS and isinstance(result, dict):
            result.setdefault("resultType", "complete")
        return result

    return shaped


# Per-connection envelope keys of the 2026-07-28 protocol: they describe the client's connection to
# us, not ours to the upstream (which may speak an older protocol and would reject them).
_ENVELOPE_KEYS = frozenset(
    {
        "progressToken",
        PROTOCOL_VERSION_META_KEY,
        CLIENT_INFO_META_KEY,
        CLIENT_CAPABILITIES_META_KEY,
        LOG_LEVEL_META_KEY,
    }
)


def upstream_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The client's `_meta` as forwarded upstream: everything but connection-envelope keys."""
    return {k: v for k, v in meta.items() if k not in _ENVELOPE_KEYS}


def _unknown_tool(name: str) -> MCPError:
    return MCPError(INVALID_PARAMS, f"Unknown tool: {name}")
