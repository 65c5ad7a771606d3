"""Approving for a while: what a grant covers, the durations on offer, and the grant a decision makes.

A rule's `approval.grant` offers durations. Approving a request "for 30 min" approves that call and
creates a grant: later calls by the same identity to the same tool, under the same rule, whose
`same` argument paths hold the same values (compared by hash), run without asking until it ends.
Pure functions; the store keeps the rows and the approval stage looks them up.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from proxy.duration import parse_duration
from proxy.policy_spec import GrantSpec, parse_path
from proxy.records import Approval, Grant
from proxy.redact import display_mask


@dataclass(frozen=True, slots=True)
class Scope:
    """What of one call a grant is about: the values at the rule's `same` paths, and their hash."""

    same: tuple[str, ...]
    values: dict[str, Any]  # exact; a path the call does not have is left out
    hash: str


_MISSING = object()


def value_at(arguments: Any, path: str) -> Any:
    """The value at a policy path (`a.b[0]`, `$.a`), or `_MISSING`."""
    current = arguments
    for key, index in parse_path(path):
        if isinstance(current, Mapping):
            if key not in current:
                return _MISSING
            current = current[key]
        elif index is not None and isinstance(current, list) and index < len(current):
            current = current[index]
        else:
            return _MISSING
    return current


def scope_of(arguments: Mapping[str, Any], same: Sequence[str]) -> Scope:
    """The scope a call has under a rule's `same` paths (the paths are part of the hash)."""
    values = {p: v for p in same if (v := value_at(arguments, p)) is not _MISSING}
    document = orjson.dumps({"same": list(same), "values": values}, option=orjson.OPT_SORT_KEYS)
    return Scope(tuple(same), values, hashlib.sha256(document).hexdigest())


def offer_of(spec: GrantSpec, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """What a request stores about the grants it offers: durations, and the scope (values masked)."""
    scope = scope_of(arguments, spec.same)
    return {
        "max": spec.max,
        "offer": [o for o in spec.offer if o <= spec.max],
        "same": list(spec.same),
        "values": display_mask(scope.values),
        "hash": scope.hash,
    }


def offered(approval: Approval) -> list[float]:
    """The durations (seconds) a request may be approved for; empty when its rule offers no grants."""
    offer = approval.grant_offer or {}
    return [float(o) for o in offer.get("offer") or []]


def choose_duration(approval: Approval, wanted: str | float) -> float | str:
    """The offered duration `wanted` names ("30m", 1800), or why it cannot be given."""
    durations = offered(approval)
    if not durations:
        return "this request's rule does not offer approving for a while"
    try:
        seconds = parse_duration(wanted)
    except ValueError as e:
        return str(e)
    if seconds not in durations:
        return "choose one of: " + ", ".join(spoken(d) for d in durations)
    return seconds


def quorum_duration(durations: Sequence[float | None]) -> float | None:
    """With a quorum, a grant only if every vote chose a duration; the shortest wins."""
    if not durations or any(d is None for d in durations):
        return None
    return min(d for d in durations if d is not None)


def new_grant(
    approval: Approval, created_by: str, seconds: float, now: datetime, edited: Mapping[str, Any] | None
) -> Grant:
    """The grant an approval for `seconds` creates. Approved with edited arguments, it covers the
    values the call runs with, not the ones the agent first sent."""
    offer = approval.grant_offer or {}
    same = list(offer.get("same") or [])
    if edited is not None:
        scope = scope_of(edited, same)
        values, values_hash = display_mask(scope.values), scope.hash
    else:
        values, values_hash = offer.get("values") or {}, str(offer.get("hash") or "")
    return Grant(
        id="gr_" + secrets.token_hex(8),
        identity=approval.identity,
        upstream=approval.upstream,
        tool=approval.tool,
        rule=approval.rule,
        same=same,
        values=values,
        values_hash=values_hash,
        created_by=created_by,
        created_at=now,
        expires_at=now + timedelta(seconds=seconds),
        approval_id=approval.id,
    )


def duration(grant: Grant) -> float:
    """How long a grant was given for, in seconds."""
    return (grant.expires_at - grant.created_at).total_seconds()


def grant_state(grant: Grant, now: datetime) -> str:
    """live / revoked / expired."""
    if grant.revoked_at is not None:
        return "revoked"
    return "live" if grant.expires_at > now else "expired"


def spoken(seconds: float) -> str:
    """A duration as a button says it: "30 s", "30 min", "1 h", "1 h 30 min", "2 days"."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes} min" + (f" {rest} s" if rest else "")
    if seconds < 86400 or seconds % 86400:
        hours, rest = divmod(seconds // 60, 60)
        return f"{hours} h" + (f" {rest} min" if rest else "")
    days = seconds // 86400
    return f"{days} day" + ("" if days == 1 else "s")


def covers(grant: Grant) -> str:
    """What a grant lets run, in words: `identity` calling `tool` with name = "db1"."""
    values = grant.values or {}
    if not grant.same:
        return f"every call of {grant.tool} by {grant.identity}"
    parts = [
        f"{path} = {orjson.dumps(values[path]).decode()}" if path in values else f"{path} absent"
        for path in grant.same
    ]
    return f"{grant.tool} by {grant.identity} with " + ", ".join(parts)
