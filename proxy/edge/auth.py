"""Bearer tokens on the HTTP front: who is calling, or 401 before any MCP message is read."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken

from proxy import tokens
from proxy.config import ConfigError, IdentityConfig
from proxy.identity import ANONYMOUS, Identity
from proxy.tokens import configured_digest

log = logging.getLogger("signoff.auth")


class IdentityTable:
    """Token hash → identity. Tokens themselves are never kept, logged or compared in plain."""

    def __init__(self, by_hash: dict[str, Identity], stdio: Identity = ANONYMOUS) -> None:
        self._by_hash = by_hash
        self.stdio = stdio

    @property
    def required(self) -> bool:
        """Whether the HTTP front demands a bearer token (it does once any identity is configured)."""
        return bool(self._by_hash)

    def lookup(self, token: str) -> Identity | None:
        return self._by_hash.get(tokens.digest(token))

    def digests(self) -> set[str]:
        return set(self._by_hash)

    def identities(self) -> list[Identity]:
        return list(self._by_hash.values())

    @classmethod
    def from_config(
        cls,
        identities: Mapping[str, IdentityConfig],
        stdio_identity: str | None,
        env: Mapping[str, str] | None = None,
    ) -> IdentityTable:
        """Build the table; a token variable that is unset or empty is a config error."""
        env = os.environ if env is None else env
        by_hash: dict[str, Identity] = {}
        errors: list[str] = []
        people: dict[str, Identity] = {}
        for name, cfg in identities.items():
            ident = Identity(
                name=name, groups=frozenset(cfg.groups), slack_user=cfg.slack_user, acts_for=cfg.acts_for
            )
            people[name] = ident
            digest = configured_digest(f"identities.{name}", cfg.token_env, cfg.token_sha256, env, errors)
            if digest is None:
                continue
            if digest in by_hash:
                errors.append(f"identities.{name}: same token as identity {by_hash[digest].name!r}")
            by_hash[digest] = ident
        if errors:
            raise ConfigError(errors)
        stdio = people[stdio_identity] if stdio_identity else ANONYMOUS
        return cls(by_hash, stdio)


class BearerAuth:
    """ASGI middleware: resolve `Authorization: Bearer …` to an identity, or answer 401."""

    def __init__(self, app: Any, table: IdentityTable) -> None:
        self.app = app
        self.table = table
        # One user object per identity, made on its first request: the SDK only reads it, and
        # building a pydantic model per request cost every call (and every held one) ~1 kB.
        self._users: dict[str, AuthenticatedUser] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.table.required:
            scope["signoff.identity"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        header = _authorization(scope)
        if not header:
            await _unauthorized(send, "missing bearer token: send 'Authorization: Bearer <token>'")
            return
        identity = self._lookup(header)
        if identity is None:
            client = scope.get("client") or ("?", 0)
            log.warning("refused a request with an invalid bearer token from %s", client[0])
            await _unauthorized(send, "invalid bearer token")
            return
        scope["signoff.identity"] = identity
        # The SDK binds each MCP session to the principal that opened it: another identity
        # presenting the same session id gets 404, as if the session did not exist.
        scope["user"] = self._user(identity)
        await self.app(scope, receive, send)

    def identify(self, scope: dict[str, Any]) -> Identity | None:
        """The identity a request's bearer token names (None: refused, and this middleware says why)."""
        if not self.table.required:
            return ANONYMOUS
        return self._lookup(_authorization(scope))

    def _lookup(self, header: str) -> Identity | None:
        scheme, _, token = header.partition(" ")
        return self.table.lookup(token.strip()) if scheme.lower() == "bearer" and token else None

    def _user(self, identity: Identity) -> AuthenticatedUser:
        user = self._users.get(identity.name)
        if user is None:
            user = AuthenticatedUser(AccessToken(token="-", client_id=identity.name, scopes=[]))
            self._users[identity.name] = user
        return user


def _authorization(scope: dict[str, Any]) -> str:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            return value.decode("latin-1")
    return ""


async def _unauthorized(send: Any, message: str) -> None:
    body = json.dumps(
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": f"Unauthorized: {message}"}}
    )
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", b'Bearer realm="signoff"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})
