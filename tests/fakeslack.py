"""A fake Slack for tests: the Web API, ``response_url``, Socket Mode, and signed payloads.

Tests never reach the internet. :class:`FakeSlack` is an aiohttp server on ``127.0.0.1`` (ephemeral
port) that runs in the test's event loop and answers the Web API methods signoff uses with Slack's
real response shapes, so the real ``slack_sdk`` / ``slack_bolt`` clients can be pointed at it::

    async with FakeSlack() as fake:
        client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)
        await client.chat_postMessage(channel="C1", text="hi")
        [call] = await fake.wait_for("chat.postMessage")

Requests *from* Slack *to* us (interactivity) are built with :func:`block_action_payload` /
:func:`view_submission_payload` and sent with :func:`post_signed`, signed exactly as Slack signs them
(:func:`sign`). Socket Mode is served on ``/link``; push envelopes with :meth:`FakeSlack.socket_send`.

Layout of this module:

* constants (ids and tokens the fake treats as valid)
* records (:class:`Call`, :class:`ResponseUrlPost`, :class:`SocketConnection`) and :class:`SlackError`
* :class:`FakeSlack`: lifecycle, fault injection, queries/waiting, Web API methods, ``response_url``,
  Socket Mode
* payload builders and signing
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

__all__ = [
    "APP_ID",
    "APP_TOKEN",
    "BOT_ID",
    "BOT_TOKEN",
    "BOT_USER_ID",
    "SIGNING_SECRET",
    "TEAM_DOMAIN",
    "TEAM_ID",
    "TEAM_NAME",
    "Call",
    "FakeSlack",
    "ResponseUrlPost",
    "SlackError",
    "SocketConnection",
    "block_action_payload",
    "form_body",
    "post_signed",
    "sign",
    "view_submission_payload",
]

# --------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------

TEAM_ID = "T0001"
TEAM_NAME = "Fake Team"
TEAM_DOMAIN = "fake-team"
APP_ID = "A0001"
BOT_ID = "B0001"
BOT_USER_ID = "U0BOT"
BOT_TOKEN = "xoxb-0001-fake-bot-token"
"""Any ``xoxb-`` token is accepted; this one is just convenient."""
APP_TOKEN = "xapp-1-A0001-fake-app-token"
"""Any ``xapp-`` token is accepted by ``apps.connections.open``."""
SIGNING_SECRET = "fake-signing-secret"

DEFAULT_SCOPES = ("chat:write", "users:read", "usergroups:read", "channels:read")
ENVELOPE_TYPES = ("interactive", "events_api", "slash_commands")
_FORM_JSON_FIELDS = ("blocks", "view", "attachments", "metadata")
_TS_BASE = 1_700_000_000

# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One Web API request received by the fake (recorded whatever the fake answered).

    ``params`` merges the query string and the body (JSON or form); ``blocks``/``view``/
    ``attachments``/``metadata`` sent as form strings are JSON-decoded; ``token`` is removed from
    ``params`` and kept in ``token`` (from ``Authorization: Bearer`` or a ``token`` field).
    ``at`` is ``time.monotonic()`` on arrival.
    """

    method: str
    params: dict[str, Any]
    token: str | None
    at: float


@dataclass(frozen=True, slots=True)
class ResponseUrlPost:
    """One POST to a fake ``response_url`` (what bolt's ``respond()`` sends)."""

    id: str
    body: dict[str, Any]
    at: float


@dataclass(eq=False)
class SocketConnection:
    """A live Socket Mode websocket (server side)."""

    id: int
    ticket: str | None
    ws: web.WebSocketResponse
    envelopes: list[str] = field(default_factory=list)
    """Envelope ids delivered to this connection, in order."""
    acks: list[str] = field(default_factory=list)
    """Envelope ids acked over this connection, in order."""


class SlackError(Exception):
    """Raise from a method handler to answer HTTP 200 ``{"ok": false, "error": error, **extra}``."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


@dataclass(slots=True)
class _Fault:
    kind: str  # "status" | "ratelimit" | "error"
    times: int
    status: int = 200
    retry_after: int = 0
    error: str = ""
    body: str | dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Delay:
    seconds: float
    times: int | None  # None: every call until cleared


Handler = Callable[[Call], dict[str, Any]]
T = TypeVar("T")

# --------------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------------


class FakeSlack:
    """An in-loop fake of Slack's Web API, ``response_url`` endpoint and Socket Mode server.

    Start with ``fake = await FakeSlack().start()`` and stop with ``await fake.stop()``, or use
    ``async with FakeSlack() as fake``. Configure lookups by filling :attr:`users`,
    :attr:`usergroups` and :attr:`channels`; inject failures with :meth:`fail_next`,
    :meth:`rate_limit_next`, :meth:`error_next` and :meth:`delay`.
    """

    def __init__(self, *, host: str = "127.0.0.1", scopes: tuple[str, ...] = DEFAULT_SCOPES) -> None:
        self.host = host
        self.port: int | None = None
        self.scopes = scopes
        self.valid_token_prefixes: tuple[str, ...] = ("xoxb-",)
        """Tokens accepted by the bot methods; anything else is ``invalid_auth``."""
        self.revoked_tokens: set[str] = set()
        """Tokens answered with ``token_revoked`` even though their prefix is valid."""

        # Configurable directory data.
        self.users: dict[str, dict[str, Any]] = {}
        """``users.info`` overrides: user id → fields merged over a generated default user."""
        self.usergroups: dict[str, list[str]] = {}
        """``usergroups.users.list``: usergroup id → user ids (unknown ids → ``no_such_subteam``)."""
        self.channels: dict[str, dict[str, Any]] = {}
        """``conversations.info`` overrides: channel id → fields merged over a generated channel."""

        # Recorded state.
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        """Current version of every posted message, by ``(channel, ts)``."""
        self.message_history: dict[tuple[str, str], list[dict[str, Any]]] = {}
        """Every version of every message (post, then each update), by ``(channel, ts)``."""
        self.deleted_messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.ephemerals: list[dict[str, Any]] = []
        self.views: dict[str, dict[str, Any]] = {}
        """Open views by view id (``views.open`` / ``views.update``)."""
        self.responses: list[ResponseUrlPost] = []
        self.envelopes: dict[str, dict[str, Any]] = {}
        """Socket Mode envelopes sent, by envelope id."""
        self.acks: dict[str, dict[str, Any]] = {}
        """Socket Mode acks received (the client's whole message), by envelope id."""
        self.socket_connect_count = 0
        """Websocket connections accepted since start (reconnects included)."""

        self._handlers: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroups_users_list,
            "conversations.info": self._conversations_info,
            "apps.connections.open": self._apps_connections_open,
        }
        self._faults: dict[str, deque[_Fault]] = {}
        self._delays: dict[str, _Delay] = {}
        self._response_targets: dict[str, tuple[str, str]] = {}
        self._sockets: list[SocketConnection] = []
        self._socket_ids = itertools.count(1)
        self._round_robin = 0
        self._ts_counter = itertools.count(1)
        self._view_counter = itertools.count(1)
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # ---------------------------------------------------------------------------------------------
    # Lifecycle
    # ---------------------------------------------------------------------------------------------

    async def start(self) -> Self:
        """Bind ``host:0`` in the running loop and start serving; returns ``self``."""
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_post("/response_url/{id}", self._handle_response_url)
        app.router.add_get("/link", self._handle_link)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Close websockets, cut pending delays short and shut the server down."""
        self._closing.set()
        await self.disconnect_sockets()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self.port is None:
            raise RuntimeError("FakeSlack is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """Web API base for ``AsyncWebClient(base_url=...)``; ends in ``/`` (slack_sdk uses urljoin)."""
        return f"{self.base_url}/api/"

    @property
    def ws_url(self) -> str:
        """The Socket Mode websocket URL, without the per-connection ``ticket`` query."""
        return f"ws://{self.host}:{self.port}/link"

    def response_url(self, id: str, *, channel: str | None = None, ts: str | None = None) -> str:
        """A ``response_url`` served by the fake.

        If ``channel``/``ts`` are given, ``replace_original``/``delete_original`` posts to it act on
        that stored message, as Slack does for the message an action came from.
        """
        if channel is not None and ts is not None:
            self._response_targets[id] = (channel, ts)
        return f"{self.base_url}/response_url/{id}"

    # ---------------------------------------------------------------------------------------------
    # Fault injection
    # ---------------------------------------------------------------------------------------------

    def fail_next(
        self, method: str, status: int = 500, times: int = 1, body: str | dict[str, Any] | None = None
    ) -> None:
        """Answer the next ``times`` calls to ``method`` with HTTP ``status``.

        The default body is JSON ``{"ok": false, "error": "fatal_error"}``; pass a ``str`` to send it
        as ``text/html`` (as Slack's edge does for some 5xx), or a dict to send it as JSON.
        """
        self._faults.setdefault(method, deque()).append(_Fault("status", times, status=status, body=body))

    def rate_limit_next(self, method: str, retry_after: int = 1, times: int = 1) -> None:
        """Answer the next ``times`` calls with HTTP 429, ``Retry-After`` and ``ratelimited``."""
        self._faults.setdefault(method, deque()).append(_Fault("ratelimit", times, retry_after=retry_after))

    def error_next(self, method: str, error: str, times: int = 1, **extra: Any) -> None:
        """Answer the next ``times`` calls with HTTP 200 ``{"ok": false, "error": error, **extra}``."""
        self._faults.setdefault(method, deque()).append(_Fault("error", times, error=error, extra=extra))

    def delay(self, method: str, seconds: float, times: int | None = None) -> None:
        """Hold calls to ``method`` for ``seconds`` before answering (``times=None``: until cleared).

        After the delay the call is processed normally (a client that timed out may still have
        posted the message, as with real Slack). ``seconds=0`` clears the delay; :meth:`stop` cuts
        pending delays short.
        """
        if seconds <= 0:
            self._delays.pop(method, None)
        else:
            self._delays[method] = _Delay(seconds, times)

    def clear_faults(self, method: str | None = None) -> None:
        """Drop pending faults and delays for ``method`` (or for every method)."""
        if method is None:
            self._faults.clear()
            self._delays.clear()
        else:
            self._faults.pop(method, None)
            self._delays.pop(method, None)

    # ---------------------------------------------------------------------------------------------
    # Queries and waiting
    # ---------------------------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        """Every recorded call to ``method``, oldest first."""
        return [c for c in self.calls if c.method == method]

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        """The current stored message at ``(channel, ts)``; ``KeyError`` if there is none."""
        try:
            return self.messages[(channel, ts)]
        except KeyError:
            raise KeyError(f"no message at {(channel, ts)!r}; stored: {sorted(self.messages)!r}") from None

    def responses_to(self, id: str) -> list[ResponseUrlPost]:
        """Every POST to ``response_url(id)``, oldest first."""
        return [r for r in self.responses if r.id == id]

    @property
    def socket_connections(self) -> int:
        """How many Socket Mode websockets are connected now."""
        return len(self._sockets)

    @property
    def sockets(self) -> list[SocketConnection]:
        """The live Socket Mode connections, oldest first (a copy)."""
        return list(self._sockets)

    async def wait_for(self, method: str, n: int = 1, timeout: float = 5) -> list[Call]:
        """Wait until ``method`` has been called at least ``n`` times; return all its calls."""
        return await self.wait_until(
            lambda: calls if len(calls := self.calls_to(method)) >= n else None,
            timeout,
            lambda: (
                f"{n} call(s) to {method}; got {len(self.calls_to(method))}; "
                f"all calls: {[c.method for c in self.calls]}"
            ),
        )

    async def wait_for_response(
        self,
        id: str | None = None,
        n: int = 1,
        timeout: float = 5,
    ) -> list[ResponseUrlPost]:
        """Wait for ``n`` posts to ``response_url(id)`` (any id if ``None``); return them."""

        def matching() -> list[ResponseUrlPost]:
            return self.responses if id is None else self.responses_to(id)

        return await self.wait_until(
            lambda: r if len(r := matching()) >= n else None,
            timeout,
            lambda: f"{n} response_url post(s) to {id or 'any id'}; got {len(matching())}",
        )

    async def wait_for_socket(self, n: int = 1, timeout: float = 5) -> int:
        """Wait until at least ``n`` websockets are connected; return the count."""
        return await self.wait_until(
            lambda: self.socket_connections if self.socket_connections >= n else None,
            timeout,
            lambda: f"{n} socket connection(s); have {self.socket_connections}",
        )

    async def wait_for_ack(self, envelope_id: str, timeout: float = 5) -> dict[str, Any]:
        """Wait for the client's ack of ``envelope_id``; return it (``{"envelope_id", "payload"?}``)."""
        return await self.wait_until(
            lambda: self.acks.get(envelope_id),
            timeout,
            lambda: f"the ack of envelope {envelope_id}; acked: {list(self.acks)}",
        )

    async def wait_until(
        self,
        probe: Callable[[], T | None],
        timeout: float = 5,
        what: str | Callable[[], str] = "a condition",
    ) -> T:
        """Wait until ``probe()`` returns something other than ``None``; return it.

        ``probe`` is re-checked whenever the fake records something (a call, a message change, a
        ``response_url`` post, a socket connect/disconnect or ack). Raises ``TimeoutError``.
        """
        try:
            async with asyncio.timeout(timeout):
                while (result := probe()) is None:
                    await self._changed.wait()
                return result
        except TimeoutError:
            description = what() if callable(what) else what
            raise TimeoutError(f"FakeSlack: waited {timeout}s for {description}") from None

    def _notify(self) -> None:
        """Wake every waiter so it re-checks its condition."""
        self._changed.set()
        self._changed = asyncio.Event()

    # ---------------------------------------------------------------------------------------------
    # Web API: transport
    # ---------------------------------------------------------------------------------------------

    async def _handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        try:
            params = await self._read_params(request)
        except ValueError:
            return web.json_response({"ok": False, "error": "invalid_json"})
        token = self._extract_token(request, params)
        call = Call(method=method, params=params, token=token, at=time.monotonic())
        self.calls.append(call)
        self._notify()

        await self._apply_delay(method)
        fault = self._take_fault(method)
        if fault is not None:
            return self._fault_response(fault)
        handler = self._handlers.get(method)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        try:
            self._check_token(method, token)
            body = {"ok": True, **handler(call)}
        except SlackError as e:
            return web.json_response({"ok": False, "error": e.error, **e.extra})
        finally:
            self._notify()
        headers = {"x-oauth-scopes": ",".join(self.scopes), "x-accepted-oauth-scopes": ""}
        return web.json_response(body, headers=headers)

    @staticmethod
    async def _read_params(request: web.Request) -> dict[str, Any]:
        """Merge query string and body (JSON, urlencoded or multipart); decode JSON-in-form fields."""
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                raw = await request.text()
                if raw.strip():
                    data = json.loads(raw)
                    if not isinstance(data, dict):
                        raise ValueError("JSON body must be an object")
                    params.update(data)
            else:
                form = await request.post()
                params.update(form.items())
                for name in _FORM_JSON_FIELDS:
                    value = params.get(name)
                    if isinstance(value, str):
                        try:
                            params[name] = json.loads(value)
                        except json.JSONDecodeError:
                            pass
        return params

    @staticmethod
    def _extract_token(request: web.Request, params: dict[str, Any]) -> str | None:
        body_token = params.pop("token", None)
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth.removeprefix("Bearer ").strip() or None
        return body_token

    def _check_token(self, method: str, token: str | None) -> None:
        if token is None:
            raise SlackError("not_authed")
        if method == "apps.connections.open":
            if not token.startswith("xapp-"):
                raise SlackError("not_allowed_token_type")
            return
        if token.startswith("xapp-"):
            raise SlackError("not_allowed_token_type")
        if not token.startswith(self.valid_token_prefixes):
            raise SlackError("invalid_auth")
        if token in self.revoked_tokens:
            raise SlackError("token_revoked")

    async def _apply_delay(self, method: str) -> None:
        d = self._delays.get(method)
        if d is None:
            return
        if d.times is not None:
            d.times -= 1
            if d.times <= 0:
                del self._delays[method]
        try:
            await asyncio.wait_for(self._closing.wait(), d.seconds)
        except TimeoutError:
            pass

    def _take_fault(self, method: str) -> _Fault | None:
        queue = self._faults.get(method)
        if not queue:
            return None
        fault = queue[0]
        fault.times -= 1
        if fault.times <= 0:
            queue.popleft()
        return fault

    @staticmethod
    def _fault_response(fault: _Fault) -> web.Response:
        if fault.kind == "ratelimit":
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(fault.retry_after)},
            )
        if fault.kind == "error":
            return web.json_response({"ok": False, "error": fault.error, **fault.extra})
        if isinstance(fault.body, str):
            return web.Response(text=fault.body, status=fault.status, content_type="text/html")
        return web.json_response(fault.body or {"ok": False, "error": "fatal_error"}, status=fault.status)

    def _next_ts(self) -> str:
        """A unique, increasing Slack timestamp: ``1700000000.000100``, ``1700000000.000200``, ..."""
        n = next(self._ts_counter) * 100
        return f"{_TS_BASE + n // 1_000_000}.{n % 1_000_000:06d}"

    # ---------------------------------------------------------------------------------------------
    # Web API: methods (each returns the body without "ok"; raise SlackError for ok=false)
    # ---------------------------------------------------------------------------------------------

    def _auth_test(self, call: Call) -> dict[str, Any]:
        return {
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": TEAM_NAME,
            "user": "signoff",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, call: Call) -> dict[str, Any]:
        p = call.params
        channel = p.get("channel")
        if not channel:
            raise SlackError("channel_not_found")
        if not (p.get("text") or p.get("blocks") or p.get("attachments")):
            raise SlackError("no_text")
        ts = self._next_ts()
        message: dict[str, Any] = {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "team": TEAM_ID,
            "text": p.get("text", ""),
            "ts": ts,
        }
        for key in ("blocks", "attachments", "metadata", "thread_ts"):
            if p.get(key) is not None:
                message[key] = p[key]
        self.messages[(channel, ts)] = message
        self.message_history[(channel, ts)] = [dict(message)]
        return {"channel": channel, "ts": ts, "message": message}

    def _chat_update(self, call: Call) -> dict[str, Any]:
        p = call.params
        channel, ts = p.get("channel"), p.get("ts")
        if not channel:
            raise SlackError("channel_not_found")
        key = (channel, ts)
        if key not in self.messages:
            raise SlackError("message_not_found")
        # Fields left out keep their previous value, as in Slack (send blocks=[] to remove blocks).
        message = dict(self.messages[key])
        for name in ("text", "blocks", "attachments", "metadata"):
            if p.get(name) is not None:
                message[name] = p[name]
        message["edited"] = {"user": BOT_USER_ID, "ts": self._next_ts()}
        self.messages[key] = message
        self.message_history.setdefault(key, []).append(dict(message))
        return {"channel": channel, "ts": ts, "text": message.get("text", ""), "message": message}

    def _chat_delete(self, call: Call) -> dict[str, Any]:
        key = (call.params.get("channel"), call.params.get("ts"))
        if key not in self.messages:
            raise SlackError("message_not_found")
        self.deleted_messages[key] = self.messages.pop(key)
        return {"channel": key[0], "ts": key[1]}

    def _chat_post_ephemeral(self, call: Call) -> dict[str, Any]:
        p = call.params
        if not p.get("channel"):
            raise SlackError("channel_not_found")
        if not p.get("user"):
            raise SlackError("user_not_in_channel")
        if not (p.get("text") or p.get("blocks") or p.get("attachments")):
            raise SlackError("no_text")
        ts = self._next_ts()
        self.ephemerals.append(
            {
                "channel": p["channel"],
                "user": p["user"],
                "text": p.get("text", ""),
                "blocks": p.get("blocks"),
                "thread_ts": p.get("thread_ts"),
                "ts": ts,
            }
        )
        return {"message_ts": ts}

    def _build_view(
        self, view: dict[str, Any], view_id: str, previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "id": view_id,
            "team_id": TEAM_ID,
            "type": view.get("type", "modal"),
            "blocks": view.get("blocks", []),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "state": {"values": {}},
            "hash": f"{_TS_BASE}.{next(self._view_counter):08d}",
            "title": view.get("title"),
            "close": view.get("close"),
            "submit": view.get("submit"),
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "external_id": view.get("external_id", ""),
            "previous_view_id": None,
            "root_view_id": previous["root_view_id"] if previous else view_id,
            "app_id": APP_ID,
            "bot_id": BOT_ID,
        }

    def _views_open(self, call: Call) -> dict[str, Any]:
        p = call.params
        if not p.get("trigger_id") and not p.get("interactivity_pointer"):
            raise SlackError("invalid_arguments", response_metadata={"messages": ["missing trigger_id"]})
        view = p.get("view")
        if not isinstance(view, dict):
            raise SlackError("invalid_arguments", response_metadata={"messages": ["missing view"]})
        view_id = f"V{next(self._view_counter):08d}"
        stored = self._build_view(view, view_id, None)
        self.views[view_id] = stored
        return {"view": stored}

    def _views_update(self, call: Call) -> dict[str, Any]:
        p = call.params
        view = p.get("view")
        if not isinstance(view, dict):
            raise SlackError("invalid_arguments", response_metadata={"messages": ["missing view"]})
        if p.get("view_id"):
            view_id = p["view_id"]
        elif p.get("external_id"):
            matches = [v for v in self.views.values() if v["external_id"] == p["external_id"]]
            if not matches:
                raise SlackError("not_found")
            view_id = matches[0]["id"]
        else:
            raise SlackError("invalid_arguments", response_metadata={"messages": ["missing view_id"]})
        previous = self.views.get(view_id)
        if previous is None:
            raise SlackError("not_found")
        if p.get("hash") and p["hash"] != previous["hash"]:
            raise SlackError("hash_conflict")
        stored = self._build_view(view, view_id, previous)
        self.views[view_id] = stored
        return {"view": stored}

    def _users_info(self, call: Call) -> dict[str, Any]:
        user_id = call.params.get("user")
        if not user_id:
            raise SlackError("user_not_found")
        name = user_id.lower()
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": TEAM_ID,
            "name": name,
            "real_name": f"User {user_id}",
            "deleted": False,
            "is_bot": False,
            "is_admin": False,
            "is_restricted": False,
            "tz": "Etc/UTC",
            "profile": {
                "real_name": f"User {user_id}",
                "display_name": name,
                "email": f"{name}@example.com",
            },
        }
        user.update(self.users.get(user_id, {}))
        return {"user": user}

    def _usergroups_users_list(self, call: Call) -> dict[str, Any]:
        group = call.params.get("usergroup")
        if group not in self.usergroups:
            raise SlackError("no_such_subteam")
        return {"users": list(self.usergroups[group])}

    def _conversations_info(self, call: Call) -> dict[str, Any]:
        channel_id = call.params.get("channel")
        if not channel_id:
            raise SlackError("channel_not_found")
        channel: dict[str, Any] = {
            "id": channel_id,
            "name": channel_id.lower(),
            "is_channel": True,
            "is_group": False,
            "is_im": False,
            "is_private": False,
            "is_archived": False,
            "is_member": True,
            "context_team_id": TEAM_ID,
        }
        channel.update(self.channels.get(channel_id, {}))
        return {"channel": channel}

    def _apps_connections_open(self, call: Call) -> dict[str, Any]:
        return {"url": f"{self.ws_url}?ticket={uuid.uuid4()}&app_id={APP_ID}"}

    # ---------------------------------------------------------------------------------------------
    # response_url
    # ---------------------------------------------------------------------------------------------

    async def _handle_response_url(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        if request.content_type == "application/json":
            body = await request.json()
        else:
            form = await request.post()
            body = json.loads(form["payload"]) if "payload" in form else dict(form)
        self.responses.append(ResponseUrlPost(id=rid, body=body, at=time.monotonic()))
        target = self._response_targets.get(rid)
        if target is not None and target in self.messages:
            if body.get("delete_original"):
                self.deleted_messages[target] = self.messages.pop(target)
            elif body.get("replace_original"):
                message = dict(self.messages[target])
                message["text"] = body.get("text", "")
                message["blocks"] = body.get("blocks", [])
                self.messages[target] = message
                self.message_history.setdefault(target, []).append(dict(message))
        self._notify()
        return web.json_response({"ok": True})

    # ---------------------------------------------------------------------------------------------
    # Socket Mode
    # ---------------------------------------------------------------------------------------------

    async def _handle_link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = SocketConnection(id=next(self._socket_ids), ticket=request.query.get("ticket"), ws=ws)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": len(self._sockets) + 1,
                "debug_info": {
                    "host": f"applink-fake-{conn.id}",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": APP_ID},
            }
        )
        self._sockets.append(conn)
        self.socket_connect_count += 1
        self._notify()
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except json.JSONDecodeError:
                    continue
                if isinstance(data, dict) and data.get("envelope_id"):
                    self.acks[data["envelope_id"]] = data
                    conn.acks.append(data["envelope_id"])
                    self._notify()
        finally:
            if conn in self._sockets:
                self._sockets.remove(conn)
            self._notify()
        return ws

    async def socket_send(
        self,
        payload_type: str,
        payload: dict[str, Any],
        *,
        connection: int | None = None,
        envelope_id: str | None = None,
        timeout: float = 5,
        **extra: Any,
    ) -> str:
        """Push an envelope to ONE connected client and return its ``envelope_id``.

        ``payload_type`` is ``interactive``, ``events_api`` or ``slash_commands``. Like Slack, each
        envelope goes to a single connection: ``connection`` is an index into :attr:`sockets`;
        by default connections take turns (round-robin). Waits up to ``timeout`` for a connection.
        ``extra`` is merged into the envelope (e.g. ``retry_attempt=1``).
        """
        if payload_type not in ENVELOPE_TYPES:
            raise ValueError(f"payload_type must be one of {ENVELOPE_TYPES}, not {payload_type!r}")
        await self.wait_for_socket(1, timeout)
        if connection is None:
            conn = self._sockets[self._round_robin % len(self._sockets)]
            self._round_robin += 1
        else:
            conn = self._sockets[connection]
        eid = envelope_id or str(uuid.uuid4())
        envelope: dict[str, Any] = {
            "envelope_id": eid,
            "type": payload_type,
            "payload": payload,
            "accepts_response_payload": payload_type != "events_api",
        }
        if payload_type == "events_api":
            envelope.update(retry_attempt=0, retry_reason="")
        envelope.update(extra)
        self.envelopes[eid] = envelope
        conn.envelopes.append(eid)
        await conn.ws.send_json(envelope)
        return eid

    async def send_disconnect(self, reason: str = "refresh_requested", connection: int | None = None) -> None:
        """Send Slack's ``{"type": "disconnect", "reason": ...}`` (the socket stays open; clients
        are expected to reconnect by themselves). ``connection=None`` sends to every connection."""
        targets = self.sockets if connection is None else [self._sockets[connection]]
        for conn in targets:
            await conn.ws.send_json(
                {"type": "disconnect", "reason": reason, "debug_info": {"host": f"applink-fake-{conn.id}"}}
            )

    async def disconnect_sockets(self) -> int:
        """Close every websocket from the server side (clients with auto-reconnect call
        ``apps.connections.open`` again); returns how many were closed."""
        conns, self._sockets = self._sockets, []
        self._notify()
        for conn in conns:
            await conn.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"fake disconnect")
        return len(conns)


# --------------------------------------------------------------------------------------------------
# Payload builders and signing
# --------------------------------------------------------------------------------------------------


def _user(user: str, team: str) -> dict[str, Any]:
    return {"id": user, "username": user.lower(), "name": user.lower(), "team_id": team}


def block_action_payload(
    *,
    user: str,
    action_id: str,
    value: str,
    channel: str,
    message_ts: str,
    response_url: str | None = None,
    trigger_id: str = "1700000000.0001.fake0trigger0id",
    team: str = TEAM_ID,
    block_id: str | None = None,
    message: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``block_actions`` payload for a button click on a message, shaped like Slack's.

    ``message`` defaults to a minimal bot message with ``message_ts`` (pass ``fake.message(...)``
    for the real one). Without ``response_url`` a local refused-connection URL is used, so a stray
    ``respond()`` can never reach the internet.
    """
    return {
        "type": "block_actions",
        "user": _user(user, team),
        "api_app_id": APP_ID,
        "token": "fake-verification-token",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "trigger_id": trigger_id,
        "team": {"id": team, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel, "name": channel.lower()},
        "message": message
        if message is not None
        else {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "text": "", "ts": message_ts},
        "state": {"values": {}},
        "response_url": response_url or "http://127.0.0.1:9/response_url/unset",
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": block_id or "actions",
                "text": {"type": "plain_text", "text": action_id, "emoji": True},
                "value": value,
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


def view_submission_payload(
    *,
    user: str,
    callback_id: str,
    private_metadata: str,
    values: dict[str, Any],
    view_id: str = "V00000001",
    team: str = TEAM_ID,
    trigger_id: str = "1700000000.0002.fake0trigger0id",
) -> dict[str, Any]:
    """A ``view_submission`` payload for a modal, shaped like Slack's.

    ``values`` is ``view.state.values``: ``{block_id: {action_id: element_state}}``. A plain string
    (or ``None``) as ``element_state`` is shorthand for a ``plain_text_input`` with that value.
    """
    state = {
        block_id: {
            action_id: (
                {"type": "plain_text_input", "value": element}
                if element is None or isinstance(element, str)
                else element
            )
            for action_id, element in actions.items()
        }
        for block_id, actions in values.items()
    }
    return {
        "type": "view_submission",
        "team": {"id": team, "domain": TEAM_DOMAIN},
        "user": _user(user, team),
        "api_app_id": APP_ID,
        "token": "fake-verification-token",
        "trigger_id": trigger_id,
        "view": {
            "id": view_id,
            "team_id": team,
            "type": "modal",
            "blocks": [],
            "private_metadata": private_metadata,
            "callback_id": callback_id,
            "state": {"values": state},
            "hash": f"{_TS_BASE}.fakehash",
            "title": {"type": "plain_text", "text": "Modal", "emoji": True},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": None,
            "submit": {"type": "plain_text", "text": "Submit", "emoji": True},
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": APP_ID,
            "external_id": "",
            "bot_id": BOT_ID,
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def form_body(payload: dict[str, Any]) -> str:
    """The urlencoded body Slack posts for interactivity: ``payload=<json>``."""
    return urlencode({"payload": json.dumps(payload)})


def sign(body: str, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """Headers exactly as Slack sends them for ``body`` (timestamp defaults to now)."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


async def post_signed(
    url: str, payload: dict[str, Any] | str, secret: str, timestamp: int | None = None
) -> tuple[int, str]:
    """POST ``payload`` (a dict → :func:`form_body`, or an already encoded body) signed with
    ``secret``, as Slack would; return ``(status, response text)``."""
    body = form_body(payload) if isinstance(payload, dict) else payload
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body.encode(), headers=sign(body, secret, timestamp)) as resp,
    ):
        return resp.status, await resp.text()
