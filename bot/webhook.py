"""A webhook approval channel: each request and each change to it, POSTed as JSON to a URL you run.

For a chat tool, a pager or a ticketing system that signoff has no channel for: your endpoint gets
`approval.requested`, `approval.decided`, `approval.ran` and `approval.escalated` events, each with
the request's id, tool, caller, the arguments' hash and a link to the request on the approvals page
(the page, the CLI and Slack stay where people decide). The arguments themselves are not sent: what
runs is shown to people who signed in. With `secret_env`, every body is signed as
`X-Signoff-Signature: sha256=<HMAC-SHA256 of the body>`.

    channels:
      webhook: {url: https://hooks.example.com/signoff, secret_env: SIGNOFF_WEBHOOK_SECRET}
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, field_validator

from proxy.duration import Duration
from proxy.records import PENDING, Approval

if TYPE_CHECKING:
    from proxy.channels import ChannelHost

log = logging.getLogger("signoff.webhook")


class WebhookConfig(BaseModel):
    """The `channels.webhook` section."""

    model_config = ConfigDict(extra="forbid")

    url: str
    secret_env: str | None = None  # an environment variable holding the signing secret
    timeout: Duration = 5.0

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value


def create_channel(config: WebhookConfig, host: ChannelHost) -> WebhookChannel:
    """Entry point `signoff.channels: webhook`."""
    secret = os.environ.get(config.secret_env, "") if config.secret_env else ""
    if config.secret_env and not secret:
        raise ValueError(f"channels.webhook.secret_env: environment variable {config.secret_env} is not set")
    return WebhookChannel(config, secret, host.page_url)


class WebhookChannel:
    """Posts request events to one URL; a request that cannot be posted is refused (fail closed)."""

    def __init__(self, config: WebhookConfig, secret: str, page_url: str) -> None:
        self.config = config
        self.secret = secret.encode()
        self.page_url = page_url
        self._http: aiohttp.ClientSession | None = None

    def where(self, approval: Approval) -> str:
        return "on the approvals page"

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def post(self, approval: Approval) -> None:
        await self._send("approval.requested", approval)  # raises: the call fails closed

    async def update(self, approval: Approval, voters: list[str]) -> None:
        if approval.status != PENDING:
            await self._send("approval.decided", approval)

    async def post_outcome(self, approval: Approval, outcome: str, detail: str | None) -> None:
        await self._send("approval.ran", approval, outcome=outcome)

    async def escalate(self, approval: Approval) -> None:
        await self._send("approval.escalated", approval)

    async def _send(self, event: str, approval: Approval, **extra: Any) -> None:
        body = orjson.dumps({"event": event, "at": time.time(), "approval": self.describe(approval), **extra})
        headers = {"Content-Type": "application/json"}
        if self.secret:
            digest = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            headers["X-Signoff-Signature"] = f"sha256={digest}"
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))
        async with self._http.post(self.config.url, data=body, headers=headers) as response:
            if response.status >= 300:
                raise RuntimeError(f"the webhook answered HTTP {response.status} to {event}")

    def describe(self, a: Approval) -> dict[str, Any]:
        """What the webhook learns of a request: enough to route it, never the arguments."""
        return {
            "id": a.id,
            "status": a.status,
            "tool": a.tool,
            "upstream": a.upstream,
            "identity": a.identity,
            "risk": a.risk,
            "rule": a.rule,
            "approvers": a.approvers,
            "argumentsHash": a.args_hash,
            "expiresAt": a.expires_at.isoformat(),
            "decidedBy": a.decided_by,
            "reason": a.decision_reason,
            "link": f"{self.page_url}?approval={a.id}",
        }
