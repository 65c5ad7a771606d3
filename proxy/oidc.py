"""OpenID Connect sign-in for the approvals page: a small relying party (authorization code + PKCE).

Built on Authlib's `AsyncOAuth2Client` (authorization URL, token request, client authentication) and
joserfc with Authlib's `CodeIDToken` (ID token signature and claims). The page's routes call `begin`
and `finish`; between the two they keep the `LoginState` server-side, keyed by a random cookie:

    @routes.get("/auth/oidc/login")
    async def login(request: web.Request) -> web.StreamResponse:
        url, login = await oidc.begin(redirect_url)
        key = secrets.token_urlsafe(32)
        pending[key] = login.to_dict()  # server-side; drop entries older than LOGIN_TTL
        response = web.HTTPFound(url)
        # SameSite=Lax, not Strict: the IdP's redirect back is a cross-site navigation.
        response.set_cookie("signoff_oidc", key, httponly=True, samesite="Lax", max_age=int(LOGIN_TTL))
        raise response

    @routes.get("/auth/oidc/callback")
    async def callback(request: web.Request) -> web.StreamResponse:
        saved = pending.pop(request.cookies.get("signoff_oidc", ""), None)  # single use
        if saved is None:
            raise web.HTTPBadRequest(text="No sign-in in progress in this browser; start again.")
        try:
            claims = await oidc.finish(request.query, LoginState.from_dict(saved))
        except OidcError as e:
            raise web.HTTPForbidden(text=f"Sign-in failed: {e}")
        person = people_by_email.get(claims[oidc.config.claim])  # a non-empty str
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import httpx2
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import ClaimError, ExpiredTokenError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from proxy.config import OidcConfig

LOGIN_TTL = 600.0  # seconds a person has between `begin` and coming back to the callback
LEEWAY = 60  # seconds of clock skew allowed on the ID token's exp / iat
HTTP_TIMEOUT = 10.0
_MAX_DETAIL = 200  # an IdP's error text is shown, cut to this length


class OidcError(Exception):
    """A sign-in failed; the message says why and never holds a token, a code or the secret."""


class OidcUnavailable(OidcError):
    """The identity provider could not be reached or answered nonsense (not the person's fault)."""


@dataclass(frozen=True)
class LoginState:
    """What `finish` needs from `begin`: keep it server-side, never in the browser."""

    state: str
    nonce: str
    code_verifier: str
    redirect_uri: str
    created: float  # time.time() at `begin`

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, for storing the sign-in between the two requests."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoginState:
        """Rebuild a stored LoginState; a malformed one is an OidcError."""
        try:
            state = cls(
                state=str(data["state"]),
                nonce=str(data["nonce"]),
                code_verifier=str(data["code_verifier"]),
                redirect_uri=str(data["redirect_uri"]),
                created=float(data["created"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise OidcError(f"stored sign-in state is malformed ({type(e).__name__})")
        return state


def check_callback(
    params: Mapping[str, str],
    login: LoginState,
    issuer: str,
    iss_required: bool = False,
    now: float | None = None,
) -> str:
    """Check the IdP's redirect back (state, age, error, iss) and return the authorization code."""
    # State first: an error text is shown to the person, so it must come from their own sign-in.
    got_state = params.get("state", "")
    if not got_state or not hmac.compare_digest(got_state.encode(), login.state.encode()):
        raise OidcError("the callback's state does not match this browser's sign-in; start again")
    age = (time.time() if now is None else now) - login.created
    if age > LOGIN_TTL:
        raise OidcError(f"the sign-in took longer than {int(LOGIN_TTL // 60)} minutes; start again")
    if "error" in params:
        error = _clip(params["error"])
        detail = params.get("error_description")
        detail = f": {_clip(detail)}" if detail else ""
        raise OidcError(f"the identity provider refused the sign-in ({error}{detail})")
    iss = params.get("iss")
    if iss is not None and iss != issuer:
        raise OidcError(f"the callback names issuer {_clip(iss)}, not {issuer}")
    if iss is None and iss_required:
        raise OidcError(f"the callback lacks the `iss` parameter that {issuer} promises to send")
    code = params.get("code")
    if not code:
        raise OidcError("the callback carries no authorization code")
    return code


class OidcClient:
    """One relying party: `discover`, then `begin` and `finish` per sign-in; safe for concurrent sign-ins."""

    def __init__(self, config: OidcConfig, secret: str | None, timeout: float = HTTP_TIMEOUT) -> None:
        if config.client_secret_env is not None and not secret:
            raise OidcError("oidc: a client secret is configured (client_secret_env) but none was given")
        self.config = config
        self._secret = secret
        self._timeout = timeout
        self._metadata: dict[str, Any] | None = None
        self._jwks: KeySet | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"OidcClient(issuer={self.config.issuer!r}, client_id={self.config.client_id!r})"

    def _http(self, **kwargs: Any) -> AsyncOAuth2Client:
        # A fresh client per operation: Authlib keeps the last token on the client object,
        # and concurrent sign-ins must not share it.
        return AsyncOAuth2Client(
            client_id=self.config.client_id,
            client_secret=self._secret,
            token_endpoint_auth_method=self._auth_method(),
            scope=" ".join(self.config.scopes),
            code_challenge_method="S256",
            timeout=self._timeout,
            follow_redirects=False,
            **kwargs,
        )

    def _auth_method(self) -> str:
        if not self._secret:
            return "none"
        supported = (self._metadata or {}).get("token_endpoint_auth_methods_supported")
        if supported and "client_secret_basic" not in supported and "client_secret_post" in supported:
            return "client_secret_post"
        return "client_secret_basic"

    async def _get_json(self, url: str, what: str, access_token: str | None = None) -> dict[str, Any]:
        token = {"access_token": access_token, "token_type": "Bearer"} if access_token else None
        async with self._http(token=token) as http:
            try:
                response = await http.request("GET", url, withhold_token=token is None)
            except httpx2.HTTPError as e:
                raise OidcUnavailable(f"{what} at {url} is unreachable: {type(e).__name__}: {_clip(str(e))}")
        if response.status_code != 200:
            raise OidcUnavailable(f"{what} at {url} answered HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise OidcUnavailable(f"{what} at {url} did not answer a JSON object")
        return data

    async def discover(self) -> dict[str, Any]:
        """The provider's metadata from /.well-known/openid-configuration (fetched once, then cached)."""
        if self._metadata is not None:
            return self._metadata
        issuer = self.config.issuer
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            metadata = await self._get_json(url, "discovery document")
        except OidcUnavailable as e:
            raise OidcUnavailable(f"cannot discover OpenID provider {issuer}: {e}")
        # OIDC Discovery wants an exact match; a trailing slash is forgiven, the ID token must then
        # carry the provider's own spelling.
        if str(metadata.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
            raise OidcUnavailable(
                f"OpenID provider {issuer} calls itself {_clip(str(metadata.get('issuer')))}; "
                "check oidc.issuer"
            )
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(metadata.get(key), str):
                raise OidcUnavailable(f"OpenID provider {issuer} publishes no {key}")
        methods = metadata.get("code_challenge_methods_supported")
        if methods is not None and "S256" not in methods:
            raise OidcUnavailable(f"OpenID provider {issuer} does not support PKCE S256")
        self._metadata = metadata
        return metadata

    async def begin(self, redirect_uri: str) -> tuple[str, LoginState]:
        """Start a sign-in: the URL to send the browser to, and the state `finish` will need."""
        metadata = await self.discover()
        login = LoginState(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(48),
            redirect_uri=redirect_uri,
            created=time.time(),
        )
        async with self._http() as http:
            url, _ = http.create_authorization_url(
                metadata["authorization_endpoint"],
                state=login.state,
                code_verifier=login.code_verifier,
                redirect_uri=redirect_uri,
                nonce=login.nonce,
            )
        return url, login

    async def finish(self, params: Mapping[str, str], login: LoginState) -> dict[str, Any]:
        """Complete a sign-in from the callback's query parameters; return the verified claims.

        `claims[config.claim]` is then a non-empty string. Use each LoginState once.
        """
        metadata = await self.discover()
        code = check_callback(
            params,
            login,
            metadata["issuer"],
            iss_required=bool(metadata.get("authorization_response_iss_parameter_supported")),
        )
        token = await self._exchange(code, login)
        claims = await self.verify_id_token(
            token.get("id_token"), login.nonce, access_token=token.get("access_token")
        )
        if self.config.claim not in claims:
            claims = await self._add_userinfo(claims, token)
        return self._person_claims(claims)

    async def _exchange(self, code: str, login: LoginState) -> dict[str, Any]:
        metadata = await self.discover()
        async with self._http() as http:
            try:
                token = await http.fetch_token(
                    metadata["token_endpoint"],
                    grant_type="authorization_code",
                    code=code,
                    redirect_uri=login.redirect_uri,
                    code_verifier=login.code_verifier,
                )
            except OAuthError as e:
                hint = _TOKEN_HINTS.get(str(e.error), "")
                detail = f": {_clip(e.description)}" if e.description else ""
                raise OidcError(
                    f"the identity provider refused the code exchange ({_clip(str(e.error))}{detail}){hint}"
                )
            except httpx2.HTTPError as e:
                raise OidcUnavailable(
                    f"token endpoint of {self.config.issuer} failed: {type(e).__name__}: {_clip(str(e))}"
                )
            except ValueError as e:  # Authlib: the answer was no JSON object
                raise OidcUnavailable(
                    f"token endpoint of {self.config.issuer} answered nonsense: {_clip(str(e))}"
                )
        token = dict(token)
        if not token.get("id_token"):
            raise OidcError("the identity provider returned no ID token (is 'openid' in oidc.scopes?)")
        return token

    async def _keys(self, refresh: bool = False) -> KeySet:
        if self._jwks is None or refresh:
            metadata = await self.discover()
            data = await self._get_json(metadata["jwks_uri"], f"signing keys of {self.config.issuer}")
            try:
                self._jwks = KeySet.import_key_set(data)  # type: ignore[arg-type]
            except (JoseError, KeyError, TypeError, ValueError) as e:
                raise OidcUnavailable(
                    f"signing keys of {self.config.issuer} are unusable: {type(e).__name__}"
                )
        return self._jwks

    def _algorithms(self) -> list[str]:
        offered = (self._metadata or {}).get("id_token_signing_alg_values_supported") or ["RS256"]
        # Never "none"; never HMAC, whose key would be our own client secret.
        return [a for a in offered if isinstance(a, str) and a != "none" and not a.startswith("HS")]

    async def verify_id_token(
        self, id_token: str | None, nonce: str, access_token: str | None = None
    ) -> dict[str, Any]:
        """Check an ID token's signature (provider's JWKS), iss, aud, exp/iat, nonce; return its claims."""
        metadata = await self.discover()
        if not id_token:
            raise OidcError("the identity provider returned no ID token")
        algorithms = self._algorithms()
        try:
            try:
                decoded = jwt.decode(id_token, await self._keys(), algorithms=algorithms)
            except InvalidKeyIdError:  # the provider may have rotated its keys since we fetched them
                decoded = jwt.decode(id_token, await self._keys(refresh=True), algorithms=algorithms)
        except InvalidKeyIdError:
            raise OidcError(f"the ID token is signed with a key {self.config.issuer} does not publish")
        except JoseError as e:
            raise OidcError(f"the ID token's signature does not verify ({e.error})")
        claims = CodeIDToken(
            decoded.claims,
            decoded.header,
            options={
                "iss": {"essential": True, "value": metadata["issuer"]},
                "aud": {"essential": True, "value": self.config.client_id},
                "sub": {"essential": True},
            },
            params={"nonce": nonce, "client_id": self.config.client_id, "access_token": access_token},
        )
        try:
            claims.validate(leeway=LEEWAY)
        except ExpiredTokenError:
            raise OidcError("the ID token has expired (check this machine's clock)")
        except ClaimError as e:
            raise OidcError(self._claim_problem(e, decoded.claims))
        return dict(decoded.claims)

    def _claim_problem(self, error: ClaimError, claims: Mapping[str, Any]) -> str:
        name = error.claim
        if name == "aud":
            return (
                f"the ID token was issued to another client ({_clip(str(claims.get('aud')))}), "
                f"not {self.config.client_id}"
            )
        if name == "iss":
            return f"the ID token was issued by {_clip(str(claims.get('iss')))}, not {self.config.issuer}"
        if name == "nonce":
            return "the ID token belongs to another sign-in (nonce mismatch)"
        if name == "iat":
            return "the ID token was issued in the future (check this machine's clock)"
        if name == "azp":
            return f"the ID token names another authorized party than {self.config.client_id}"
        if name == "at_hash":
            return "the ID token does not match its access token (at_hash)"
        kind = "lacks" if error.error == "missing_claim" else "has an invalid"
        return f"the ID token {kind} claim {_clip(name)!r}"

    async def _add_userinfo(self, claims: dict[str, Any], token: Mapping[str, Any]) -> dict[str, Any]:
        metadata = await self.discover()
        url = metadata.get("userinfo_endpoint")
        if not isinstance(url, str):
            raise OidcError(
                f"the ID token has no {self.config.claim!r} claim and "
                f"{self.config.issuer} has no userinfo endpoint"
            )
        access_token = token.get("access_token")
        if not access_token:
            raise OidcError(
                f"the ID token has no {self.config.claim!r} claim and no access token came with it"
            )
        info = await self._get_json(url, f"userinfo of {self.config.issuer}", access_token=str(access_token))
        if info.get("sub") != claims.get("sub"):
            raise OidcError("the userinfo answer is about another subject than the ID token")
        return {**info, **claims}

    def _person_claims(self, claims: dict[str, Any]) -> dict[str, Any]:
        name = self.config.claim
        value = claims.get(name)
        if not isinstance(value, str) or not value:
            raise OidcError(
                f"the identity provider gave no {name!r} claim; allow the scope that carries it "
                f"(oidc.scopes: {' '.join(self.config.scopes)})"
            )
        # An address the IdP has not verified says nothing about who signed in.
        if name == "email" and claims.get("email_verified") is False:
            raise OidcError(f"the identity provider has not verified the email address {value}")
        return claims


_TOKEN_HINTS = {
    "invalid_client": "; check oidc.client_id and the secret in oidc.client_secret_env",
    "invalid_grant": "; the code was already used, expired, or belongs to another sign-in",
}


def _clip(text: str | None) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "…"
