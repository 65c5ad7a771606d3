"""Who may decide: approver groups from the config, with Slack user groups resolved by the bot."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from proxy.config import ApproverGroupConfig
from proxy.people import Person


class ApproverDirectory:
    """Answers "may this person decide requests of this approver group?" — fail closed on unknown groups."""

    def __init__(self, groups: Mapping[str, ApproverGroupConfig]) -> None:
        self.groups = dict(groups)
        # Set by the Slack channel: resolves a Slack user group id to its members (cached there).
        self.usergroup_members: Callable[[str], Awaitable[set[str]]] | None = None

    async def is_approver(self, group: str | None, person: Person) -> bool:
        """A member by name (`people`), by Slack user ID (`users`) or through the Slack user group."""
        if group is None:
            return True  # no group named: any authenticated person who can see the request may decide
        cfg = self.groups.get(group)
        if cfg is None:
            return False
        if person.name in cfg.people:
            return True
        slack = person.slack_user
        if not slack:
            return False
        if slack in cfg.users:
            return True
        if cfg.usergroup and self.usergroup_members is not None:
            return slack in await self.usergroup_members(cfg.usergroup)
        return False
