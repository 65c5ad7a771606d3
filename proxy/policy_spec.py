"""What a policy says, whatever format it was written in, and what evaluating it decides.

Every format (signoff's own, `proxy.policy_native`; PolicyLayer's, `proxy.policylayer`) is turned
into a `PolicySpec`; `proxy.policy` compiles that and returns `Decision`s. Plain frozen dataclasses,
and the value and path checks the formats share.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["allow", "deny", "require_approval", "hidden"]
RuleAction = Literal["allow", "deny", "require_approval", "rate_limit"]
Per = Literal["identity", "session", "global"]
ApprovalMode = Literal["hold", "pending"]

OPS = ("eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists")
_NUMERIC_OPS = frozenset({"lt", "lte", "gt", "gte"})

# ---------------------------------------------------------------------------------------------------
# What the evaluator returns (the contract other modules use)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A sliding-window limit a decision carries; ``key`` names the counter stably across reloads."""

    max: int
    window: float
    per: Per
    key: str
    rule: str = ""  # the rule that set the limit, for the refusal message and audit
    reason: str | None = None  # the policy's text for an over-limit refusal, if it has one


@dataclass(frozen=True, slots=True)
class EscalateTo:
    """Where an undecided request is re-posted when it escalates (besides the PagerDuty incident)."""

    channel: str | None = None
    usergroup: str | None = None


@dataclass(frozen=True, slots=True)
class GrantSpec:
    """Approving for a while: the longest grant, the durations offered, the arguments that must match."""

    max: float  # seconds
    same: tuple[str, ...]  # argument paths whose values a later call must repeat exactly
    offer: tuple[float, ...]  # durations offered to approvers (seconds, each <= max), shortest first


# `{job_id}` or `{$.spec.id}` in a probe's arguments: a value taken from the call's arguments.
PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True, slots=True)
class ContextProbe:
    """A read tool signoff runs itself to show approvers the live state of the call's target."""

    tool: str  # the upstream's own name of a read tool on the call's upstream
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)  # `{name}` placeholders
    show: tuple[str, ...] = ()  # paths into the result
    label: str | None = None  # what the state is of ("{job_id}"); default: the filled arguments
    timeout: float = 2.5


@dataclass(frozen=True, slots=True)
class ApprovalSpec:
    """Who must approve, where, how long the call may wait, and when nobody deciding pages someone."""

    approvers: str | None
    channel: str | None
    timeout: float
    quorum: int
    mode: ApprovalMode
    allow_self_approval: bool
    escalate_after: float | None = None
    escalate_to: EscalateTo | None = None
    grant: GrantSpec | None = None  # None: approvers can only approve the one call
    context: ContextProbe | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one call: what to do, the rule that decided, and any limits to charge."""

    action: Action
    rule: str
    reason: str | None = None
    approval: ApprovalSpec | None = None
    rate_limits: tuple[RateLimit, ...] = ()


DEFAULT_APPROVAL = ApprovalSpec(
    approvers=None, channel=None, timeout=600.0, quorum=1, mode="hold", allow_self_approval=False
)


class PolicyError(ValueError):
    """An invalid policy; ``errors`` lists every problem as ``path.to.field: what is wrong``."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        count = len(self.errors)
        super().__init__(f"invalid policy ({count} error{'s' if count != 1 else ''}):\n" + "\n".join(errors))


# ---------------------------------------------------------------------------------------------------
# Conditions: value checks at load and path parsing, shared with the PolicyLayer converters


def is_number(value: Any) -> bool:
    # bool is an int subclass; `true` is never a number in a policy or in arguments
    return type(value) is int or type(value) is float


def is_json_like(value: Any, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(is_json_like(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_json_like(v, depth + 1) for k, v in value.items())
    return False


def condition_value_error(op: str, value: Any) -> str | None:
    """Say what is wrong with ``value`` for ``op``, or return None when it is acceptable."""
    if op not in OPS:
        return "must be one of " + ", ".join(OPS)
    if op in ("in", "not_in"):
        if not isinstance(value, list):
            return f'must be a list for op "{op}"'
        if not is_json_like(value):
            return "must hold only JSON values (strings, numbers, booleans, null, lists, objects)"
    elif op in _NUMERIC_OPS:
        if not is_number(value) or not math.isfinite(value):
            return f'must be a number for op "{op}"'
    elif op == "regex":
        if not isinstance(value, str):
            return 'must be a string (a regular expression) for op "regex"'
        try:
            re.compile(value)
        except re.error as exc:
            return f"invalid regular expression {value!r}: {exc}"
    elif op == "exists":
        if not isinstance(value, bool):
            return 'must be true or false for op "exists"'
    elif op == "contains" and value is None:
        return 'must be a string or a JSON value for op "contains"'
    elif not is_json_like(value):
        return "must be a JSON value (string, number, boolean, null, list or object)"
    return None


# A path segment is (key, index): the key for objects, the index (or None) for arrays.
PathSegment = tuple[str, int | None]
_PATH_TOKEN = re.compile(r"""\.?([^.\[\]"']+)|\[(\d+)\]|\["([^"]*)"\]|\['([^']*)'\]""")


def parse_path(path: str) -> tuple[PathSegment, ...]:
    """Parse ``a.b[0].c`` / ``$.a.b`` / ``args.a.b`` into segments; raise ValueError if malformed."""
    if not isinstance(path, str):
        raise ValueError(f"invalid path {path!r}: must be a string")
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    elif text.startswith("args."):
        text = text[5:]
    segments: list[PathSegment] = []
    pos = 0
    while pos < len(text):
        match = _PATH_TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"invalid path {path!r}: unexpected {text[pos:]!r}")
        name, index, dq, sq = match.groups()
        if name is not None:
            segments.append((name, int(name) if name.isdigit() else None))
        elif index is not None:
            segments.append((index, int(index)))
        else:
            segments.append((dq if dq is not None else sq, None))
        pos = match.end()
    if not segments:
        raise ValueError(f"invalid path {path!r}: names no argument")
    return tuple(segments)


def glob_escape(name: str) -> str:
    """Turn an exact tool name into a glob that matches only that name."""
    return re.sub(r"([*?\[])", r"[\1]", name)


# ---------------------------------------------------------------------------------------------------
# The normalised policy every format is converted to before compiling


@dataclass(frozen=True, slots=True)
class ConditionSpec:
    path: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class RuleSpec:
    name: str
    action: RuleAction
    tools: tuple[str, ...] = ("*",)
    identities: frozenset[str] | None = None
    groups: frozenset[str] | None = None
    when: tuple[ConditionSpec, ...] = ()
    unless: tuple[ConditionSpec, ...] = ()
    reason: str | None = None
    approval: ApprovalSpec | None = None
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class PolicySpec:
    source_format: str
    mode: Literal["enforce", "shadow"]
    default: Literal["allow", "deny", "require_approval"]
    default_rule: str
    hide: tuple[str, ...]
    rules: tuple[RuleSpec, ...]
    default_reason: str | None = None
    default_approval: ApprovalSpec | None = None
    # PolicyLayer's formats keep their own meaning ("default"); the native format defaults to asking.
    annotated_destructive: Literal["require_approval", "default"] = "default"
    approval_defaults: ApprovalSpec | None = (
        None  # what gateway-made approvals ask for (None: DEFAULT_APPROVAL)
    )
