"""Who is calling: identities, their groups, and the Slack user they act for."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller of the gateway: an HTTP bearer token's owner, or the stdio front's configured user."""

    name: str
    groups: frozenset[str] = field(default_factory=frozenset)
    slack_user: str | None = None


ANONYMOUS = Identity(name="anonymous")
