"""Wiring: build every part from the config and run them in one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from aiohttp import web
from mcp.shared.message import SessionMessage

from proxy.approvals import AGENT_GONE, GATEWAY_STOPPED, ApprovalChannel, Broker, ClickResult
from proxy.approvers import ApproverDirectory
from proxy.audit import AuditLog
from proxy.auth import BearerAuth, IdentityTable
from proxy.bodylimit import ENVELOPE_BYTES, JsonBodyLimit
from proxy.config import Config, ConfigError, SlackConfig
from proxy.control import ControlServer
from proxy.gateway import Gateway
from proxy.metrics import Metrics
from proxy.naming import Names
from proxy.notify import PgListener
from proxy.pipeline import Pipeline
from proxy.policies import PolicySet
from proxy.presence import Presence, WatchResponses
from proxy.ratelimit import MemoryRateLimiter
from proxy.replay import SessionEvents
from proxy.sdk_internals import streamable_http_app
from proxy.sessions import Downstream
from proxy.shared_limits import DatabaseRateLimiter
from proxy.store import Approval, Store
from proxy.upstreams import Upstream
from proxy.webui import ApprovalsApi, WebChannel

log = logging.getLogger("signoff")


class StartupError(Exception):
    """The gateway cannot start (a port is taken, a channel cannot connect, …)."""


@dataclass
class ChannelHost:
    """What an approval-channel plugin (such as the Slack bot) gets from the gateway."""

    decide: Callable[[str, bool, str, str | None], Awaitable[ClickResult]]
    directory: ApproverDirectory
    control_app: web.Application
    store: Store
    metrics: Metrics
    audit_event: Callable[[str, Approval, str, str | None], None]


def load_channel_plugin(name: str) -> Callable[[Any, ChannelHost], Any]:
    """Find an approval channel by entry point (group `signoff.channels`); `proxy` never imports `bot`."""
    for ep in entry_points(group="signoff.channels"):
        if ep.name == name:
            return ep.load()
    raise StartupError(
        f"no approval channel plugin named {name!r} is installed (entry point signoff.channels)"
    )


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        # signoff handles SIGINT/SIGTERM itself so that it can flush the audit log before exiting;
        # uvicorn's handler would re-raise the signal and kill the process first.
        yield


class App:
    """One gateway process: upstreams, the MCP fronts, the control port and everything between."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.instance = uuid.uuid4().hex
        self.replica = config.replica or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = Metrics()
        self.identities = IdentityTable.from_config(config.identities, config.stdio_identity)
        self.upstreams = {
            name: Upstream(name, cfg, config.base_dir, notify=_ignore)
            for name, cfg in config.upstreams.items()
        }
        self.names = Names(list(self.upstreams), config.tool_separator, config.prefixed)
        self.policies = PolicySet(config, self.names)
        self._check_approver_groups()
        self.store = Store(config.database_url)
        self.audit = (
            AuditLog(self.store, self.metrics, config.audit.flush_interval, config.audit.batch_size)
            if config.audit.enabled
            else None
        )
        self.directory = ApproverDirectory(config.approvers)
        self.control = ControlServer(
            config.control.host, config.control.port, self.readiness, self.render_metrics
        )
        self.admin_token = config.control.admin_token or self._generated_admin_token()
        self.channel: ApprovalChannel = WebChannel(self.page_url())
        if config.slack is not None:
            self.channel = self._slack_channel(config.slack)
        self.broker = Broker(
            self.store,
            self.channel,
            self.directory,
            instance=self.instance,
            replica=self.replica,
            progress_interval=config.approvals.progress_interval,
            on_event=self.audit_event,
        )
        limiter = DatabaseRateLimiter(self.store) if self.store.is_postgres else MemoryRateLimiter()
        self.listener = (
            PgListener(config.database_url, self.broker.wake, self.broker.recheck_held)
            if self.store.is_postgres
            else None
        )
        self.pipeline = Pipeline(
            self.policies,
            limiter,
            self.broker,
            self.audit,
            self.metrics,
            replica=self.replica,
            max_argument_bytes=config.max_argument_bytes,
            audit_fail_closed=config.audit.fail_closed,
        )
        self.presence = Presence(config.approvals.reconnect_grace)
        self.gateway = Gateway(
            self.upstreams,
            self.names,
            self.pipeline,
            is_hidden=self.policies.is_hidden,
            stdio_identity=self.identities.stdio,
            presence=self.presence,
        )
        self.gateway.on_session_close.append(self._session_closed)
        # A call whose agent is gone never runs: its request is withdrawn, whichever way it left.
        self.gateway.on_call_abandoned.append(self.broker.abandoned)
        self.broker.cancelled_by_agent = self.gateway.cancelled_by_client
        self.policies.on_change.append(self._policy_changed)
        ApprovalsApi(self.control.app, self.store, self.broker, self.admin_token)
        self._http: _Uvicorn | None = None
        self._session_manager: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.stopping = asyncio.Event()
        self.listen_port = config.listen.port
        self.front = "http"

    def _check_approver_groups(self) -> None:
        missing = sorted(self.policies.approver_groups() - set(self.config.approvers))
        if missing:
            raise ConfigError(
                [
                    f"approvers: the policy names approver group {name!r}, which is not defined"
                    for name in missing
                ]
            )

    def _generated_admin_token(self) -> str:
        """No admin token configured: make one, keep it beside the database for `signoff approvals`."""
        token = secrets.token_urlsafe(24)
        path = admin_token_path(self.config)
        if path is not None:
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(token)
        return token

    def _slack_channel(self, cfg: SlackConfig) -> ApprovalChannel:
        factory = load_channel_plugin("slack")
        host = ChannelHost(
            decide=lambda *a: self.broker.decide(*a),
            directory=self.directory,
            control_app=self.control.app,
            store=self.store,
            metrics=self.metrics,
            audit_event=self.audit_event,
        )
        try:
            return factory(cfg, host)
        except Exception as e:
            raise StartupError(f"the Slack channel could not be set up: {e}") from e

    def page_url(self) -> str:
        return f"http://{self.config.control.host}:{self.control.port}/approvals"  # the bound port

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the database, recover approvals, connect upstreams and channels, open the control port."""
        try:
            await self.store.open()
        except Exception as e:
            raise StartupError(f"cannot open the database {_safe_url(self.config.database_url)}: {e}") from e
        if self.store.is_sqlite and self.front == "http":
            await self._refuse_second_sqlite_replica()
        await self.store.heartbeat(self.instance, self.replica, socket.gethostname(), os.getpid(), self.front)
        for up in self.upstreams.values():
            up.shared.start()  # connecting takes a while: let it run while the rest starts
        if self.listener is not None:
            self.listener.start()
        await self.control.start()
        # The channel first: recovering approvals at start rewrites their messages.
        start = getattr(self.channel, "start", None)
        if start is not None:
            try:
                await start()
            except Exception as e:
                raise StartupError(f"the approval channel could not start: {e}") from e
        await self.broker.start(await self.live_instances())
        if self.audit is not None:
            self.audit.start()
        self.policies.start()
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        if self.config.control.admin_token:
            log.info("approvals page: %s (admin token: control.admin_token)", self.page_url())
        else:
            # A token generated for this run: printing it is how a local user opens the page.
            log.info("approvals page: %s#token=%s", self.page_url(), self.admin_token)
        # Give upstreams a moment so the first client sees their capabilities and tools.
        timeout = max(up.config.connect_timeout for up in self.upstreams.values())
        await asyncio.gather(*(up.shared.wait_ready(timeout) for up in self.upstreams.values()))
        for up in self.upstreams.values():
            if up.shared.ready.is_set():
                with contextlib.suppress(Exception):
                    await up.refresh_tools()
            else:
                log.error("upstream %s is not available yet: %s", up.name, up.shared.unavailable_reason())

    async def stop(self) -> None:
        """Withdraw held calls, flush the audit log, close everything."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.broker.stop()
        if self.listener is not None:
            await self.listener.stop()
        stop = getattr(self.channel, "stop", None)
        if stop is not None:
            with contextlib.suppress(Exception):
                await stop()
        await self.policies.stop()
        if self.audit is not None:
            await self.audit.stop()
        await self.control.stop()
        for up in self.upstreams.values():
            await up.shared.close()
        with contextlib.suppress(Exception):
            await self.store.forget_instance(self.instance)
        await self.store.close()

    async def _housekeeping(self) -> None:
        """Heartbeat, sweep overdue/orphaned approvals, and (SQLite) poll for decisions made elsewhere."""
        tick = 0
        while True:
            await asyncio.sleep(0.25)
            tick += 1
            try:
                if self.store.is_sqlite:
                    await self.broker.poll_decisions()
                if tick % 8 == 0:
                    await self.store.heartbeat(self.instance, self.replica, front=self.front)
                if tick % 20 == 0:
                    await self.broker.sweep(await self.live_instances())
                if tick % 120 == 0:
                    for down in list(self.gateway.sessions):
                        await down.reap_idle(self.config.private_link_idle)
                    self.metrics.pending_approvals.set(len(self.broker.held))
            except Exception as e:
                log.warning("housekeeping failed (will retry): %s", e)

    async def _refuse_second_sqlite_replica(self) -> None:
        others = await self.store.live_replicas(self.config.approvals.heartbeat_timeout)
        host = socket.gethostname()
        for r in others:
            if r.front == "http" and r.instance != self.instance and (r.host != host or _pid_alive(r.pid)):
                raise StartupError(
                    f"another gateway ({r.name}, pid {r.pid} on {r.host}) already serves HTTP on this SQLite "
                    "database. SQLite supports one HTTP replica; point database_url at PostgreSQL "
                    "(postgresql+asyncpg://…) to run several."
                )

    async def live_instances(self) -> list[str]:
        """Processes that may still hold calls: a fresh heartbeat and, on this host, a live pid."""
        host = socket.gethostname()
        replicas = await self.store.live_replicas(self.config.approvals.heartbeat_timeout)
        return [r.instance for r in replicas if r.host != host or r.pid == os.getpid() or _pid_alive(r.pid)]

    async def _session_closed(self, down: Downstream) -> None:
        for approval_id, held in list(self.broker.held.items()):
            if held.approval.session_id == down.id:
                await self.broker.withdraw(approval_id, AGENT_GONE)

    def _policy_changed(self) -> None:
        self.gateway._background(self.gateway.notify_tools_changed())

    def audit_event(self, event: str, approval: Approval, user: str, detail: str | None) -> None:
        """Audit a click that changed nothing (not an approver, self-approval, too late)."""
        if self.audit is None:
            return
        self.audit.record(
            call_id=approval.id,
            identity=approval.identity,
            session_id=approval.session_id,
            client_name=approval.client_name,
            upstream=approval.upstream,
            tool=approval.tool,
            arguments={},
            decision=event,
            rule=approval.rule,
            approval_id=approval.id,
            approvers=user,
            reason=detail,
            outcome="ignored",
            replica=self.replica,
            policy_revision=approval.policy_revision,
        )

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)

    # -- fronts ------------------------------------------------------------------------------

    def http_app(self) -> Any:
        """The agent-facing Streamable HTTP app (the SDK's, resumable) behind bearer-token auth.

        Every response is watched: a held call whose client hung up and did not resume its stream
        within `approvals.reconnect_grace` is withdrawn (`proxy.presence`).
        """
        listen = self.config.listen
        body_limit = self.config.max_argument_bytes + ENVELOPE_BYTES
        grace = self.config.approvals.reconnect_grace
        starlette, self._session_manager = streamable_http_app(
            self.gateway.server,
            path=listen.path,
            json_response=listen.json_response,
            host=listen.host,
            max_request_body_size=body_limit,
            # Resumable streams: a client whose stream broke gets what it missed. A finished
            # stream's events are kept for the reconnect grace, the longest a client may be away.
            new_store=lambda: SessionEvents(linger=grace),
        )
        watched = WatchResponses(
            JsonBodyLimit(starlette, body_limit), self.presence, json_response=listen.json_response
        )
        return BearerAuth(watched, self.identities)

    def bind_http(self) -> socket.socket:
        """Open the agent-facing socket now, so a taken port fails at start with a clear message."""
        listen = self.config.listen
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        # proto must say TCP: asyncio only disables Nagle (TCP_NODELAY) on sockets that do, and without
        # it every keep-alive response waits ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listen.host, listen.port))
        except OSError as e:
            sock.close()
            raise StartupError(
                f"listen: cannot listen on {listen.host}:{listen.port}: {e.strerror}"
            ) from None
        sock.listen(2048)
        sock.setblocking(False)
        self.listen_port = sock.getsockname()[1]
        return sock

    async def serve_http(self, sock: socket.socket) -> None:
        """Serve the HTTP front until a signal or `stopping` is set."""
        config = uvicorn.Config(
            self.http_app(), log_level="warning", lifespan="off", timeout_graceful_shutdown=3
        )
        self._http = _Uvicorn(config)
        # The SDK's session manager normally runs from Starlette's lifespan; we run it ourselves so
        # that it lives exactly as long as the server task.
        async with self._session_manager.run():
            task = asyncio.create_task(self._http.serve(sockets=[sock]))
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            # Before the sessions close under them: their held calls are withdrawn for what it is.
            await self.broker.withdraw_held(GATEWAY_STOPPED)
            self._http.should_exit = True
            await task
            stop.cancel()

    async def serve_stdio(self) -> None:
        """Serve one client over stdin/stdout until it disconnects or a signal arrives."""
        from mcp.server.stdio import stdio_server

        server = self.gateway.server
        async with stdio_server() as (raw_read, write), _answer_parse_errors(raw_read, write) as read:
            task = asyncio.create_task(server.run(read, write, server.create_initialization_options()))
            stop = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                await self.broker.withdraw_held(GATEWAY_STOPPED)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            stop.cancel()

    # -- status ------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, str]]:
        states = {}
        for name, up in self.upstreams.items():
            link = up.shared
            states[name] = "up" if link.state == "up" else f"{link.state}: {link.unavailable_reason()}"
        return all(up.shared.state == "up" for up in self.upstreams.values()), states

    def render_metrics(self) -> bytes:
        for name, up in self.upstreams.items():
            self.metrics.upstream_up.labels(name).set(1 if up.shared.state == "up" else 0)
            self.metrics.upstream_restarts.labels(name).set(up.shared.restarts)
        self.metrics.pending_approvals.set(len(self.broker.held))
        return self.metrics.render()


def admin_token_path(config: Config) -> Path | None:
    """Where a generated admin token is kept: beside the SQLite file (none for other databases)."""
    url = config.database_url
    if not url.startswith("sqlite") or ":memory:" in url:
        return None
    db = Path(url.split("///", 1)[-1])  # absolute: the config anchors relative SQLite paths
    return db.with_name(db.name + ".admin-token")


@contextlib.asynccontextmanager
async def _answer_parse_errors(read: Any, write: Any) -> Any:
    """Answer unparseable stdio lines with a JSON-RPC parse error (the SDK drops them silently)."""
    send, receive = anyio.create_memory_object_stream[Any](0)

    async def pump() -> None:
        async with send:
            async for item in read:
                if isinstance(item, Exception):
                    message = "Parse error: the line is not a valid JSON-RPC 2.0 message"
                    error = types.ErrorData(code=types.PARSE_ERROR, message=message)
                    await write.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=None, error=error)))
                else:
                    await send.send(item)

    task = asyncio.create_task(pump())
    try:
        yield receive
    finally:
        task.cancel()


def _safe_url(url: str) -> str:
    """A database URL without its password, for messages."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _ignore(*_: Any) -> None:
    return None


async def run(config: Config, *, stdio: bool) -> None:
    """Run a gateway until it is told to stop."""
    app = App(config)
    app.front = "stdio" if stdio else "http"
    app.install_signal_handlers()
    sock = None if stdio else app.bind_http()
    try:
        await app.start()
        if sock is None:
            await app.serve_stdio()
        else:
            log.info("MCP front on http://%s:%d%s", config.listen.host, app.listen_port, config.listen.path)
            await app.serve_http(sock)
    finally:
        await app.stop()
