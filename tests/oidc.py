"""A real OpenID provider for tests: `tests/node/oidc_provider.mjs` (npm `oidc-provider`) under Node 22.

    with running_oidc_provider(tmp_path, ["http://127.0.0.1:PORT/callback"]) as idp:
        OidcConfig(issuer=idp.issuer, client_id=idp.client_id, ...), secret idp.client_secret

Sign-in happens on the provider's development login page: type an account id (alice, bob, carol; dave
has an unverified address) into the "login" field, any password, press "Sign-in".
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.nodetools import INSTALL_HINT, NODE_DIR, NODE_MODULES, NodeToolsMissing, node22
from tests.procs import Proc, spawn

PROVIDER_JS = NODE_DIR / "oidc_provider.mjs"
ACCOUNTS = {
    "alice": "alice@example.com",
    "bob": "bob@example.com",
    "carol": "carol@example.com",
}
_READY = re.compile(r"^READY (http://127\.0\.0\.1:\d+)$", re.MULTILINE)


@dataclass
class OidcProvider:
    """A running provider: its issuer URL, the client it knows, and its request log."""

    issuer: str
    client_id: str
    client_secret: str
    second_client_id: str
    second_client_secret: str
    proc: Proc

    def requests(self) -> list[str]:
        """Requests the provider served so far, as `METHOD /path STATUS` lines."""
        return re.findall(r"^(?:GET|POST) \S+ \d{3}$", self.proc.output(), flags=re.MULTILINE)


def provider_command(port: int = 0, claims_in_id_token: bool = False) -> list[str]:
    """The command line that runs the provider (client secrets and redirect URIs come from env)."""
    if not (NODE_MODULES / "oidc-provider" / "package.json").is_file():
        raise NodeToolsMissing(f"oidc-provider is not installed under {NODE_MODULES}: {INSTALL_HINT}")
    cmd = [node22(), str(PROVIDER_JS), "--port", str(port)]
    return [*cmd, "--claims-in-id-token"] if claims_in_id_token else cmd


@contextlib.contextmanager
def running_oidc_provider(
    log_dir: Path,
    redirect_uris: Sequence[str],
    claims_in_id_token: bool = False,
    client_id: str = "signoff",
    timeout: float = 30.0,
) -> Iterator[OidcProvider]:
    """Start the provider on a free port of 127.0.0.1, wait for READY, stop it afterwards.

    It knows two confidential clients with the same redirect URIs: `client_id` and "other-app".
    """
    secret, second_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {
        "OIDC_CLIENT_ID": client_id,
        "OIDC_CLIENT_SECRET": secret,
        "OIDC_REDIRECT_URIS": " ".join(redirect_uris),
        "OIDC_SECOND_CLIENT_SECRET": second_secret,
        "NO_COLOR": "1",
    }
    cmd = [*provider_command(0, claims_in_id_token), "--second-client-id", "other-app"]
    log = log_dir / "oidc-provider.log"
    proc = spawn(cmd, log, env=env, cwd=NODE_DIR)
    try:
        issuer = _wait_ready(proc, timeout)
        yield OidcProvider(issuer, client_id, secret, "other-app", second_secret, proc)
    finally:
        proc.stop()


def _wait_ready(proc: Proc, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _READY.search(proc.output())
        if found:
            return found.group(1)
        if proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"oidc-provider did not print READY (exit code {proc.popen.poll()}):\n{proc.output()}")
