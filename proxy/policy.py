"""The policy engine: the native policy model, its validation, and a compiled, allocation-light evaluator.

Native format (YAML or JSON; unknown keys are errors so typos never pass silently)::

    mode: enforce                  # enforce | shadow (evaluate and report; the caller enforces nothing)
    default: deny                  # allow | deny | require_approval, for calls no terminal rule decides
    hide: ["*.delete-*", "admin.*"]  # fnmatch globs on the full tool name (case-sensitive)
    approval_defaults:             # fills every field a require_approval rule leaves out
      {approvers: oncall, channel: null, timeout: 10m, quorum: 1, mode: hold, allow_self_approval: false}
    rules:
      - name: on-call approves cancels     # optional; defaults to "rules[<index>]"; names must be unique
        tools: ["runpod.cancel-job"]       # a glob or a list of globs; default "*" (every tool)
        identities: [ci-bot]               # optional: only these identity names ...
        groups: [agents]                   # ... or members of any of these groups (either list suffices)
        when:                              # optional; the rule applies only if ALL of these hold
          - {path: action, op: eq, value: stop}
        unless:                            # optional; the rule applies only if NOT all of these hold
          - {path: "$.spec.replicas", op: lte, value: 3}
        action: require_approval           # allow | deny | require_approval | rate_limit
        reason: "shown to the agent when the call is refused"
        approval: {approvers: oncall, channel: C0123, timeout: 10m, quorum: 2, mode: hold,
                   escalate_after: 5m, escalate_to: {channel: C0ESCALATE, usergroup: S0LEADS},
                   grant: {max: 1h, same: [endpoint_id], offer: [30m, 1h]}}   # approve for a while
        rate_limit: {max: 10, window: 1m, per: identity}   # per: identity | session | global
    annotated_destructive: require_approval   # require_approval | default (see below)

An approval may name a context probe: a read tool of the same upstream that signoff runs itself
before posting the request (and again at the click), showing the chosen fields to the approvers::

        approval:
          context: {tool: get-job, arguments: {job_id: "{job_id}"}, show: [status, submitted_at]}

``{name}`` in an argument is the call's argument ``name`` (a path such as ``{$.spec.id}`` reaches
nested values; a string that is exactly one placeholder keeps the value's type). ``show`` names
fields of the probe's result (paths too): its structured content, or the JSON in its text.

Semantics:

* ``hide`` wins over everything: a hidden tool's decision is ``hidden`` (rule ``(hidden)``), and the caller
  answers exactly as for an unknown tool.
* Rules are tried in order. A rule *matches* when the tool matches one of its globs, the identity is in
  scope (no ``identities``/``groups`` = everyone), every ``when`` condition holds and the ``unless``
  conditions do not all hold.
* A matching ``action: rate_limit`` rule is non-terminal: its limit is added to the decision and
  evaluation continues. The first matching terminal rule (allow / deny / require_approval) decides; its
  own ``rate_limit:`` is added too. Nothing terminal matches: ``default`` decides (rule ``(default)``).
* A ``deny`` decision never carries rate limits (a refused call consumes no quota).
* ``require_approval`` fields missing on the rule come from ``approval_defaults``.
* ``approval.grant`` lets approvers "approve for a while": each duration in ``offer`` (default ``[max]``,
  none longer than ``max``) becomes a button; later calls by the same identity to the same tool whose
  ``same`` argument paths hold the same values then run without asking until the grant ends.
* ``annotated_destructive: require_approval`` (the default): a call of a tool the upstream annotates
  ``destructiveHint: true`` that no rule names (a pattern other than ``*``) needs approval (rule
  ``(annotated destructive)``) where ``default`` would allow it. ``default`` leaves such tools to
  ``default``. Annotations are the upstream's word, so this only ever asks for more care.

Conditions: ``path`` points into the call's arguments: ``a.b[0].c``, ``$.a.b`` and PolicyLayer's
``args.a.b`` (write ``$.args.x`` for an argument literally named "args"); ``["a.b"]`` quotes a key.
Ops: ``eq neq in not_in lt lte gt gte regex contains exists``. Values are type-checked at load. At call
time a missing path or a value of the wrong type makes the condition false, never an error; the one
exception is ``exists: false``, which holds for a missing path. ``null`` counts as absent for ``exists``
(as in PolicyLayer's Intercept). Numbers compare numerically (1 == 1.0) but never equal strings or
booleans. ``regex`` uses ``re.search``, so anchor with ``^`` (``^SELECT``) to match from the start.
``contains`` is substring on strings and membership on lists.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from proxy.duration import Duration
from proxy.identity import Identity

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


def _is_number(value: Any) -> bool:
    # bool is an int subclass; `true` is never a number in a policy or in arguments
    return type(value) is int or type(value) is float


def _is_json_like(value: Any, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(_is_json_like(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_like(v, depth + 1) for k, v in value.items())
    return False


def condition_value_error(op: str, value: Any) -> str | None:
    """Say what is wrong with ``value`` for ``op``, or return None when it is acceptable."""
    if op not in OPS:
        return "must be one of " + ", ".join(OPS)
    if op in ("in", "not_in"):
        if not isinstance(value, list):
            return f'must be a list for op "{op}"'
        if not _is_json_like(value):
            return "must hold only JSON values (strings, numbers, booleans, null, lists, objects)"
    elif op in _NUMERIC_OPS:
        if not _is_number(value) or not math.isfinite(value):
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
    elif not _is_json_like(value):
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


# ---------------------------------------------------------------------------------------------------
# Native format: pydantic models


def _as_list(value: Any) -> Any:
    # `tools: "runpod.*"` is as natural as a one-element list
    return [value] if isinstance(value, str) else value


NonEmptyStr = Annotated[str, Field(min_length=1)]
GlobList = Annotated[list[NonEmptyStr], BeforeValidator(_as_list)]
NameList = Annotated[list[NonEmptyStr], BeforeValidator(_as_list), Field(min_length=1)]


def _valid_paths(paths: list[str]) -> list[str]:
    """Argument paths (`body.action`, `items[0].id`) that parse; raises naming the first that does not."""
    for path in paths:
        parse_path(path)
    return paths


Quorum = Annotated[int, Field(strict=True, ge=1)]
StrictBool = Annotated[bool, Field(strict=True)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConditionModel(_Model):
    path: str
    op: Literal["eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists"]
    value: Any = Field(default=None, validate_default=True)

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: str) -> str:
        parse_path(path)
        return path

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: Any, info: ValidationInfo) -> Any:
        op = info.data.get("op")
        if op is not None and (problem := condition_value_error(op, value)):
            raise ValueError(problem)
        return value


class EscalateToModel(_Model):
    channel: NonEmptyStr | None = None
    usergroup: NonEmptyStr | None = None


class GrantModel(_Model):
    max: Duration
    same: Annotated[list[NonEmptyStr], BeforeValidator(_as_list)]
    offer: Annotated[list[Duration], Field(min_length=1)] | None = None

    @field_validator("same")
    @classmethod
    def _check_paths(cls, paths: list[str]) -> list[str]:
        return _valid_paths(paths)

    @field_validator("offer")
    @classmethod
    def _offers_within_max(cls, offer: list[float] | None, info: ValidationInfo) -> list[float] | None:
        longest = info.data.get("max")
        if offer is not None and longest is not None:
            over = [o for o in offer if o > longest]
            if over:
                raise ValueError(f"{over[0]:g}s is longer than max ({longest:g}s)")
        return offer

    def spec(self) -> GrantSpec:
        offer = sorted(set(self.offer)) if self.offer else [self.max]
        return GrantSpec(max=self.max, same=tuple(self.same), offer=tuple(offer))


MAX_PROBE_TIMEOUT = 10.0


class ContextModel(_Model):
    tool: NonEmptyStr
    arguments: dict[str, Any] = {}
    show: NameList
    label: str | None = None
    timeout: Duration = 2.5

    @field_validator("show")
    @classmethod
    def _check_paths(cls, show: list[str]) -> list[str]:
        return _valid_paths(show)

    @field_validator("arguments")
    @classmethod
    def _check_arguments(cls, arguments: dict[str, Any]) -> dict[str, Any]:
        if not _is_json_like(arguments):
            raise ValueError("must hold only JSON values")
        for text in _strings(arguments):
            for placeholder in PLACEHOLDER.findall(text):
                parse_path(placeholder)
        return arguments

    @field_validator("timeout")
    @classmethod
    def _short(cls, timeout: float) -> float:
        if not 0 < timeout <= MAX_PROBE_TIMEOUT:
            raise ValueError(f"must be more than 0 and at most {MAX_PROBE_TIMEOUT:g}s (the request waits)")
        return timeout

    def spec(self) -> ContextProbe:
        return ContextProbe(self.tool, dict(self.arguments), tuple(self.show), self.label, self.timeout)


# `{job_id}` or `{$.spec.id}` in a probe's arguments: a value taken from the call's arguments.
PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


class ApprovalModel(_Model):
    approvers: NonEmptyStr | None = None
    channel: NonEmptyStr | None = None
    timeout: Duration | None = None
    quorum: Quorum | None = None
    mode: ApprovalMode | None = None
    allow_self_approval: StrictBool | None = None
    escalate_after: Duration | None = None
    escalate_to: EscalateToModel | None = None
    grant: GrantModel | None = None
    context: ContextModel | None = None


class ApprovalDefaultsModel(_Model):
    approvers: NonEmptyStr | None = DEFAULT_APPROVAL.approvers
    channel: NonEmptyStr | None = DEFAULT_APPROVAL.channel
    timeout: Duration = DEFAULT_APPROVAL.timeout
    quorum: Quorum = DEFAULT_APPROVAL.quorum
    mode: ApprovalMode = DEFAULT_APPROVAL.mode
    allow_self_approval: StrictBool = DEFAULT_APPROVAL.allow_self_approval
    escalate_after: Duration | None = None
    escalate_to: EscalateToModel | None = None
    grant: GrantModel | None = None


class RateLimitModel(_Model):
    max: Quorum
    window: Duration
    per: Per = "identity"


class RuleModel(_Model):
    name: NonEmptyStr | None = None
    tools: Annotated[GlobList, Field(min_length=1)] = ["*"]
    identities: NameList | None = None
    groups: NameList | None = None
    when: list[ConditionModel] = []
    unless: list[ConditionModel] = []
    action: RuleAction  # declared before approval / rate_limit: their checks read it
    reason: str | None = None
    approval: ApprovalModel | None = Field(default=None, validate_default=True)
    rate_limit: RateLimitModel | None = Field(default=None, validate_default=True)

    @field_validator("approval")
    @classmethod
    def _approval_needs_approval_action(cls, value: Any, info: ValidationInfo) -> Any:
        action = info.data.get("action")
        if value is not None and action is not None and action != "require_approval":
            raise ValueError("only allowed with action: require_approval")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_for_rate_limit_action(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.data.get("action") == "rate_limit":
            raise ValueError("required when action is rate_limit")
        return value


class PolicyModel(_Model):
    description: str | None = None
    mode: Literal["enforce", "shadow"] = "enforce"
    default: Literal["allow", "deny", "require_approval"] = "deny"
    hide: GlobList = []
    approval_defaults: ApprovalDefaultsModel = ApprovalDefaultsModel()
    annotated_destructive: Literal["require_approval", "default"] = "require_approval"
    rules: list[RuleModel] = []


_KNOWN_FIELDS = sorted(
    {
        name
        for model in (
            ConditionModel,
            ApprovalModel,
            EscalateToModel,
            GrantModel,
            ContextModel,
            RateLimitModel,
            RuleModel,
            PolicyModel,
        )
        for name in model.model_fields
    }
)


# Plainer words for pydantic's most common complaints about a config file
_MESSAGES = {
    "missing": "required",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
    "model_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def _format_pydantic_error(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(part) for part in err["loc"]) or "(root)"
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "literal_error":
        message = "must be one of " + str(ctx.get("expected", "")).replace("'", "")
    elif kind == "extra_forbidden":
        field = str(err["loc"][-1]) if err["loc"] else ""
        close = difflib.get_close_matches(field, [f for f in _KNOWN_FIELDS if f != field], n=1)
        message = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
    elif kind == "greater_than_equal":
        message = f"must be at least {ctx.get('ge')}"
    elif kind in _MESSAGES:
        message = _MESSAGES[kind]
    else:
        message = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {message}"


def _duplicate_name_errors(raw_rules: Any) -> list[str]:
    # Checked on the raw data so the error shows up alongside any schema errors in the same file.
    if not isinstance(raw_rules, list):
        return []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        name = raw.get("name") if isinstance(raw, Mapping) else None
        name = name if isinstance(name, str) and name else f"rules[{index}]"
        if name in seen:
            errors.append(f"rules.{index}.name: duplicate rule name {name!r} (also rules.{seen[name]})")
        else:
            seen[name] = index
    return errors


def _spec_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """ApprovalSpec fields from a model dump: the nested `escalate_to` becomes its dataclass."""
    if isinstance(fields.get("escalate_to"), dict):
        return {**fields, "escalate_to": EscalateTo(**fields["escalate_to"])}
    return fields


def _escalation_errors(spec: ApprovalSpec, where: str) -> list[str]:
    """An escalation that could never happen is a mistake worth saying at load."""
    if spec.escalate_after is None:
        return (
            [f"{where}.escalate_to: needs escalate_after (how long a request waits first)"]
            if spec.escalate_to
            else []
        )
    if spec.escalate_after >= spec.timeout:
        return [
            f"{where}.escalate_after: {spec.escalate_after:g}s is not shorter than the timeout "
            f"({spec.timeout:g}s), so the request would expire before it escalates"
        ]
    return []


def _approval_spec(defaults: ApprovalDefaultsModel) -> ApprovalSpec:
    fields = _spec_fields(defaults.model_dump(exclude={"grant"}))
    return ApprovalSpec(**fields, grant=defaults.grant.spec() if defaults.grant else None)


def native_spec(data: Mapping[str, Any]) -> PolicySpec:
    """Validate a native policy and normalise it; raise PolicyError listing every problem."""
    errors = _duplicate_name_errors(data.get("rules"))
    try:
        model = PolicyModel.model_validate(data)
    except ValidationError as exc:
        raise PolicyError([_format_pydantic_error(e) for e in exc.errors(include_url=False)] + errors)
    if errors:
        raise PolicyError(errors)

    defaults = _approval_spec(model.approval_defaults)
    rules = []
    for index, rule in enumerate(model.rules):
        name = rule.name or f"rules[{index}]"
        approval = None
        if rule.action == "require_approval":
            overrides: dict[str, Any] = {}
            if rule.approval is not None:
                dumped = rule.approval.model_dump(exclude_none=True, exclude={"grant", "context"})
                overrides = _spec_fields(dumped)
                if rule.approval.grant is not None:
                    overrides["grant"] = rule.approval.grant.spec()
                if rule.approval.context is not None:
                    overrides["context"] = rule.approval.context.spec()
            approval = replace(defaults, **overrides)
            errors += _escalation_errors(approval, f"rules.{index}.approval")
        limit = None
        if rule.rate_limit is not None:
            limit = RateLimit(
                max=rule.rate_limit.max,
                window=rule.rate_limit.window,
                per=rule.rate_limit.per,
                key=name,  # names are unique, so the rule's name identifies its counter
                rule=name,
                reason=rule.reason,
            )
        rules.append(
            RuleSpec(
                name=name,
                action=rule.action,
                tools=tuple(rule.tools),
                identities=frozenset(rule.identities) if rule.identities else None,
                groups=frozenset(rule.groups) if rule.groups else None,
                when=tuple(ConditionSpec(c.path, c.op, c.value) for c in rule.when),
                unless=tuple(ConditionSpec(c.path, c.op, c.value) for c in rule.unless),
                reason=rule.reason,
                approval=approval,
                rate_limit=limit,
            )
        )
    if model.default == "require_approval":
        errors += _escalation_errors(defaults, "approval_defaults")
    if errors:
        raise PolicyError(errors)
    return PolicySpec(
        source_format="signoff",
        mode=model.mode,
        default=model.default,
        default_rule="(default)",
        hide=tuple(model.hide),
        rules=tuple(rules),
        default_approval=defaults if model.default == "require_approval" else None,
        annotated_destructive=model.annotated_destructive,
        approval_defaults=defaults,
    )


# ---------------------------------------------------------------------------------------------------
# Compiling: globs to matchers, paths to tuples, conditions to small test functions

_MISSING = object()
_EMPTY: Mapping[str, Any] = {}
_HIDDEN = Decision(action="hidden", rule="(hidden)")
ANNOTATED_DESTRUCTIVE = "(annotated destructive)"
_TOOL_CACHE_LIMIT = 4096  # tool names are normally a small set; the bound stops a hostile client


def _equal(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if ta is tb and ta is str:  # the common case, answered before the bool and number checks
        return a == b
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if (ta is int or ta is float) and (tb is int or tb is float):
        return a == b
    return ta is tb and a == b


def _resolve(root: Any, path: tuple[PathSegment, ...]) -> Any:
    current = root
    for key, index in path:
        # `type(...) is dict` first: arguments decoded from JSON are dicts, and the ABC check is slower
        if type(current) is dict or isinstance(current, Mapping):
            current = current.get(key, _MISSING)
            if current is _MISSING:
                return _MISSING
        elif index is not None and isinstance(current, list | tuple):
            if index >= len(current):
                return _MISSING
            current = current[index]
        else:
            return _MISSING
    return current


def _make_test(op: str, value: Any) -> Callable[[Any], bool]:
    if op == "eq":
        return lambda actual: _equal(actual, value)
    if op == "neq":
        return lambda actual: not _equal(actual, value)
    if op in ("in", "not_in"):
        options = tuple(value)
        found = op == "in"
        return lambda actual: any(_equal(actual, option) for option in options) == found
    if op == "lt":
        return lambda actual: _is_number(actual) and actual < value
    if op == "lte":
        return lambda actual: _is_number(actual) and actual <= value
    if op == "gt":
        return lambda actual: _is_number(actual) and actual > value
    if op == "gte":
        return lambda actual: _is_number(actual) and actual >= value
    if op == "regex":
        search = re.compile(value).search
        return lambda actual: isinstance(actual, str) and search(actual) is not None
    if op == "contains":

        def contains(actual: Any) -> bool:
            if isinstance(actual, str):
                return isinstance(value, str) and value in actual
            if isinstance(actual, list):
                return any(_equal(item, value) for item in actual)
            return False

        return contains
    if op == "exists":
        return lambda actual: (actual is not None) is value
    raise ValueError(f"unknown op {op!r}")  # unreachable: ops are validated before compiling


class _Condition:
    __slots__ = ("if_missing", "path", "test")

    def __init__(self, spec: ConditionSpec) -> None:
        self.path = parse_path(spec.path)
        self.test = _make_test(spec.op, spec.value)
        # a missing argument fails every test except `exists: false`
        self.if_missing = spec.op == "exists" and spec.value is False


def _all_hold(conditions: tuple[_Condition, ...], arguments: Mapping[str, Any]) -> bool:
    try:
        for condition in conditions:
            actual = _resolve(arguments, condition.path)
            if actual is _MISSING:
                if not condition.if_missing:
                    return False
            elif not condition.test(actual):
                return False
        return True
    except Exception:
        # Arguments are untrusted (odd types, huge nesting): a condition we cannot evaluate is false.
        return False


class _ToolMatcher:
    __slots__ = ("exact", "match_all", "regex")

    def __init__(self, globs: Sequence[str]) -> None:
        self.match_all = "*" in globs
        self.exact = frozenset(g for g in globs if not any(ch in g for ch in "*?["))
        patterns = [fnmatch.translate(g) for g in globs if g not in self.exact and g != "*"]
        self.regex = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None

    def matches(self, tool: str) -> bool:
        if self.match_all or tool in self.exact:
            return True
        return self.regex is not None and self.regex.match(tool) is not None

    def names(self, tool: str) -> bool:
        """Whether a pattern other than the catch-all `*` matches `tool`."""
        return tool in self.exact or (self.regex is not None and self.regex.match(tool) is not None)


class _Rule:
    __slots__ = ("decision", "groups", "identities", "is_limit", "limit", "scoped", "tools", "unless", "when")

    def __init__(self, spec: RuleSpec) -> None:
        self.tools = _ToolMatcher(spec.tools)
        self.identities = spec.identities or frozenset()
        self.groups = spec.groups or frozenset()
        self.scoped = spec.identities is not None or spec.groups is not None
        self.when = tuple(_Condition(c) for c in spec.when)
        self.unless = tuple(_Condition(c) for c in spec.unless)
        self.is_limit = spec.action == "rate_limit"
        self.limit = spec.rate_limit
        own_limits = (spec.rate_limit,) if spec.rate_limit is not None else ()
        self.decision: Decision | None = None
        if not self.is_limit:
            # Built once here so that `decide` returns it without allocating.
            self.decision = Decision(
                action=spec.action,
                rule=spec.name,
                reason=spec.reason,
                approval=spec.approval,
                rate_limits=own_limits if spec.action != "deny" else (),
            )

    def in_scope(self, identity: Identity) -> bool:
        if getattr(identity, "name", None) in self.identities:
            return True
        groups = getattr(identity, "groups", None)
        return bool(groups) and not self.groups.isdisjoint(groups)


def _approval_doc(spec: ApprovalSpec | None) -> dict[str, Any] | None:
    """An approval's meaning for the revision; unused escalation, grant and context keys left out so
    that policies written before those existed keep their revision."""
    if spec is None:
        return None
    doc = asdict(spec)
    for key in ("escalate_after", "escalate_to", "grant", "context"):
        if doc[key] is None:
            del doc[key]
    return doc


def _canonical(spec: PolicySpec) -> str:
    def conditions(items: tuple[ConditionSpec, ...]) -> list[Any]:
        return [[c.path, c.op, c.value] for c in items]

    rules = [
        {
            "name": r.name,
            "action": r.action,
            "tools": sorted(set(r.tools)),
            "identities": sorted(r.identities) if r.identities is not None else None,
            "groups": sorted(r.groups) if r.groups is not None else None,
            "when": conditions(r.when),
            "unless": conditions(r.unless),
            "reason": r.reason,
            "approval": _approval_doc(r.approval),
            "rate_limit": asdict(r.rate_limit) if r.rate_limit else None,
        }
        for r in spec.rules
    ]
    document = {
        "mode": spec.mode,
        "default": spec.default,
        "default_rule": spec.default_rule,
        "default_reason": spec.default_reason,
        "default_approval": _approval_doc(spec.default_approval),
        "hide": sorted(set(spec.hide)),
        "rules": rules,
    }
    # Only when not its format's default, so policies written before the setting keep their revision.
    if spec.annotated_destructive != ("require_approval" if spec.source_format == "signoff" else "default"):
        document["annotated_destructive"] = spec.annotated_destructive
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=repr)


class CompiledPolicy:
    """A policy ready to evaluate calls; immutable, so a reload simply swaps the object."""

    def __init__(self, spec: PolicySpec) -> None:
        self.spec = spec
        self.mode = spec.mode
        self.source_format = spec.source_format
        # Hash of the normalised meaning: formatting, key order and unused defaults do not change it.
        self.revision = hashlib.sha256(_canonical(spec).encode()).hexdigest()[:12]
        self._rules = tuple(_Rule(rule) for rule in spec.rules)
        self._hide = _ToolMatcher(spec.hide) if spec.hide else None
        self._default = Decision(
            action=spec.default,
            rule=spec.default_rule,
            reason=spec.default_reason,
            approval=spec.default_approval,
        )
        self._by_tool: dict[str, tuple[bool, tuple[_Rule, ...]]] = {}

    def _entry(self, tool: str) -> tuple[bool, tuple[_Rule, ...]]:
        entry = self._by_tool.get(tool)
        if entry is None:
            hidden = self._hide is not None and self._hide.matches(tool)
            entry = (hidden, () if hidden else tuple(r for r in self._rules if r.tools.matches(tool)))
            if len(self._by_tool) >= _TOOL_CACHE_LIMIT:
                self._by_tool.clear()
            self._by_tool[tool] = entry
        return entry

    def is_hidden(self, tool: str) -> bool:
        """True when ``hide`` removes this tool from the agent's view."""
        return self._entry(tool if type(tool) is str else str(tool))[0]

    def decide(self, identity: Identity, tool: str, arguments: Mapping[str, Any] | None) -> Decision:
        """Evaluate one call; never raises, whatever the arguments hold."""
        hidden, rules = self._entry(tool if type(tool) is str else str(tool))
        if hidden:
            return _HIDDEN
        args = arguments if isinstance(arguments, Mapping) else _EMPTY
        limits: list[RateLimit] | None = None
        decision = self._default
        for rule in rules:
            if rule.scoped and not rule.in_scope(identity):
                continue
            if rule.when and not _all_hold(rule.when, args):
                continue
            if rule.unless and _all_hold(rule.unless, args):
                continue
            if rule.is_limit:
                if limits is None:
                    limits = []
                limits.append(rule.limit)
                continue
            decision = rule.decision
            break
        if limits is None or decision.action == "deny":
            return decision
        return replace(decision, rate_limits=(*limits, *decision.rate_limits))

    def names(self, tool: str) -> bool:
        """Whether some rule names ``tool`` (by a pattern other than ``*``), deciding it or not."""
        return any(
            rule.tools.names(tool) for rule in self._entry(tool if type(tool) is str else str(tool))[1]
        )

    def for_annotations(self, decision: Decision, annotations: Mapping[str, Any] | None) -> Decision:
        """The decision once the tool's MCP annotations are known: see ``annotated_destructive``.

        For a tool no rule names (`names`): the caller checks that, as it knows the tool's names.
        """
        if (
            self.spec.annotated_destructive != "require_approval"
            or decision.rule != self.spec.default_rule
            or decision.action != "allow"
            or not isinstance(annotations, Mapping)
            or annotations.get("destructiveHint") is not True
            or annotations.get("readOnlyHint") is True  # the hint means nothing on a read-only tool
        ):
            return decision
        return Decision(
            action="require_approval",
            rule=ANNOTATED_DESTRUCTIVE,
            reason="The upstream annotates this tool as destructive and no rule of the policy names it.",
            approval=self.approval_defaults(),
            rate_limits=decision.rate_limits,
        )

    def approval_defaults(self) -> ApprovalSpec:
        """The approval a decision the gateway makes (not a rule) asks for: the policy's defaults."""
        return self.spec.approval_defaults or DEFAULT_APPROVAL

    def patterns(self) -> list[tuple[str, str]]:
        """(where, glob) for every tool pattern the policy names, for `signoff check` to test."""
        found = [("hide", glob) for glob in self.spec.hide]
        for i, rule in enumerate(self.spec.rules):
            where = f"rule {rule.name!r}" if rule.name else f"rules[{i}]"
            found += [(where, glob) for glob in rule.tools]
        return found

    def approver_groups(self) -> set[str]:
        """Approver group names the policy refers to, so the config can check they exist."""
        specs = [rule.approval for rule in self.spec.rules] + [self.spec.default_approval]
        if self.spec.annotated_destructive == "require_approval":
            specs.append(self.spec.approval_defaults)
        return {spec.approvers for spec in specs if spec is not None and spec.approvers}


def matches_any(glob: str, names: Iterable[str]) -> bool:
    """Whether a tool pattern of a policy matches at least one of `names`."""
    matcher = _ToolMatcher([glob])
    return any(matcher.matches(name) for name in names)


def compile_spec(spec: PolicySpec) -> CompiledPolicy:
    """Compile an already-normalised policy; raise PolicyError if a condition cannot compile."""
    try:
        return CompiledPolicy(spec)
    except (ValueError, re.error) as exc:
        raise PolicyError([f"(policy): {exc}"])


def detect_format(data: Mapping[str, Any]) -> str:
    """Tell the native format from PolicyLayer's hosted JSON and Intercept YAML by their keys."""
    if "version" not in data:
        return "signoff"
    tools = data.get("tools")
    entries = [e for e in tools.values() if isinstance(e, Mapping)] if isinstance(tools, Mapping) else []
    hosted_keys = ("require", "deny_if", "limits")
    has_rules = any("rules" in e for e in entries)
    hosted = "all_tools" in data or any(k in e for e in entries for k in hosted_keys)
    if has_rules and hosted:
        raise PolicyError(
            ["tools: mixes Intercept fields (rules) with PolicyLayer JSON fields (require, deny_if, limits)"]
        )
    if has_rules or "description" in data or "approvals" in data:
        return "intercept-yaml"
    if hosted:
        return "policylayer-json"
    if any(k not in hosted_keys for e in entries for k in e):
        return "intercept-yaml"  # most likely a misspelt `rules`; Intercept's checks will name it
    if "default" in data:
        return "policylayer-json"  # with `default` set and only `{}` tools, both formats mean the same
    # Hosted JSON requires `default`; Intercept reads its absence as "allow". Refuse rather than guess.
    raise PolicyError(
        [
            'default: required, "allow" or "deny" (without it this policy could be PolicyLayer JSON, '
            "where it is required, or Intercept YAML, where it means allow)"
        ]
    )


def compile_policy(data: Mapping[str, Any]) -> CompiledPolicy:
    """Validate and compile a policy in any supported format; raise PolicyError listing every problem."""
    if not isinstance(data, Mapping):
        raise PolicyError([f"(root): a policy must be a mapping, not {type(data).__name__}"])
    source_format = detect_format(data)
    if source_format == "signoff":
        return compile_spec(native_spec(data))
    # Imported here because proxy.policylayer builds on this module's specs and checks.
    from proxy.policylayer import to_spec

    return compile_spec(to_spec(data, source_format))
