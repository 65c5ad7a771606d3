"""Approval channels: where requests are shown to people, as plugins with config sections of their own.

A channel plugin is two entry points (so `proxy` never imports `bot`, and a config can be checked
without loading a channel's whole stack):

    [project.entry-points."signoff.channel_configs"]   # a pydantic model for the channel's section
    webhook = "bot.webhook:WebhookConfig"
    [project.entry-points."signoff.channels"]          # create(config, host) -> ApprovalChannel
    webhook = "bot.webhook:create_channel"

A channel is configured by its own top-level section (`slack:`) or under `channels:` by name
(`channels: {webhook: {url: …}}`). The approvals page is always on; every configured channel is
active too, and `Fanout` shows each request in all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from aiohttp import web

    from proxy.approvals import ClickResult
    from proxy.approvers import ApproverDirectory
    from proxy.metrics import Metrics
    from proxy.people import People, Person
    from proxy.records import Approval
    from proxy.store import Store

log = logging.getLogger("signoff.channels")

# Channels whose section sits at the top level of the config (kept for configs written before `channels:`).
TOP_LEVEL = ("slack",)


class ApprovalChannel(Protocol):
    """Where approval requests are shown to humans (Slack, the approvals page, a webhook, …)."""

    def where(self, approval: Approval) -> str:
        """Where the request waits, for progress messages: `in #ops`, `on the approvals page`."""
        ...

    async def post(self, approval: Approval) -> tuple[str, str] | None:
        """Show a new request; returns (channel, message id) for later updates. Raises if it cannot."""
        ...

    async def update(self, approval: Approval, voters: list[str]) -> None:
        """Re-render a request after a vote or its final decision."""
        ...

    async def post_outcome(self, approval: Approval, outcome: str, detail: str | None) -> None:
        """Report what happened when an approved call ran."""
        ...

    async def escalate(self, approval: Approval) -> None:
        """Nobody decided in time: re-post the request where its `escalate_to` says (or just note it)."""
        ...

    # Optional (proxy.pins calls it where a channel has it):
    # async def announce_tool_change(self, upstream: str, tool: str, diff: str, action: str) -> None:
    #     """Tell the approvers an upstream changed a tool's definition (`diff`) and what signoff does."""


@dataclass
class ChannelHost:
    """What an approval-channel plugin gets from the gateway."""

    # (approval id, approve, person, reason, *, grant_for=None, arguments=None, confirm_changed=False)
    decide: Callable[..., Awaitable[ClickResult]]
    directory: ApproverDirectory
    people: People
    control_app: web.Application
    store: Store
    metrics: Metrics
    audit_event: Callable[..., None]
    page_url: str = ""
    # Approving for a while and editing: (grant id, person), and (approval id, arguments, person).
    revoke_grant: Callable[[str, Person], Awaitable[ClickResult]] | None = None
    check_edit: Callable[[str, Any, Person], Awaitable[str | None]] | None = None


class ChannelPluginError(Exception):
    """A configured channel has no installed plugin, or its plugin failed to load."""


def configured(data: Mapping[str, Any]) -> dict[str, Any]:
    """The channel sections of a config document: {plugin name: its raw section}."""
    found = {name: data[name] for name in TOP_LEVEL if data.get(name) is not None}
    channels = data.get("channels") or {}
    if isinstance(channels, Mapping):
        found.update({str(name): section for name, section in channels.items()})
    return found


def _entry(group: str, name: str) -> Any:
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    raise ChannelPluginError(f"no approval channel plugin named {name!r} is installed (entry point {group})")


def _path(name: str) -> str:
    return name if name in TOP_LEVEL else f"channels.{name}"


def validate(name: str, section: Any) -> tuple[BaseModel | None, list[str]]:
    """The channel's section checked by the plugin's own model: (config, errors as `path: message`)."""
    try:
        model: type[BaseModel] = _entry("signoff.channel_configs", name)
    except ChannelPluginError as e:
        return None, [f"{_path(name)}: {e}"]
    try:
        return model.model_validate(section), []
    except ValidationError as e:
        errors = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            errors.append(
                f"{_path(name)}{'.' + loc if loc else ''}: {err['msg'].removeprefix('Value error, ')}"
            )
        return None, errors


def create(name: str, config: BaseModel, host: ChannelHost) -> ApprovalChannel:
    """The plugin's channel for its (validated) config."""
    factory = _entry("signoff.channels", name)
    return factory(config, host)


class Fanout:
    """Several channels as one: a request is shown in all of them, and so is every change to it.

    Posting fails closed: a request that could not be shown everywhere it is meant to be (say Slack
    is down) is not left waiting where nobody looks; the call is refused `approval_unavailable`.
    """

    def __init__(self, channels: list[ApprovalChannel]) -> None:
        self.channels = channels

    def where(self, approval: Approval) -> str:
        # The last channel added is the one people were pointed at (the page is always the first).
        return self.channels[-1].where(approval)

    async def start(self) -> None:
        for channel in self.channels:
            start = getattr(channel, "start", None)
            if start is not None:
                await start()

    async def stop(self) -> None:
        for channel in self.channels:
            stop = getattr(channel, "stop", None)
            if stop is not None:
                try:
                    await stop()
                except Exception as e:
                    log.warning("channel %s did not stop cleanly: %s", type(channel).__name__, e)

    async def post(self, approval: Approval) -> tuple[str, str] | None:
        ref = None
        for channel in self.channels:
            ref = await channel.post(approval) or ref
        return ref

    async def update(self, approval: Approval, voters: list[str]) -> None:
        await self._each("update", lambda c: c.update(approval, voters))

    async def post_outcome(self, approval: Approval, outcome: str, detail: str | None) -> None:
        await self._each("post_outcome", lambda c: c.post_outcome(approval, outcome, detail))

    async def escalate(self, approval: Approval) -> None:
        await self._each("escalate", lambda c: c.escalate(approval))

    async def announce_tool_change(self, upstream: str, tool: str, diff: str, action: str) -> None:
        """A changed tool definition, announced in every channel that announces such things."""
        for channel in self.channels:
            announce = getattr(channel, "announce_tool_change", None)
            if announce is not None:
                try:
                    await announce(upstream, tool, diff, action)
                except Exception as e:
                    log.warning("announce_tool_change on %s failed: %s", type(channel).__name__, e)

    async def _each(self, what: str, call: Callable[[ApprovalChannel], Awaitable[None]]) -> None:
        # After the post, one channel failing must not keep the others from hearing of the change.
        for channel in self.channels:
            try:
                await call(channel)
            except Exception as e:
                log.warning("%s on %s failed: %s", what, type(channel).__name__, e)
