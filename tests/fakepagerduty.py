"""A fake PagerDuty for tests: the REST API's `/oncalls` and the Events API v2, on 127.0.0.1.

Like tests/fakeslack.py it is an aiohttp server in the test's own event loop (ephemeral port), with
PagerDuty's real request and response shapes, so the gateway's real client talks to it over HTTP::

    async with FakePagerDuty() as pd:
        pd.set_on_call("P1ABCDE", "carol@example.com")
        config["pagerduty"] = {"api_url": pd.base_url, "events_url": pd.base_url, ...}
        ...
        [trigger] = await pd.wait_for_events(1, "trigger")

`/oncalls` answers only `Authorization: Token token=<API_TOKEN>` (401 otherwise, as PagerDuty does);
`/v2/enqueue` answers only the configured routing key (400 otherwise). :meth:`FakePagerDuty.fail`
makes either API answer an HTTP error, and :meth:`FakePagerDuty.refuse_connections` closes the port
(connection refused) until :meth:`FakePagerDuty.recover`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self, TypeVar

from aiohttp import web

API_TOKEN = "u+fake-pagerduty-rest-key"
ROUTING_KEY = "R0UT1NGKEYFAKE0000000000000000000"
EVENT_ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OnCallRequest:
    """One `/oncalls` request the fake answered (or refused)."""

    query: dict[str, list[str]]
    authorization: str | None
    status: int


@dataclass(slots=True)
class _Fault:
    status: int
    times: int | None  # None: until cleared


@dataclass
class FakePagerDuty:
    """PagerDuty's `/oncalls` and `/v2/enqueue`, with who is on call set by the test."""

    host: str = "127.0.0.1"
    api_token: str = API_TOKEN
    routing_key: str = ROUTING_KEY
    port: int | None = None
    # Who is on call now: schedule or escalation policy id -> [(email, escalation level)].
    on_call: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    oncall_requests: list[OnCallRequest] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    """Every accepted Events API event, in order of arrival."""
    _faults: dict[str, _Fault] = field(default_factory=dict)
    _oncalls_delay: float = 0.0
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> Self:
        """Serve on `host:port` (an ephemeral port the first time; the same one after `recover`)."""
        app = web.Application()
        app.router.add_get("/oncalls", self._oncalls)
        app.router.add_post("/v2/enqueue", self._enqueue)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port or 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Close the port and every open connection."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`: both `pagerduty.api_url` and `pagerduty.events_url`."""
        return f"http://{self.host}:{self.port}"

    # -- what the test controls ------------------------------------------------------------------

    def set_on_call(self, target: str, *emails: str, level: int = 1) -> None:
        """Who is on call now in schedule (or escalation policy) `target`: replaces the previous shift."""
        self.on_call[target] = [(e, level) for e in emails]

    def fail(self, status: int = 500, *, api: str = "both", times: int | None = None) -> None:
        """Answer `api` ("rest", "events" or "both") with HTTP `status`, `times` times (None: until cleared)."""
        for name in ("rest", "events") if api == "both" else (api,):
            self._faults[name] = _Fault(status, times)

    def slow_oncalls(self, seconds: float) -> None:
        """Answer `/oncalls` only after `seconds` (0: at once again)."""
        self._oncalls_delay = seconds

    async def refuse_connections(self) -> None:
        """Close the port and the kept-alive connections: clients get "connection refused" until `recover`."""
        await self.stop()

    async def recover(self) -> None:
        """Clear every fault and serve again on the same port."""
        self._faults.clear()
        self._oncalls_delay = 0.0
        if self._runner is None:
            await self.start()

    # -- queries -----------------------------------------------------------------------------------

    def events_for(self, dedup_key: str, action: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("dedup_key") == dedup_key and (action is None or e["event_action"] == action)
        ]

    async def wait_for_events(
        self, n: int = 1, action: str | None = None, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """Wait until at least `n` events (of `action`, if given) arrived; return them."""

        def matching() -> list[dict[str, Any]]:
            return [e for e in self.events if action is None or e["event_action"] == action]

        return await self.wait_until(
            lambda: found if len(found := matching()) >= n else None,
            timeout,
            lambda: f"{n} {action or ''} event(s); got {[e['event_action'] for e in self.events]}",
        )

    async def wait_until(
        self,
        probe: Callable[[], T | None],
        timeout: float = 15.0,
        what: str | Callable[[], str] = "a condition",
    ) -> T:
        """Wait until `probe()` returns something other than None (re-checked on every request)."""
        try:
            async with asyncio.timeout(timeout):
                while (result := probe()) is None:
                    self._changed.clear()
                    await self._changed.wait()
                return result
        except TimeoutError:
            described = what() if callable(what) else what
            raise TimeoutError(f"fake PagerDuty: no {described} within {timeout}s") from None

    # -- the REST API ------------------------------------------------------------------------------

    async def _oncalls(self, request: web.Request) -> web.Response:
        query = {k: request.query.getall(k) for k in request.query}
        auth = request.headers.get("Authorization")
        if self._oncalls_delay:
            await asyncio.sleep(self._oncalls_delay)  # the fault itself: a slow PagerDuty
        status, body = self._answer_oncalls(query, auth)
        self.oncall_requests.append(OnCallRequest(query, auth, status))
        self._changed.set()
        return web.json_response(body, status=status)

    def _answer_oncalls(self, query: dict[str, list[str]], auth: str | None) -> tuple[int, dict[str, Any]]:
        fault = self._take_fault("rest")
        if fault is not None:
            return fault, {"error": {"message": "Internal Server Error", "code": 5000}}
        if auth != f"Token token={self.api_token}":
            return 401, {"error": {"message": "Authentication failed", "code": 2006}}
        schedules, policies = query.get("schedule_ids[]", []), query.get("escalation_policy_ids[]", [])
        include_users = "users" in query.get("include[]", [])
        limit, offset = int(query.get("limit", ["25"])[0]), int(query.get("offset", ["0"])[0])
        entries = [
            self._entry(target, "schedule", email, level, include_users)
            for target in schedules
            for email, level in self.on_call.get(target, [])
        ] + [
            self._entry(target, "escalation_policy", email, level, include_users)
            for target in policies
            for email, level in self.on_call.get(target, [])
        ]
        page = entries[offset : offset + limit]
        return 200, {
            "oncalls": page,
            "limit": limit,
            "offset": offset,
            "more": offset + limit < len(entries),
            "total": None,
        }

    @staticmethod
    def _entry(target: str, kind: str, email: str, level: int, include_users: bool) -> dict[str, Any]:
        name = email.split("@")[0]
        user_id = "PU" + name.upper()[:5]
        ref = {"id": user_id, "type": "user_reference", "summary": name.capitalize()}
        user = {**ref, "type": "user", "name": name.capitalize(), "email": email} if include_users else ref
        now = datetime.now(UTC)
        schedule = {"id": target, "type": "schedule_reference"} if kind == "schedule" else None
        policy_id = target if kind == "escalation_policy" else "PEPOLICY"
        return {
            "escalation_policy": {"id": policy_id, "type": "escalation_policy_reference"},
            "escalation_level": level,
            "schedule": schedule,
            "user": user,
            "start": (now - timedelta(hours=1)).isoformat(),
            "end": (now + timedelta(hours=7)).isoformat(),
        }

    # -- the Events API v2 -------------------------------------------------------------------------

    async def _enqueue(self, request: web.Request) -> web.Response:
        try:
            status, body = self._answer_event(await request.json())
        except ValueError:
            status, body = 400, {"status": "invalid event", "message": "Event object is invalid"}
        self._changed.set()
        return web.json_response(body, status=status)

    def _answer_event(self, event: Any) -> tuple[int, dict[str, Any]]:
        fault = self._take_fault("events")
        if fault is not None:
            return fault, {"status": "error", "message": "Service unavailable"}
        errors = _event_errors(event, self.routing_key)
        if errors:
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
        self.events.append(event)
        return 202, {"status": "success", "message": "Event processed", "dedup_key": event["dedup_key"]}

    def _take_fault(self, api: str) -> int | None:
        fault = self._faults.get(api)
        if fault is None:
            return None
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                del self._faults[api]
        return fault.status


def _event_errors(event: Any, routing_key: str) -> list[str]:
    """What PagerDuty would reject in an Events API v2 event."""
    if not isinstance(event, dict):
        return ["the event must be a JSON object"]
    errors = []
    if event.get("routing_key") != routing_key:
        errors.append("'routing_key' is invalid")
    if event.get("event_action") not in EVENT_ACTIONS:
        errors.append("'event_action' is invalid")
    if event.get("event_action") != "trigger":
        if not event.get("dedup_key"):
            errors.append("'dedup_key' is required for acknowledge and resolve")
        return errors
    payload = event.get("payload")
    if not isinstance(payload, dict):
        return [*errors, "'payload' is missing or not an object"]
    for key in ("summary", "source"):
        if not isinstance(payload.get(key), str) or not payload[key]:
            errors.append(f"'payload.{key}' is missing")
    if payload.get("severity") not in SEVERITIES:
        errors.append("'payload.severity' is invalid")
    if len(str(payload.get("summary", ""))) > 1024:
        errors.append("'payload.summary' is longer than 1024 characters")
    return errors
