"""The Slack channel's config section (`slack:`), kept apart from the bot so a config check stays light."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from proxy.duration import Duration


class SlackConfig(BaseModel):
    """The `slack:` section: the bot's tokens, the default channel, Socket Mode or HTTP."""

    model_config = ConfigDict(extra="forbid")

    bot_token: str
    app_token: str | None = None
    signing_secret: str | None = None
    channel: str
    mode: Literal["socket", "http"] = "socket"
    api_url: str | None = None  # tests only: a fake Web API on 127.0.0.1
    # Added for the Slack bot (issue 5): how long posting a request may take, retries included,
    # before the call fails closed with approval_unavailable.
    post_timeout: Duration = 10.0

    @model_validator(mode="after")
    def _mode_needs(self) -> SlackConfig:
        if self.mode == "socket" and not self.app_token:
            raise ValueError("socket mode needs `app_token` (xapp-…, with connections:write)")
        if self.mode == "http" and not self.signing_secret:
            raise ValueError("http mode needs `signing_secret` to verify Slack's requests")
        return self
