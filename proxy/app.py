"""Wiring: build every part from the config and run them in one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import ipaddress
import logging
import os
import re
import signal
import socket
import uuid
from typing import Any

import uvicorn

from proxy import channels, tracing
from proxy.approvals import AGENT_GONE, GATEWAY_STOPPED, Broker
from proxy.approvers import ApproverDirectory
from proxy.audit import AuditLog
from proxy.bodylimit import ENVELOPE_BYTES, JsonBodyLimit
from proxy.channels import ChannelHost, Fanout
from proxy.config import Config, ConfigError
from proxy.context import ContextProber
from proxy.control import ControlServer
from proxy.edge.auth import BearerAuth, IdentityTable
from proxy.edge.fastpath import LeanPath
from proxy.edge.front import FrontProtocol
from proxy.edge.gateway import Gateway
from proxy.edge.replay import SessionEvents
from proxy.edge.sdk_internals import streamable_http_app
from proxy.edge.sessions import Downstream
from proxy.edge.upstreams import Upstream
from proxy.errors import StartupError
from proxy.identity import Identity
from proxy.metrics import Metrics
from proxy.naming import Names
from proxy.notify import PgListener
from proxy.pagerduty import PagerDuty
from proxy.people import People
from proxy.pins import ToolPins
from proxy.pipeline import Pipeline
from proxy.policies import PolicySet
from proxy.presence import Presence, WatchResponses
from proxy.ratelimit import MemoryRateLimiter
from proxy.records import Approval
from proxy.secretfiles import admin_token_path, read_or_create_secret
from proxy.shared_limits import DatabaseRateLimiter
from proxy.signin import SignIn
from proxy.store import Store
from proxy.tokens import new_token
from proxy.webui import ApprovalsApi, WebChannel

log = logging.getLogger("signoff")


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
        tracing.setup()  # before the pipeline and the upstream links: both ask whether it is on
        self.instance = uuid.uuid4().hex
        self.replica = config.replica or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = Metrics()
        self.identities = IdentityTable.from_config(config.identities, config.stdio_identity)
        self.people = People.from_config(config.people)
        shared = self.identities.digests() & self.people.digests()
        if shared:
            # An agent holding a person's token could approve its own calls.
            raise ConfigError(
                ["people: a person's token is also an agent identity's token; give each its own"]
            )
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
        self.pagerduty = _pagerduty(config)
        self.directory = ApproverDirectory(config.approvers, self.people, self.pagerduty)
        self.control = ControlServer(
            config.control.host, config.control.port, self.readiness, self.render_metrics
        )
        self.admin_token = config.control.admin_token or self._shared_admin_token()
        self.channel = Fanout([WebChannel(self.page_url()), *self._plugin_channels(config)])
        modes = {name: cfg.on_tool_change for name, cfg in config.upstreams.items()}
        self.pins = ToolPins(self.store, self.names, modes, self.channel)
        for up in self.upstreams.values():
            up.on_catalog = self._check_catalog
        prober = ContextProber(self.upstreams, self.names, self.audit, self.replica, self.pins.is_held)
        self.broker = Broker(
            self.store,
            self.channel,
            self.directory,
            instance=self.instance,
            replica=self.replica,
            progress_interval=config.approvals.progress_interval,
            on_event=self.audit_event,
            pagerduty=self.pagerduty,
            page_url=self.page_url(),
            prober=prober,
            metrics=self.metrics,
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
            pins=self.pins,
        )
        self.presence = Presence(config.approvals.reconnect_grace)
        self.gateway = Gateway(
            self.upstreams,
            self.names,
            self.pipeline,
            is_hidden=lambda upstream, tool: (
                self.policies.is_hidden(upstream, tool) or self.pins.hides(upstream, tool)
            ),
            would_hold=self._would_hold,
            stdio_identity=self.identities.stdio,
            presence=self.presence,
        )
        self.gateway.on_session_close.append(self._session_closed)
        # A call whose agent is gone never runs: its request is withdrawn, whichever way it left.
        self.gateway.on_call_abandoned.append(self.broker.abandoned)
        self.broker.cancelled_by_agent = self.gateway.cancelled_by_client
        self.policies.on_change.append(self._policy_changed)
        self.signin = SignIn(
            self.control.app,
            self.store,
            self.people,
            self.admin_token,
            idle=config.control.session_idle,
            max_age=config.control.session_max,
            secure=self.page_url().startswith("https://"),
        )
        ApprovalsApi(self.control.app, self.store, self.broker, self.signin)
        if config.oidc is not None:
            self._single_sign_on(config)
        self._http: _Uvicorn | None = None
        self._session_manager: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()  # cancelled at stop
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

    def _shared_admin_token(self) -> str:
        """No admin token configured: use (or create) the one kept beside the database, view-only.

        Every gateway on one SQLite file shares it, so a second stdio gateway never invalidates the
        token the first one's page and `signoff approvals list` use.
        """
        path = admin_token_path(self.config.database_url)
        if path is None:
            return new_token()
        try:
            return read_or_create_secret(path, new_token)
        except OSError as e:
            log.warning(
                "cannot keep the admin token in %s (%s); using one for this run only", path, e.strerror
            )
            return new_token()

    def _single_sign_on(self, config: Config) -> None:
        from proxy.oidc import OidcClient  # only gateways that use single sign-on load the OIDC stack
        from proxy.sso import SingleSignOn

        assert config.oidc is not None
        base = self.page_url().removesuffix("/approvals")
        SingleSignOn(
            self.control.app,
            self.store,
            self.people,
            self.signin,
            OidcClient(config.oidc, config.oidc.secret()),
            config.oidc.redirect_url or f"{base}/auth/oidc/callback",
        )

    def _plugin_channels(self, config: Config) -> list[Any]:
        """Every configured channel plugin (Slack, a webhook, …), each with its own validated section."""
        found = []
        for name, section in channels.configured(config.model_dump(include={"slack", "channels"})).items():
            model, errors = channels.validate(name, section)
            if model is None:
                raise ConfigError(errors)
            host = ChannelHost(
                # Decisions made there are counted by channel (the metrics' `channel` label).
                decide=lambda *a, via=name, **kw: self.broker.decide(*a, via=via, **kw),
                directory=self.directory,
                people=self.people,
                control_app=self.control.app,
                store=self.store,
                metrics=self.metrics,
                audit_event=self.audit_event,
                page_url=self.page_url(),
                revoke_grant=lambda *a: self.broker.revoke_grant(*a),
                check_edit=lambda *a: self.broker.check_edit(*a),
            )
            try:
                found.append(channels.create(name, model, host))
            except Exception as e:
                raise StartupError(f"the {name} channel could not be set up: {e}") from e
        return found

    def page_url(self) -> str:
        base = self.config.control.public_url or f"http://{self.config.control.host}:{self.control.port}"
        return f"{base}/approvals"  # the bound port unless a public URL is configured

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, wait_for_upstreams: bool = True) -> None:
        """Open the database, recover approvals, connect upstreams and channels, open the control port.

        With `wait_for_upstreams` (the HTTP front), the first client sees the upstreams' capabilities
        and tools; a stdio gateway must answer its client at once and lets them connect meanwhile.
        """
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
        await self._open_control_port()
        # The channels first: recovering approvals at start rewrites their messages.
        try:
            await self.channel.start()
        except Exception as e:
            raise StartupError(f"the approval channel could not start: {e}") from e
        await self.broker.start(await self.live_instances())
        if self.audit is not None:
            self.audit.start()
        self.policies.start()
        self._spawn(self._housekeeping())
        # Never a token here: clients write a stdio server's stderr into their own log files.
        log.info(
            "approvals page: %s (sign in with your own token or single sign-on; "
            "`signoff approvals list --config …` views requests)",
            self.page_url(),
        )
        if wait_for_upstreams:
            await self.wait_for_upstreams()
        else:
            self._spawn(self.wait_for_upstreams())

    async def wait_for_upstreams(self) -> None:
        """Wait for every upstream to connect, then load its tool catalog.

        Each for its own `connect_timeout`, and not past its first failed attempt: one dead upstream
        must not keep the others from being served (it connects later, in the background).
        """
        await asyncio.gather(*(up.shared.wait_first_attempt() for up in self.upstreams.values()))
        for up in self.upstreams.values():
            if up.shared.ready.is_set():
                with contextlib.suppress(Exception):
                    await up.refresh_tools()
            else:
                log.error("upstream %s is not available yet: %s", up.name, up.shared.unavailable_reason())

    async def _open_control_port(self) -> None:
        """Serve the control port; a stdio gateway whose port another one holds goes on without it."""
        try:
            await self.control.start()
        except OSError as e:
            where = f"{self.config.control.host}:{self.config.control.port}"
            if self.front != "stdio":
                raise StartupError(f"control: cannot listen on {where}: {e.strerror}") from None
            # Desktop clients start one stdio gateway each from the same config. They share the
            # database, so whichever one holds the port shows every gateway's requests; when it
            # exits, another takes the port over (see `_housekeeping`).
            log.info(
                "control port %s is served by another process (the approvals page and `signoff approvals` "
                "there see this gateway's requests too); this gateway will take it over if it goes",
                where,
            )

    def _spawn(self, coro: Any) -> None:
        """Run `coro` alongside the gateway; it is cancelled when the gateway stops."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Withdraw held calls, flush the audit log, close everything."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.broker.stop()
        if self.listener is not None:
            await self.listener.stop()
        await self.channel.stop()
        await self.policies.stop()
        if self.audit is not None:
            await self.audit.stop()
        await self.control.stop()
        for up in self.upstreams.values():
            await up.shared.close()
        with contextlib.suppress(Exception):
            await self.store.forget_instance(self.instance)
        await self.store.close()
        if self.pagerduty is not None:
            await self.pagerduty.close()
        await tracing.shutdown()

    async def _housekeeping(self) -> None:
        """Heartbeat, sweep overdue/orphaned approvals, and (SQLite) poll for decisions made elsewhere."""
        tick = 0
        # Four heartbeats per `heartbeat_timeout` (at most every 2 s): a replica is taken for dead
        # only after missing several, not one late write on a busy machine.
        beat_every = max(1, min(8, int(self.config.approvals.heartbeat_timeout / 4 / 0.25)))
        while True:
            await asyncio.sleep(0.25)
            tick += 1
            try:
                if self.store.is_sqlite:
                    await self.broker.poll_decisions()
                if tick % 4 == 0:
                    await self.pins.refresh()  # `signoff tools accept` writes the database only
                if tick % beat_every == 0:
                    await self.store.heartbeat(self.instance, self.replica, front=self.front)
                    if not self.control.serving and await self.control.try_start():
                        log.info("this gateway now serves the control port: %s", self.page_url())
                if tick % 20 == 0:
                    await self.broker.sweep(await self.live_instances())
                if tick % 120 == 0:
                    for down in list(self.gateway.sessions):
                        await down.reap_idle(self.config.private_link_idle)
                    self.metrics.pending_approvals.set(self.broker.held_here)
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
        await self.broker.withdraw_session(down.id, AGENT_GONE)

    def _would_hold(self, identity: Identity, upstream: str, tool: str, arguments: dict[str, Any]) -> bool:
        """Whether a call would wait for a human: by the policy, its annotations, or a changed definition."""
        up = self.upstreams.get(upstream)
        info = up.tools.get(tool) if up is not None else None
        annotations = info.get("annotations") if info else None
        if self.pins.needs_approval(upstream, tool) or (up is not None and not up.catalog_loaded):
            return True  # (not yet listed: the pins cannot be checked, the SDK path waits for them)
        return self.policies.would_hold(identity, upstream, tool, arguments, annotations)

    async def _check_catalog(self, upstream: str, tools: dict[str, dict[str, Any]]) -> None:
        """Every newly listed catalog is checked against the tool pins before it is used."""
        try:
            await self.pins.check(upstream, tools)
        except Exception as e:  # the database is away: keep what is held back, check again next time
            log.warning("could not check the tools of %s against their pins: %s", upstream, e)

    def _policy_changed(self) -> None:
        self._spawn(self.gateway.notify_tools_changed())

    def audit_event(
        self,
        event: str,
        approval: Approval,
        user: str,
        detail: str | None,
        *,
        outcome: str = "ignored",
        grant_id: str | None = None,
    ) -> None:
        """Audit a click that changed nothing (not an approver, self-approval, too late), or a grant's
        creation and revocation (`outcome` granted / revoked)."""
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
            outcome=outcome,
            replica=self.replica,
            policy_revision=approval.policy_revision,
            grant_id=grant_id,
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
        self.lean = LeanPath(
            watched,
            self.gateway,
            self.metrics,
            path=listen.path,
            json_response=listen.json_response,
            body_limit=body_limit,
            loopback=listen.host in ("127.0.0.1", "localhost", "::1"),
            linger=grace,
        )
        front = self._auth = BearerAuth(self.lean, self.identities)
        # A client's `traceparent` header parents the request's spans (only when traces are exported).
        return tracing.TraceContext(front) if tracing.enabled() else front

    def bind_http(self) -> socket.socket:
        """Open the agent-facing socket now, so a taken port fails at start with a clear message."""
        listen = self.config.listen
        if not _loopback(listen.host) and not self.identities.required and not listen.allow_anonymous:
            raise StartupError(
                f"listen.host is {listen.host}, beyond loopback, and no `identities` are configured: anyone "
                "who can reach the port could call tools. Configure identities (bearer tokens), or set "
                "listen.allow_anonymous: true if that is really what you want."
            )
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
        app = self.http_app()
        # Each connection starts on signoff's own front, which serves the lean path's requests and
        # lends the connection to uvicorn's protocol for any other (`proxy.edge.front`). No WebSocket
        # protocol: MCP has none, and an upgrade request is then plain HTTP to us.
        front = functools.partial(FrontProtocol, self.lean, self._auth, tracing.enabled())
        config = uvicorn.Config(
            app, http=front, log_level="warning", lifespan="off", ws="none", timeout_graceful_shutdown=3
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
        self.metrics.pending_approvals.set(self.broker.held_here)
        return self.metrics.render()


def _pagerduty(config: Config) -> PagerDuty | None:
    """The PagerDuty client when configured; its secrets come from the environment (unset: ConfigError)."""
    cfg = config.pagerduty
    if cfg is None:
        return None
    return PagerDuty(cfg, cfg.api_token(), cfg.routing_key())


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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


def settle_memory() -> None:
    """Once started: what exists now lives as long as the process, so the collector stops scanning it.

    Without this, a full collection walks the ~150,000 objects of the imported libraries and stops
    every call for about 100 ms (measured with `gc.callbacks` over 4,000 allowed calls).
    """
    gc.collect()
    gc.freeze()


async def _ignore(*_: Any) -> None:
    return None


async def run(config: Config) -> None:
    """Run an HTTP gateway until it is told to stop (the stdio front is `proxy.edge.stdio_front.serve`)."""
    app = App(config)
    app.front = "http"
    app.install_signal_handlers()
    sock = app.bind_http()
    try:
        await app.start()
        log.info("MCP front on http://%s:%d%s", config.listen.host, app.listen_port, config.listen.path)
        settle_memory()
        await app.serve_http(sock)
    finally:
        await app.stop()
