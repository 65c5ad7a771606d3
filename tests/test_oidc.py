"""OpenID Connect sign-in (`proxy.oidc`) against a real OpenID provider, driven in real Chromium.

The provider is the npm `oidc-provider` (tests/node/oidc_provider.mjs) on 127.0.0.1; the relying party
is a minimal aiohttp app written here that uses `proxy.oidc` the way the approvals page does.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, Route

from proxy.config import ConfigError
from proxy.oidc import (
    LOGIN_TTL,
    LoginState,
    OidcClient,
    OidcConfig,
    OidcError,
    OidcUnavailable,
    check_callback,
)
from tests.browser import launched
from tests.oidc import OidcProvider, running_oidc_provider
from tests.procs import free_port

COOKIE = "rp_login"


@pytest.fixture(autouse=True)
def _direct(no_proxy: None) -> None:
    """Every request here goes to 127.0.0.1 directly."""


# --- the relying party: /login and /callback on proxy.oidc, like the approvals page ---------------


@dataclass
class RelyingParty:
    """A tiny web app that signs people in with `proxy.oidc`; it records what each callback got."""

    url: str = ""
    client: OidcClient | None = None
    exchange: bool = True  # False: record the callback, leave the code unredeemed
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    callbacks: list[tuple[dict[str, str], LoginState]] = field(default_factory=list)
    outcomes: list[dict[str, Any] | OidcError] = field(default_factory=list)

    @property
    def callback_url(self) -> str:
        return self.url + "/callback"

    async def login(self, request: web.Request) -> web.StreamResponse:
        assert self.client is not None
        url, login = await self.client.begin(self.callback_url)
        key = secrets.token_urlsafe(16)
        self.pending[key] = json.loads(json.dumps(login.to_dict()))  # as a server-side store keeps it
        response = web.HTTPFound(url)
        response.set_cookie(COOKIE, key, httponly=True, samesite="Lax", max_age=int(LOGIN_TTL))
        raise response

    async def callback(self, request: web.Request) -> web.StreamResponse:
        assert self.client is not None
        saved = self.pending.pop(request.cookies.get(COOKIE, ""), None)
        if saved is None:
            return web.Response(status=400, text="No sign-in in progress in this browser; start again.")
        login = LoginState.from_dict(saved)
        params = dict(request.query)
        self.callbacks.append((params, login))
        if not self.exchange:
            return web.Response(text="Callback recorded.")
        try:
            claims = await self.client.finish(request.query, login)
        except OidcError as e:
            self.outcomes.append(e)
            return web.Response(status=403, text=f"Sign-in failed: {e}")
        self.outcomes.append(claims)
        return web.Response(text=f"Signed in as {claims[self.client.config.claim]}")


@pytest.fixture
async def rp() -> AsyncIterator[RelyingParty]:
    party = RelyingParty()
    app = web.Application()
    app.router.add_get("/login", party.login)
    app.router.add_get("/callback", party.callback)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    party.url = f"http://127.0.0.1:{port}"
    try:
        yield party
    finally:
        await runner.cleanup()


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def oidc_client(idp: OidcProvider, secret: str | None = None, client_id: str | None = None) -> OidcClient:
    config = OidcConfig(
        issuer=idp.issuer, client_id=client_id or idp.client_id, client_secret_env="OIDC_TEST_SECRET"
    )
    return OidcClient(config, secret or idp.client_secret)


@pytest.fixture
def idp(rp: RelyingParty, tmp_path: Path) -> Iterator[OidcProvider]:
    """The provider as configured by default: email and name come from the userinfo endpoint."""
    with running_oidc_provider(tmp_path, [rp.callback_url]) as provider:
        rp.client = oidc_client(provider)
        yield provider


@pytest.fixture
def idp_claims_in_token(rp: RelyingParty, tmp_path: Path) -> Iterator[OidcProvider]:
    """The provider putting email and name into the ID token itself, as most hosted IdPs do."""
    with running_oidc_provider(tmp_path, [rp.callback_url], claims_in_id_token=True) as provider:
        rp.client = oidc_client(provider)
        yield provider


# --- the browser --------------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launched() as b:
        yield b


@pytest.fixture
async def page(browser: Browser, tmp_path: Path) -> AsyncIterator[Page]:
    """A fresh browser profile whose requests may only go to 127.0.0.1."""
    context = await browser.new_context()
    context.set_default_timeout(15_000)
    outside: list[str] = []

    async def only_local(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    await context.route("**/*", only_local)
    page = await context.new_page()
    try:
        yield page
    finally:
        await page.screenshot(path=str(tmp_path / "oidc-page.png"), full_page=True)
        await context.close()
    assert not outside, f"the browser tried to leave 127.0.0.1: {outside}"


async def sign_in(page: Page, rp: RelyingParty, account: str) -> str:
    """Start at the app's /login, type `account` on the provider's login page; return the page text."""
    await page.goto(rp.url + "/login")
    await page.fill('input[name="login"]', account)
    await page.fill('input[name="password"]', "any password will do")
    async with page.expect_navigation(url=f"{rp.callback_url}?**"):
        await page.click('button[type="submit"]')
    return await page.inner_text("body")


# --- signing in ---------------------------------------------------------------------------------


@pytest.mark.node
@pytest.mark.browser
async def test_alice_signs_in_and_the_app_gets_her_verified_email(
    idp: OidcProvider, rp: RelyingParty, page: Page
) -> None:
    text = await sign_in(page, rp, "alice")

    assert text == "Signed in as alice@example.com"
    [claims] = rp.outcomes
    assert isinstance(claims, dict)
    assert claims["email"] == "alice@example.com"
    assert claims["email_verified"] is True
    assert claims["sub"] == "alice"
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == idp.client_id
    # This provider keeps email out of the ID token of the code flow: it came from userinfo.
    assert "GET /me 200" in idp.requests()
    assert "POST /token 200" in idp.requests()


@pytest.mark.node
@pytest.mark.browser
async def test_email_in_the_id_token_needs_no_userinfo_call(
    idp_claims_in_token: OidcProvider, rp: RelyingParty, page: Page
) -> None:
    text = await sign_in(page, rp, "bob")

    assert text == "Signed in as bob@example.com"
    [claims] = rp.outcomes
    assert isinstance(claims, dict)
    assert (claims["sub"], claims["name"]) == ("bob", "Bob Builder")
    assert "POST /token 200" in idp_claims_in_token.requests()
    assert not any(line.startswith("GET /me") for line in idp_claims_in_token.requests())


@pytest.mark.node
@pytest.mark.browser
async def test_cancel_at_the_provider_is_a_clear_refusal(
    idp: OidcProvider, rp: RelyingParty, page: Page
) -> None:
    await page.goto(rp.url + "/login")
    async with page.expect_navigation(url=f"{rp.callback_url}?**"):
        await page.click("text=[ Cancel ]")

    text = await page.inner_text("body")
    assert text.startswith("Sign-in failed: the identity provider refused the sign-in (access_denied")
    assert "End-User aborted interaction" in text
    assert not any(line.startswith("POST /token") for line in idp.requests())


@pytest.mark.node
@pytest.mark.browser
async def test_an_unverified_email_is_refused(idp: OidcProvider, rp: RelyingParty, page: Page) -> None:
    # dave's account claims alice's address, unverified.
    text = await sign_in(page, rp, "dave")

    assert text == (
        "Sign-in failed: the identity provider has not verified the email address alice@example.com"
    )


# --- what goes wrong ------------------------------------------------------------------------------


@pytest.mark.node
@pytest.mark.browser
async def test_wrong_client_secret_is_a_clear_error_without_the_secret(
    idp: OidcProvider, rp: RelyingParty, page: Page
) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(16)
    rp.client = oidc_client(idp, secret=wrong)

    text = await sign_in(page, rp, "alice")

    assert text.startswith("Sign-in failed: the identity provider refused the code exchange (invalid_client")
    assert "check oidc.client_id and the secret in oidc.client_secret_env" in text
    [error] = rp.outcomes
    assert isinstance(error, OidcError) and not isinstance(error, OidcUnavailable)
    assert wrong not in str(error) and idp.client_secret not in str(error)
    assert "POST /token 401" in idp.requests()


@pytest.mark.node
@pytest.mark.browser
async def test_a_tampered_state_is_refused_before_the_code_is_used(
    idp: OidcProvider, rp: RelyingParty, page: Page
) -> None:
    # Playwright cannot route a request that a redirect made, and the callback is one: route the login
    # form's POST instead, follow the provider's redirects with the browser's own cookies, and hand
    # the browser the final redirect to the callback with another state.
    async def tamper(route: Route) -> None:
        if route.request.method != "POST":
            await route.continue_()
            return
        response = await route.fetch(max_redirects=0)
        location = response.headers["location"]
        while not location.startswith(rp.callback_url):
            response = await page.request.get(location, max_redirects=0)
            location = response.headers["location"]
        parts = urlsplit(location)
        query = {**dict(parse_qsl(parts.query)), "state": secrets.token_urlsafe(32)}
        await route.fulfill(
            status=303, headers={"location": urlunsplit(parts._replace(query=urlencode(query)))}
        )

    await page.route(lambda url: "/interaction/" in url, tamper)

    text = await sign_in(page, rp, "alice")

    assert text == "Sign-in failed: the callback's state does not match this browser's sign-in; start again"
    assert not any(line.startswith("POST /token") for line in idp.requests())


@pytest.mark.node
@pytest.mark.browser
async def test_a_replayed_code_is_refused(idp: OidcProvider, rp: RelyingParty, page: Page) -> None:
    assert await sign_in(page, rp, "alice") == "Signed in as alice@example.com"
    [(params, login)] = rp.callbacks

    # The browser coming back to the same callback URL: this sign-in is over.
    await page.reload()
    assert await page.inner_text("body") == "No sign-in in progress in this browser; start again."

    # Someone who kept both the callback URL and the stored state: the provider refuses the code.
    assert rp.client is not None
    with pytest.raises(OidcError) as refused:
        await rp.client.finish(params, login)
    assert "refused the code exchange (invalid_grant" in str(refused.value)
    assert params["code"] not in str(refused.value)


@pytest.mark.node
@pytest.mark.browser
async def test_an_id_token_for_another_client_is_refused(
    idp: OidcProvider, rp: RelyingParty, page: Page
) -> None:
    # A genuine ID token, signed by the same provider, but issued to "other-app".
    other = oidc_client(idp, secret=idp.second_client_secret, client_id=idp.second_client_id)
    rp.client, rp.exchange = other, False
    assert await sign_in(page, rp, "alice") == "Callback recorded."
    [(params, login)] = rp.callbacks
    token_endpoint = (await other.discover())["token_endpoint"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            token_endpoint,
            data={
                "grant_type": "authorization_code",
                "code": params["code"],
                "redirect_uri": login.redirect_uri,
                "code_verifier": login.code_verifier,
            },
            headers={"Authorization": basic_auth(idp.second_client_id, idp.second_client_secret)},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        id_token = (await response.json())["id_token"]

    assert (await other.verify_id_token(id_token, login.nonce))["sub"] == "alice"
    signoff = oidc_client(idp)
    with pytest.raises(OidcError) as refused:
        await signoff.verify_id_token(id_token, login.nonce)
    assert str(refused.value) == "the ID token was issued to another client (other-app), not signoff"
    with pytest.raises(OidcError) as replayed:
        await other.verify_id_token(id_token, "the nonce of another sign-in")
    assert str(replayed.value) == "the ID token belongs to another sign-in (nonce mismatch)"


async def test_an_unreachable_issuer_is_named_in_the_error() -> None:
    issuer = f"http://127.0.0.1:{free_port()}"
    client = OidcClient(OidcConfig(issuer=issuer, client_id="signoff"), None)

    with pytest.raises(OidcUnavailable) as failed:
        await client.begin("http://127.0.0.1:1/callback")

    message = str(failed.value)
    assert message.startswith(f"cannot discover OpenID provider {issuer}: ")
    assert "unreachable: ConnectError" in message


async def test_a_server_that_is_no_openid_provider_is_named_in_the_error(rp: RelyingParty) -> None:
    client = OidcClient(OidcConfig(issuer=rp.url, client_id="signoff"), None)

    with pytest.raises(OidcUnavailable) as failed:
        await client.discover()

    assert str(failed.value) == (
        f"cannot discover OpenID provider {rp.url}: discovery document at "
        f"{rp.url}/.well-known/openid-configuration answered HTTP 404"
    )


# --- pure logic: configuration, stored state, the callback's parameters ---------------------------


def test_config_defaults_and_refusals() -> None:
    config = OidcConfig(
        issuer="https://idp.example.com", client_id="signoff", client_secret_env="OIDC_SECRET"
    )
    assert (config.claim, config.scopes, config.redirect_url) == (
        "email",
        ["openid", "email", "profile"],
        None,
    )
    assert config.secret({"OIDC_SECRET": "s3"}) == "s3"
    with pytest.raises(ConfigError, match="environment variable OIDC_SECRET is not set"):
        config.secret({})
    assert OidcConfig(issuer="https://idp.example.com", client_id="x").secret({}) is None

    for bad, problem in [
        ({"issuer": "http://idp.example.com"}, "must use https"),
        ({"issuer": "idp.example.com"}, "must be an https:// URL"),
        ({"scopes": ["email"]}, "must include 'openid'"),
        ({"client_secret": "inline"}, "Extra inputs are not permitted"),
    ]:
        with pytest.raises(ValueError, match=problem):
            OidcConfig.model_validate({"issuer": "https://idp.example.com", "client_id": "x", **bad})
    assert OidcConfig(issuer="http://localhost:9000", client_id="x").issuer == "http://localhost:9000"


def test_a_secret_configured_but_not_given_is_refused() -> None:
    config = OidcConfig(
        issuer="https://idp.example.com", client_id="signoff", client_secret_env="OIDC_SECRET"
    )
    with pytest.raises(OidcError, match="none was given"):
        OidcClient(config, None)
    assert "s3cret" not in repr(OidcClient(config, "s3cret"))


def test_login_state_survives_json_and_rejects_garbage() -> None:
    login = LoginState("st", "no", "verifier", "https://signoff.example.com/auth/oidc/callback", 1234.5)
    assert LoginState.from_dict(json.loads(json.dumps(login.to_dict()))) == login
    with pytest.raises(OidcError, match="stored sign-in state is malformed"):
        LoginState.from_dict({"state": "st"})


LOGIN = LoginState("the-state", "n", "v", "https://rp/cb", created=1000.0)
ISSUER = "https://idp.example.com"


@pytest.mark.parametrize(
    ("params", "now", "problem"),
    [
        ({"error": "access_denied", "state": "the-state"}, 1001, "refused the sign-in (access_denied)"),
        (
            {"error": "login_required", "error_description": "no\n  session", "state": "the-state"},
            1001,
            "(login_required: no session)",
        ),
        ({"error": "access_denied", "error_description": "call 555"}, 1001, "state does not match"),
        ({"code": "c", "state": "other"}, 1001, "state does not match"),
        ({"code": "c"}, 1001, "state does not match"),
        ({"code": "c", "state": "the-state"}, 1000 + LOGIN_TTL + 1, "took longer than 10 minutes"),
        ({"code": "c", "state": "the-state", "iss": "https://evil.example"}, 1001, "names issuer"),
        ({"state": "the-state"}, 1001, "no authorization code"),
    ],
)
def test_callback_refusals(params: dict[str, str], now: float, problem: str) -> None:
    with pytest.raises(OidcError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        check_callback(params, LOGIN, ISSUER, now=now)


def test_callback_iss_checks() -> None:
    params = {"code": "c", "state": "the-state"}
    assert check_callback(params, LOGIN, ISSUER, now=1001) == "c"
    assert check_callback({**params, "iss": ISSUER}, LOGIN, ISSUER, iss_required=True, now=1001) == "c"
    with pytest.raises(OidcError, match="lacks the `iss` parameter"):
        check_callback(params, LOGIN, ISSUER, iss_required=True, now=1001)
