"""Who may decide: approver groups from the config, with Slack user groups resolved by the bot and,
for a group that follows a PagerDuty schedule, whoever is on call at the moment of the click."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from proxy.config import ApproverGroupConfig
from proxy.pagerduty import OnCallUser, PagerDuty, PagerDutyError
from proxy.people import People, Person

log = logging.getLogger("signoff.approvers")


@dataclass(frozen=True, slots=True)
class Allowed:
    """The person may decide."""


NOT_AN_APPROVER = "not an approver"


@dataclass(frozen=True, slots=True)
class Refused:
    """The person may not decide: `why` is told to them (plain text), `short` goes to the audit."""

    why: str
    short: str = NOT_AN_APPROVER


class ApproverDirectory:
    """Answers "may this person decide requests of this approver group?" — fail closed on unknown groups."""

    def __init__(
        self,
        groups: Mapping[str, ApproverGroupConfig],
        people: People | None = None,
        pagerduty: PagerDuty | None = None,
    ) -> None:
        self.groups = dict(groups)
        self.people = people
        self.pagerduty = pagerduty
        # Set by the Slack channel: resolves a Slack user group id to its members (cached there).
        self.usergroup_members: Callable[[str], Awaitable[set[str]]] | None = None

    async def check(self, group: str | None, person: Person) -> Allowed | Refused:
        """Whether `person` may decide a request of approver group `group` now, and if not, why."""
        if group is None:
            return Allowed()  # no group named: any authenticated person who can see the request may decide
        cfg = self.groups.get(group)
        if cfg is None or not await self._member(cfg, person):
            return Refused(
                f"You ({person.name}) are not an approver for this request (approver group: {group})."
            )
        if cfg.on_call_rule == "off":
            return Allowed()
        return await self._check_on_call(group, cfg, person)

    async def is_approver(self, group: str | None, person: Person) -> bool:
        """`check` as a yes/no, for callers that need no reason."""
        return isinstance(await self.check(group, person), Allowed)

    async def on_call(self, group: str | None) -> list[Person] | None:
        """Who is on call now for `group` (people by email; others by PagerDuty's name for them).

        None when the group follows no PagerDuty schedule. Raises PagerDutyError.
        """
        cfg = self.groups.get(group) if group else None
        if cfg is None or cfg.pagerduty_target is None:
            return None
        return [self._person(u) for u in await self._ask(cfg, fresh=False)]

    async def _check_on_call(self, group: str, cfg: ApproverGroupConfig, person: Person) -> Allowed | Refused:
        try:
            users = await self._ask(cfg, fresh=False)
            if not _listed(person, users):
                # Never refuse on a remembered answer: the schedule may have just handed over to them.
                users = await self._ask(cfg, fresh=True)
        except PagerDutyError as e:
            if cfg.on_call_rule == "prefer":
                log.warning("approver group %s: %s; any member may decide (on_call_only: prefer)", group, e)
                return Allowed()
            return Refused(
                "Only the person on call may decide, and PagerDuty cannot say who that is right now "
                f"({e}). Nothing changed; try again in a moment.",
                "on call unknown: PagerDuty unavailable",
            )
        if _listed(person, users):
            return Allowed()
        on_call = [self._person(u) for u in users]
        if cfg.on_call_rule == "prefer" and not [p for p in on_call if await self._member(cfg, p)]:
            return Allowed()  # nobody of the group is on call: its members decide
        kind, target = cfg.pagerduty_target or ("schedule", "?")
        if on_call:
            verb = "is" if len(on_call) == 1 else "are"
            why = f"Only the person on call may decide: {_and([p.name for p in on_call])} {verb} on call now."
        else:
            where = f"PagerDuty {kind.replace('_', ' ')} {target}"
            why = f"Only the person on call may decide, and nobody is on call now in {where}."
        if not person.email:
            why += " (signoff knows no email for you, so PagerDuty cannot name you.)"
        return Refused(why, "not on call")

    async def _ask(self, cfg: ApproverGroupConfig, *, fresh: bool) -> list[OnCallUser]:
        if self.pagerduty is None or cfg.pagerduty_target is None:
            raise PagerDutyError("PagerDuty is not configured (the `pagerduty` section)")
        kind, target = cfg.pagerduty_target
        return await self.pagerduty.on_call(kind, target, fresh=fresh)

    def _person(self, user: OnCallUser) -> Person:
        known = self.people.by_email(user.email) if self.people is not None else None
        return known or Person(name=user.name, email=user.email)

    async def _member(self, cfg: ApproverGroupConfig, person: Person) -> bool:
        """A member by name (`people`), by Slack user ID (`users`) or through the Slack user group."""
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


def _listed(person: Person, users: list[OnCallUser]) -> bool:
    email = (person.email or "").strip().lower()
    return bool(email) and any(u.email == email for u in users)


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
