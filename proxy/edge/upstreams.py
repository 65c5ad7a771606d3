"""Upstream MCP servers: supervised client connections, restarted with backoff when they die.

A `Link` is one client connection (a stdio child process or a Streamable HTTP session). An
`Upstream` owns a shared link used by every client session that cannot receive server-initiated
requests, and lends a private link to each session that can (sampling, elicitation, roots), so
such requests reach the client that caused them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

from proxy import tracing
from proxy.calls import UpstreamError, UpstreamErrorReply
from proxy.config import UpstreamConfig
from proxy.edge.rawpipe import RawStdio

log = logging.getLogger("signoff.upstream")

GATEWAY_INFO = types.Implementation(name="signoff", version="0.1.0")
ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]


@dataclass
class LinkHooks:
    """How a link hands upstream-initiated traffic to the gateway."""

    notify: Callable[[Link, str, dict[str, Any] | None], Awaitable[None]]
    # Upstream -> client requests (sampling, elicitation, roots); absent on the shared link.
    request: Callable[[Link, str, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
    capabilities: frozenset[str] = frozenset()
    client_info: types.Implementation | None = None


class Link:
    """One supervised client connection to an upstream."""

    def __init__(
        self, name: str, config: UpstreamConfig, hooks: LinkHooks, base_dir: Path = Path(".")
    ) -> None:
        self.name = name
        self.config = config
        self.hooks = hooks
        self.base_dir = base_dir
        self.state = "connecting"
        self.last_error: str | None = None
        self.retry_at: float | None = None
        self.restarts = 0
        self.server_capabilities: types.ServerCapabilities | None = None
        self.ready = asyncio.Event()
        self.failed = asyncio.Event()  # an attempt to connect has failed (set once, never cleared)
        self.reconnect = True  # False for a one-off probe (`signoff check`): the first failure is the answer
        self.on_ready: Callable[[], None] | None = None  # called each time the link (re)connects
        self._session: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; reconnects with backoff until `close()`."""
        self._task = asyncio.create_task(self._supervise(), name=f"upstream:{self.name}")

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the link to be up."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), timeout)
        return self.ready.is_set()

    async def wait_first_attempt(self) -> bool:
        """Wait until the link is up or an attempt has failed (at most `connect_timeout`); True if up."""
        ready = asyncio.ensure_future(self.ready.wait())
        failed = asyncio.ensure_future(self.failed.wait())
        try:
            await asyncio.wait(
                {ready, failed}, timeout=self.config.connect_timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            ready.cancel()
            failed.cancel()
        return self.ready.is_set()

    async def close(self) -> None:
        """Disconnect for good (stops the child process of a stdio upstream)."""
        self._closing.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.state = "closed"

    async def _supervise(self) -> None:
        delay = 0.25
        while not self._closing.is_set():
            self.state = "connecting"
            started = time.monotonic()
            try:
                await self._connect_and_serve()
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                self.last_error = describe_error(e, self.config)
                self.failed.set()
            finally:
                self._session = None
                self.ready.clear()
            if self._closing.is_set() or not self.reconnect:
                self.state = "down"
                return
            if time.monotonic() - started > 30:
                delay = 0.25  # it was healthy for a while: restart promptly
            self.state = "down"
            self.retry_at = time.monotonic() + delay
            log.warning("upstream %s is down (%s); reconnecting in %.1fs", self.name, self.last_error, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
            delay = min(delay * 2, 30.0)
            self.restarts += 1

    async def _connect_and_serve(self) -> None:
        if self.config.command is not None and self.hooks.request is None:
            await self._serve_raw()
            return
        client = self._client()
        # The deadline covers connecting only; it is lifted once the handshake is done.
        with anyio.fail_after(self.config.connect_timeout) as scope:
            async with client:
                scope.deadline = math.inf
                self._session = _SdkSession(client.session)
                self._up(client.server_capabilities)
                while not self._closing.is_set() and not _closed(client.session):  # noqa: ASYNC110
                    await anyio.sleep(0.2)
                if not self._closing.is_set():
                    self.last_error = "the connection closed (process exited or server went away)"

    async def _serve_raw(self) -> None:
        """A shared stdio link: raw JSON-RPC on the child's pipes (`proxy.edge.rawpipe`), no SDK client."""
        cfg = self.config
        assert cfg.command is not None
        info = (self.hooks.client_info or GATEWAY_INFO).model_dump(by_alias=True, exclude_none=True)
        pipe = RawStdio(lambda method, params: self.hooks.notify(self, method, params))
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                # Relative paths in `args` follow the config file, like every other path in it.
                cwd = str((self.base_dir / (cfg.cwd or ".")).resolve())
                await pipe.open(cfg.command, cfg.args, cfg.env, cwd, info)
            self._session = pipe
            self._up(types.ServerCapabilities.model_validate(pipe.capabilities))
            closing = asyncio.ensure_future(self._closing.wait())
            ended = asyncio.ensure_future(pipe.closed.wait())
            try:
                await asyncio.wait({closing, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closing.cancel()
                ended.cancel()
            if not self._closing.is_set():
                self.last_error = "the connection closed (process exited or server went away)"
        finally:
            await pipe.close()

    def _up(self, capabilities: types.ServerCapabilities | None) -> None:
        self.server_capabilities = capabilities
        self.state, self.last_error, self.retry_at = "up", None, None
        self.ready.set()
        log.info("upstream %s connected", self.name)
        if self.on_ready is not None:
            self.on_ready()

    def _client(self) -> Client:
        cfg = self.config
        target: Any
        if cfg.command is not None:
            # Relative paths in `args` follow the config file, like every other path in it.
            cwd = str((self.base_dir / (cfg.cwd or ".")).resolve())
            target = StdioServerParameters(command=cfg.command, args=cfg.args, env=cfg.env or None, cwd=cwd)
        else:
            assert cfg.url is not None
            http = httpx2.AsyncClient(
                headers=cfg.headers or None,
                timeout=httpx2.Timeout(30.0, read=max(cfg.call_timeout, 300.0)),
                event_hooks=tracing.http_event_hooks(),  # the `traceparent` header, when tracing is on
            )
            target = _OwnedHttpTransport(cfg.url, http)
        caps = self.hooks.capabilities
        return Client(
            target,
            mode="legacy",
            cache=None,
            client_info=self.hooks.client_info or GATEWAY_INFO,
            message_handler=self._on_message,
            sampling_callback=self._on_sampling if "sampling" in caps else None,
            elicitation_callback=self._on_elicitation if "elicitation" in caps else None,
            list_roots_callback=self._on_list_roots if "roots" in caps else None,
        )

    # -- traffic -----------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Send a request as raw JSON and return the raw result; upstream JSON-RPC errors pass through."""
        session = self._session
        if session is None and self.restarts == 0 and self.state == "connecting":
            # A link's first connect (a client session's private link is opened on first use).
            await self.wait_ready(self.config.connect_timeout)
            session = self._session
        if session is None:
            raise UpstreamError(self.name, self.unavailable_reason())
        try:
            return await session.request(method, params, timeout=timeout, on_progress=on_progress)
        except MCPError as e:
            if e.code == CONNECTION_CLOSED:
                raise UpstreamError(
                    self.name, "closed the connection before answering (the call may or may not have run)"
                ) from None
            if e.code == REQUEST_TIMEOUT and timeout is not None:
                raise UpstreamError(
                    self.name, f"did not answer within {timeout:g}s", "upstream_timeout"
                ) from None
            raise

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        """Send a notification upstream (dropped quietly when the link is down)."""
        session = self._session
        if session is not None:
            await session.notify(method, params)

    def unavailable_reason(self) -> str:
        if self.state == "closed":
            return "is shut down"
        why = f": {self.last_error}" if self.last_error else ""
        if self.retry_at is not None:
            left = max(0.0, self.retry_at - time.monotonic())
            return f"is unavailable{why} (reconnecting in {left:.1f}s)"
        return f"is still connecting{why}"

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            log.debug("upstream %s transport error: %s", self.name, message)
            return
        dumped = message.model_dump(by_alias=True, mode="json", exclude_none=True)
        await self.hooks.notify(self, dumped["method"], dumped.get("params"))

    async def _forward_request(self, method: str, params: Any) -> dict[str, Any] | types.ErrorData:
        assert self.hooks.request is not None
        raw = params.model_dump(by_alias=True, mode="json", exclude_none=True) if params is not None else {}
        try:
            return await self.hooks.request(self, method, raw)
        except MCPError as e:
            return e.error

    async def _on_sampling(self, ctx: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        result = await self._forward_request("sampling/createMessage", params)
        if isinstance(result, types.ErrorData):
            return result
        if isinstance(result.get("content"), list):  # only tool-using sampling answers with a list
            return types.CreateMessageResultWithTools.model_validate(result)
        return types.CreateMessageResult.model_validate(result)

    async def _on_elicitation(self, ctx: ClientRequestContext, params: types.ElicitRequestParams) -> Any:
        result = await self._forward_request("elicitation/create", params)
        return result if isinstance(result, types.ErrorData) else types.ElicitResult.model_validate(result)

    async def _on_list_roots(self, ctx: ClientRequestContext) -> Any:
        result = await self._forward_request("roots/list", None)
        return result if isinstance(result, types.ErrorData) else types.ListRootsResult.model_validate(result)


class _SdkSession:
    """The SDK client's session, as a link uses it: raw requests and notifications, results untouched."""

    def __init__(self, session: Any) -> None:
        self.session = session

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"method": method}
        if params is not None:
            data["params"] = params
        opts: dict[str, Any] = {}
        # The SDK's typed API re-validates results (and rejects structured content that breaks the
        # tool's schema); a transparent gateway forwards what the upstream said. So we use the
        # dispatcher directly, after the session's stamp (protocol-version header on HTTP).
        self.session._stamp(data, opts)
        if timeout is not None:
            opts["timeout"] = timeout
        if on_progress is not None:
            opts["on_progress"] = on_progress
        result: dict[str, Any] = await self.session._dispatcher.send_raw_request(
            method, data.get("params"), opts
        )
        return result

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        data: dict[str, Any] = {"method": method, "params": params}
        opts: dict[str, Any] = {}
        self.session._stamp(data, opts)
        await self.session._dispatcher.notify(method, params, opts)


def _closed(session: Any) -> bool:
    # The SDK marks its dispatcher closed on EOF (a stdio child exited, an HTTP session ended)
    # but exposes no event for it; polling the flag is how we notice and restart.
    return bool(getattr(session._dispatcher, "_closed", False))


class _OwnedHttpTransport:
    """A Streamable HTTP transport that also closes its httpx client."""

    def __init__(self, url: str, http: httpx2.AsyncClient) -> None:
        self._cm = streamable_http_client(url, http_client=http)
        self._http = http

    async def __aenter__(self) -> Any:
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        try:
            return await self._cm.__aexit__(*exc)
        finally:
            await self._http.aclose()


def describe_error(e: BaseException, config: UpstreamConfig) -> str:
    """A one-line, human explanation of why connecting to an upstream failed."""
    leaves = list(_leaves(e))
    first = leaves[0] if leaves else e
    if isinstance(first, TimeoutError):
        return f"no answer to the MCP handshake within {config.connect_timeout:g}s"
    if isinstance(first, FileNotFoundError) and config.command is not None:
        found = shutil.which(config.command)
        return f"cannot start {config.command!r}: " + ("not executable" if found else "command not found")
    if isinstance(first, httpx2.ConnectError):
        return f"cannot connect to {config.url}: {first}"
    if isinstance(first, MCPError):
        return f"handshake failed: {first.message}"
    return f"{type(first).__name__}: {first}" if str(first) else type(first).__name__


def _leaves(e: BaseException) -> Any:
    if isinstance(e, BaseExceptionGroup):
        for sub in e.exceptions:
            yield from _leaves(sub)
    else:
        yield e


@dataclass
class Upstream:
    """One configured upstream server: its shared link, private links, and tool catalog."""

    name: str
    config: UpstreamConfig
    base_dir: Path
    notify: Callable[[Link, str, dict[str, Any] | None], Awaitable[None]]
    shared: Link = field(init=False)
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)  # own name -> raw Tool
    catalog_loaded: bool = False
    # Sees every newly listed catalog before it is used (tool pinning: proxy.pins).
    on_catalog: Callable[[str, dict[str, dict[str, Any]]], Awaitable[None]] | None = None
    _catalog_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _next_refresh: float = 0.0
    _refreshing: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.shared = Link(self.name, self.config, LinkHooks(notify=self.notify), self.base_dir)
        self.shared.on_ready = self._reconnected

    def _reconnected(self) -> None:
        """The shared link came back (the upstream restarted): its tools may have changed meanwhile."""
        if self.shared.restarts == 0 or not self.catalog_loaded:
            return
        # The next call reloads the catalog before it runs; meanwhile a background reload notices a
        # change (and holds the tool back) even if no call comes.
        self.catalog_loaded = False
        task = asyncio.get_running_loop().create_task(self._refresh_quietly())
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self.refresh_tools()

    def wants_private_link(self, client_caps: frozenset[str]) -> bool:
        """Whether a client session with these capabilities gets its own connection."""
        mode = self.config.sessions
        if mode == "auto":
            return bool(client_caps)
        return mode == "per_client"

    def private_link(self, hooks: LinkHooks) -> Link:
        """A new, not yet started link for one client session."""
        return Link(self.name, self.config, hooks, self.base_dir)

    async def call_tool(
        self,
        params: dict[str, Any],
        link: Link | None = None,
        *,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """`tools/call` on `link` (the shared one by default), its result untouched.

        The upstream's JSON-RPC error comes back as `UpstreamErrorReply`, so that the core never
        handles the SDK's exception types.
        """
        try:
            return await (link or self.shared).request(
                "tools/call", params, timeout=timeout, on_progress=on_progress
            )
        except MCPError as e:
            raise UpstreamErrorReply(e.error.code, e.error.message, e.error.data) from None

    async def refresh_tools(self, link: Link | None = None) -> dict[str, dict[str, Any]]:
        """Fetch every page of `tools/list` and remember the tools by their own names."""
        link = link or self.shared
        async with self._catalog_lock:
            tools: dict[str, dict[str, Any]] = {}
            cursor: str | None = None
            while True:
                result = await link.request("tools/list", {"cursor": cursor} if cursor else None, timeout=30)
                for tool in result.get("tools", []):
                    tools[tool["name"]] = tool
                cursor = result.get("nextCursor")
                if not cursor:
                    break
            await self.adopt_catalog(tools)
            return tools

    async def adopt_catalog(self, tools: dict[str, dict[str, Any]]) -> None:
        """Use `tools` as the catalog, once the catalog hook (tool pinning) has seen it."""
        if self.on_catalog is not None:
            await self.on_catalog(self.name, tools)
        self.tools = tools
        self.catalog_loaded = True

    def refresh_soon(self, run: Callable[[Any], None], every: float = 30.0) -> None:
        """Refresh the catalog in the background, at most once per `every` seconds."""
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + every

        async def refresh() -> None:
            with contextlib.suppress(Exception):
                await self.refresh_tools()

        run(refresh())
