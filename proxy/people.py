"""The humans who decide: who they are, and how each way of signing in maps to one of them.

A person proves who they are with their own token (page and CLI), their Slack user (a click Slack
signed), or their email (an OpenID Connect sign-in). Deciding is only ever done as a `Person`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from proxy.config import ConfigError, PersonConfig
from proxy.tokens import configured_digest, digest


@dataclass(frozen=True, slots=True)
class Person:
    """Someone who may decide approval requests (if an approver group lets them)."""

    name: str
    slack_user: str | None = None
    email: str | None = None

    def is_(self, who: str | None) -> bool:
        """Whether `who` (a person's name or a Slack user ID, as stored on a request) is this person."""
        return bool(who) and who in (self.name, self.slack_user)


class People:
    """Every configured person, found by name, token, Slack user or email."""

    def __init__(self, people: list[Person], by_digest: dict[str, Person]) -> None:
        self._by_name = {p.name: p for p in people}
        self._by_digest = by_digest
        self._by_slack = {p.slack_user: p for p in people if p.slack_user}
        self._by_email = {p.email.lower(): p for p in people if p.email}

    @classmethod
    def from_config(cls, people: Mapping[str, PersonConfig], env: Mapping[str, str] | None = None) -> People:
        """Build the directory; unset token variables and credentials given twice are config errors."""
        env = os.environ if env is None else env
        errors: list[str] = []
        found: list[Person] = []
        by_digest: dict[str, Person] = {}
        seen: dict[tuple[str, str], str] = {}
        for name, cfg in people.items():
            person = Person(name=name, slack_user=cfg.slack_user, email=cfg.email)
            found.append(person)
            for kind, value in (("slack_user", cfg.slack_user), ("email", (cfg.email or "").lower() or None)):
                if value is not None:
                    if (kind, value) in seen:
                        errors.append(f"people.{name}.{kind}: also given for {seen[kind, value]!r}")
                    seen[kind, value] = name
            key = configured_digest(f"people.{name}", cfg.token_env, cfg.token_sha256, env, errors)
            if key is not None:
                if key in by_digest:
                    errors.append(f"people.{name}: same token as {by_digest[key].name!r}")
                by_digest[key] = person
        if errors:
            raise ConfigError(errors)
        return cls(found, by_digest)

    def __iter__(self) -> Iterator[Person]:
        return iter(self._by_name.values())

    def get(self, name: str) -> Person | None:
        return self._by_name.get(name)

    def by_token(self, token: str) -> Person | None:
        """The person whose own token this is."""
        return self._by_digest.get(digest(token)) if token else None

    def by_slack(self, user_id: str) -> Person:
        """The person behind a Slack user; an undeclared user stands for themself (`users:` in approvers)."""
        return self._by_slack.get(user_id) or Person(name=user_id, slack_user=user_id)

    def by_email(self, email: str) -> Person | None:
        return self._by_email.get(email.strip().lower())

    def digests(self) -> set[str]:
        return set(self._by_digest)

    def slack_id(self, name: str) -> str | None:
        """The Slack user ID to mention for a person's name (or a bare Slack ID), if any."""
        person = self._by_name.get(name)
        return person.slack_user if person is not None else None
