"""signoff's own policy format: its pydantic models, their validation, and the `PolicySpec` they make.

How a policy is evaluated (what the rules mean) is `proxy.policy`'s docstring.

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
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import replace
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
from proxy.policy_spec import (
    DEFAULT_APPROVAL,
    PLACEHOLDER,
    ApprovalMode,
    ApprovalSpec,
    ConditionSpec,
    ContextProbe,
    EscalateTo,
    GrantSpec,
    Per,
    PolicyError,
    PolicySpec,
    RateLimit,
    RuleAction,
    RuleSpec,
    condition_value_error,
    is_json_like,
    parse_path,
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
        if not is_json_like(arguments):
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
