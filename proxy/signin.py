"""Who is asking, on the control port: a person signed in to the page, a person's token, or the admin token.

The page signs a person in once (their own token, or OpenID Connect) and then rides a session cookie:
HttpOnly, SameSite=Strict, ended after `control.session_idle` unused. Anything that changes state with
the cookie must also carry the session's CSRF token in `X-CSRF-Token`. A bearer token (the CLI) is
not ambient, so it needs no CSRF token. The admin token views; it never decides.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web

from proxy import tokens
from proxy.people import People, Person
from proxy.records import utcnow
from proxy.store import Store, WebSession
from proxy.webjson import json_error, json_response

log = logging.getLogger("signoff.signin")

COOKIE = "signoff_session"
CSRF_HEADER = "X-CSRF-Token"
_TOUCH_EVERY = 30.0  # seconds between writes of a session's last use
_FAILURES = 10  # failed token sign-ins from one address within _FAILURE_WINDOW before it must wait
_FAILURE_WINDOW = 300.0


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who made a control-port request: a person, or (person None) the holder of the admin token."""

    person: Person | None
    session_id: str | None = None  # set when the request rode a page session cookie
    csrf: str = ""


class SignIn:
    """Page sign-in routes and the checks every API route makes."""

    def __init__(
        self,
        app: web.Application,
        store: Store,
        people: People,
        admin_token: str,
        *,
        idle: float,
        max_age: float,
        secure: bool,
    ) -> None:
        self.store = store
        self.people = people
        self.admin_token = admin_token
        self.idle = idle
        self.max_age = max_age
        self.secure = secure
        self._failures: dict[str, deque[float]] = {}
        self.single_sign_on = False  # set when OpenID Connect is configured
        app.router.add_get("/auth/options", self.options)
        app.router.add_post("/auth/token", self.sign_in_with_token)
        app.router.add_get("/auth/me", self.me)
        app.router.add_post("/auth/logout", self.sign_out)

    # -- checks for API routes -----------------------------------------------------------------

    async def viewer(self, request: web.Request) -> Viewer:
        """The caller, or 401: a bearer token (admin or a person's) or a live page session."""
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise _unauthorized("send 'Authorization: Bearer <token>'")
            if self._is_admin(token):
                return Viewer(person=None)
            person = self.people.by_token(token)
            if person is None:
                raise _unauthorized("that token is neither a person's token nor the admin token")
            return Viewer(person=person)
        cookie = request.cookies.get(COOKIE, "")
        if cookie:
            viewer = await self._session_viewer(cookie)
            if viewer is not None:
                return viewer
        raise _unauthorized("sign in first")

    async def decider(self, request: web.Request) -> Person:
        """The person deciding: 401 if nobody, 403 for the admin token or a cookie without its CSRF token."""
        viewer = await self.viewer(request)
        if viewer.person is None:
            raise json_error(
                web.HTTPForbidden,
                "the admin token can view requests but never decide: sign in as a person "
                "(your own token in SIGNOFF_APPROVER_TOKEN, or on the approvals page)",
            )
        if viewer.session_id is not None:
            sent = request.headers.get(CSRF_HEADER, "")
            if not sent or not hmac.compare_digest(sent.encode(), viewer.csrf.encode()):
                raise json_error(web.HTTPForbidden, f"missing or wrong {CSRF_HEADER} header")
        return viewer.person

    # -- sessions ------------------------------------------------------------------------------

    async def start_session(self, response: web.StreamResponse, person: Person | None, via: str) -> str:
        """Sign a browser in (person None: the admin token, view only); returns the session's CSRF token."""
        value = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        await self.store.add_web_session(
            WebSession(
                id=tokens.digest(value),
                person=person.name if person else "",
                admin=person is None,
                csrf=csrf,
                via=via,
            )
        )
        response.set_cookie(
            COOKIE,
            value,
            httponly=True,
            samesite="Strict",
            secure=self.secure,
            path="/",
            max_age=int(self.max_age),
        )
        log.info("page sign-in: %s (%s)", person.name if person else "admin token, view only", via)
        return csrf

    async def _session_viewer(self, cookie: str) -> Viewer | None:
        session_id = tokens.digest(cookie)
        row = await self.store.web_session(session_id)
        if row is None or not (row.person or row.admin):
            return None
        now = utcnow()
        idle, age = now - row.seen_at, now - row.created_at
        if idle > timedelta(seconds=self.idle) or age > timedelta(seconds=self.max_age):
            await self.store.drop_web_sessions(session_id=session_id)
            return None
        person = None
        if not row.admin:
            person = self.people.get(row.person)
            if person is None:  # removed from the config since: the sign-in is void
                return None
        if idle.total_seconds() > _TOUCH_EVERY:
            await self.store.touch_web_session(session_id, now)
        return Viewer(person=person, session_id=session_id, csrf=row.csrf)

    # -- routes --------------------------------------------------------------------------------

    async def sign_in_with_token(self, request: web.Request) -> web.Response:
        """POST /auth/token {token}: a person's own token (or the admin token, to view) → a session cookie."""
        address = request.remote or "?"
        if self._too_many_failures(address):
            raise json_error(web.HTTPTooManyRequests, "too many failed sign-ins; wait a few minutes")
        if request.content_type != "application/json":
            # Another site's form cannot send JSON without a CORS preflight, which we never grant: this
            # keeps a hostile page from signing a browser in as someone else.
            raise json_error(
                web.HTTPUnsupportedMediaType, "send the token as JSON (Content-Type: application/json)"
            )
        try:
            body = await request.json()
        except ValueError:
            body = None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip():
            raise json_error(web.HTTPBadRequest, 'give your token as {"token": "…"}')
        token = token.strip()
        person = self.people.by_token(token)
        if person is None and not self._is_admin(token):
            self._failures.setdefault(address, deque()).append(time.monotonic())
            log.warning("refused a page sign-in with an unknown token from %s", address)
            raise json_error(
                web.HTTPUnauthorized, "that token is neither a person's token nor the admin token"
            )
        response = json_response({})
        csrf = await self.start_session(response, person, "token" if person else "admin")
        response.body = json_response(_me(person, csrf)).body
        return response

    async def options(self, _: web.Request) -> web.Response:
        """GET /auth/options: which ways of signing in the page should offer (no sign-in needed)."""
        return json_response({"token": True, "oidc": self.single_sign_on})

    async def me(self, request: web.Request) -> web.Response:
        """GET /auth/me: who this browser is signed in as, and the CSRF token its decisions must carry."""
        viewer = await self.viewer(request)
        return json_response(_me(viewer.person, viewer.csrf))

    async def sign_out(self, request: web.Request) -> web.Response:
        viewer = await self.viewer(request)
        if viewer.session_id is not None:
            await self.store.drop_web_sessions(session_id=viewer.session_id)
        response = json_response({"signedOut": True})
        response.del_cookie(COOKIE, path="/")
        return response

    # -- helpers -------------------------------------------------------------------------------

    def _is_admin(self, token: str) -> bool:
        return bool(self.admin_token) and hmac.compare_digest(token.encode(), self.admin_token.encode())

    def _too_many_failures(self, address: str) -> bool:
        failures = self._failures.get(address)
        if not failures:
            return False
        cutoff = time.monotonic() - _FAILURE_WINDOW
        while failures and failures[0] < cutoff:
            failures.popleft()
        return len(failures) >= _FAILURES


def _me(person: Person | None, csrf: str) -> dict[str, Any]:
    return {
        "person": person.name if person else None,
        "admin": person is None,
        "canDecide": person is not None,
        "csrf": csrf,
    }


def _unauthorized(message: str) -> web.HTTPException:
    return json_error(web.HTTPUnauthorized, message, headers={"WWW-Authenticate": 'Bearer realm="signoff"'})
