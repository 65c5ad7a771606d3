"""Who may decide: approver groups from the config, with Slack user groups resolved by the bot."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from proxy.config import ApproverGroupConfig


class ApproverDirectory:
    """Answers "may this user decide requests of this approver group?" — fail closed on unknown groups."""

    def __init__(self, groups: Mapping[str, ApproverGroupConfig]) -> None:
        self.groups = dict(groups)
        # Set by the Slack channel: resolves a Slack user group id to its members (cached there).
        self.usergroup_members: Callable[[str], Awaitable[set[str]]] | None = None

    async def is_approver(self, group: str | None, user: str) -> bool:
        if group is None:
            return True  # no group named: whoever can see the request (channel membership) may decide
        cfg = self.groups.get(group)
        if cfg is None or not user:
            return False
        if user in cfg.users:
            return True
        if cfg.usergroup and self.usergroup_members is not None:
            return user in await self.usergroup_members(cfg.usergroup)
        return False
