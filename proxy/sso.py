"""Single sign-on for the approvals page: OpenID Connect routes that end in a page session.

`/auth/oidc/login` sends the browser to the team's IdP; `/auth/oidc/callback` checks what comes
back (`proxy.oidc`), finds the person whose `email` matches the configured claim, and signs the
browser in as them (`SignIn.start_session`). The sign-in's state lives in the database, keyed by a
random cookie, so the callback may land on any replica.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from urllib.parse import quote

from aiohttp import web

from proxy import tokens
from proxy.oidc import LOGIN_TTL, LoginState, OidcClient, OidcError, OidcUnavailable
from proxy.people import People, Person
from proxy.records import utcnow
from proxy.signin import SignIn
from proxy.store import Store, WebSession

log = logging.getLogger("signoff.sso")

LOGIN_COOKIE = "signoff_oidc"
PAGE = "/approvals"


class SingleSignOn:
    """The two routes of an OpenID Connect sign-in."""

    def __init__(
        self,
        app: web.Application,
        store: Store,
        people: People,
        signin: SignIn,
        client: OidcClient,
        redirect_url: str,
    ) -> None:
        self.store = store
        self.people = people
        self.signin = signin
        self.client = client
        self.redirect_url = redirect_url
        signin.single_sign_on = True
        app.router.add_get("/auth/oidc/login", self.login)
        app.router.add_get("/auth/oidc/callback", self.callback)

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Start a sign-in: remember its state server-side and send the browser to the IdP."""
        try:
            url, state = await self.client.begin(self.redirect_url)
        except OidcError as e:
            log.warning("single sign-on could not start: %s", e)
            raise _back_to_page(f"the identity provider cannot be reached ({e})") from None
        key = secrets.token_urlsafe(32)
        await self.store.add_web_session(
            WebSession(id=tokens.digest(key), via="oidc-login", data=state.to_dict())
        )
        response = web.HTTPFound(url)
        # Lax, not Strict: the IdP's redirect back to us is a cross-site navigation, and a Strict
        # cookie would not come with it.
        response.set_cookie(
            LOGIN_COOKIE,
            key,
            httponly=True,
            samesite="Lax",
            secure=self.signin.secure,
            path="/auth/oidc",
            max_age=int(LOGIN_TTL),
        )
        raise response

    async def callback(self, request: web.Request) -> web.StreamResponse:
        """Finish a sign-in: verify what the IdP sent, map the claim to a person, start their session."""
        key = request.cookies.get(LOGIN_COOKIE, "")
        row = await self.store.web_session(tokens.digest(key)) if key else None
        if row is None or row.via != "oidc-login" or row.person:
            raise _back_to_page(
                "no sign-in was under way in this browser (or it was already used); start again"
            )
        await self.store.drop_web_sessions(session_id=row.id)  # single use, whatever happens next
        if utcnow() - row.created_at > timedelta(seconds=LOGIN_TTL):
            raise _back_to_page("the sign-in took too long; start again")
        try:
            claims = await self.client.finish(request.query, LoginState.from_dict(row.data))
        except OidcUnavailable as e:
            log.warning("single sign-on: the identity provider failed: %s", e)
            raise _back_to_page(str(e)) from None
        except OidcError as e:
            log.warning("single sign-on refused: %s", e)
            raise _back_to_page(str(e)) from None
        value = str(claims[self.client.config.claim])
        person = self._person(value)
        if person is None:
            log.warning("single sign-on: %s is not one of the configured people", value)
            raise _back_to_page(f"{value} signed in, but is not one of this gateway's people")
        response = web.HTTPFound(PAGE)
        response.del_cookie(LOGIN_COOKIE, path="/auth/oidc")
        await self.signin.start_session(response, person, "oidc")
        raise response

    def _person(self, value: str) -> Person | None:
        """The person an IdP claim names: by email (the default claim), else by name."""
        return self.people.by_email(value) or (
            self.people.get(value) if self.client.config.claim != "email" else None
        )


def _back_to_page(message: str) -> web.HTTPFound:
    # The page shows the fragment's message as text (never as HTML).
    return web.HTTPFound(f"{PAGE}#error={quote(message[:300])}")
