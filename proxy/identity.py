"""Who is calling: identities, their groups, and the Slack user they act for."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller of the gateway: an HTTP bearer token's owner, or the stdio front's configured user."""

    name: str
    groups: frozenset[str] = field(default_factory=frozenset)
    slack_user: str | None = None
    acts_for: str | None = None  # the person (name) the agent acts for

    @property
    def on_behalf_of(self) -> str | None:
        """Who may not approve this identity's calls: the person it acts for, or their Slack user ID."""
        return self.acts_for or self.slack_user


ANONYMOUS = Identity(name="anonymous")
