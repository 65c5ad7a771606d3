"""Bearer tokens as the config declares them: read from an environment variable or given as a SHA-256.

Only digests are kept in memory; a presented token is hashed and looked up, never compared in plain.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping


def digest(token: str) -> str:
    """The SHA-256 hex digest a token is known by."""
    return hashlib.sha256(token.encode()).hexdigest()


def configured_digest(
    where: str, token_env: str | None, token_sha256: str | None, env: Mapping[str, str], errors: list[str]
) -> str | None:
    """The digest of a configured token; None, with an error naming `where`, if its variable is unset."""
    if token_env is not None:
        token = env.get(token_env, "")
        if not token:
            errors.append(f"{where}.token_env: environment variable {token_env} is not set")
            return None
        return digest(token)
    return token_sha256


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)
