"""PolicyLayer's two policy formats, converted to signoff's normalised policy so both load unchanged.

Both formats name tools exactly (no globs); the caller passes whichever name the policy should see.
Each is turned into an ordered list of :class:`proxy.policy_spec.RuleSpec` that the one evaluator
(`proxy.policy`) runs: first every check that can deny (in the file's order), then rate limits
(non-terminal), then approvals, then one ``allow`` rule per listed tool; the default decides the
rest. Putting the denials first keeps PolicyLayer's meaning, "every rule must pass", inside signoff's
first-match evaluation.

Hosted gateway ``policy.json`` (``source_format = "policylayer-json"``):

* ``version: "1"`` and ``default: allow|deny`` are required; an unlisted tool gets the default
  (rule ``(default deny)`` / ``(default allow)``); ``tools[name]: {}`` allows the tool (rule
  ``/tools/<name>``).
* ``require: [predicate]``: a predicate that does not hold denies (``/tools/<name>/require/<path>-<op>``).
* ``deny_if: [predicate]``: a predicate that holds denies (``/tools/<name>/deny_if/<path>-<op>``).
  A predicate is ``{"path": "args.amount", "op": "gt", "value": 10000}`` or, equivalently,
  ``{"arg": "amount", "op": "gt", "value": 10000}``, with Intercept's eleven operators.
* ``limits`` and ``all_tools.limits``: ``{"counter", "window", "max", "scope"}``; ``window`` is
  ``second|minute|hour|day`` or a number of seconds (or a duration such as ``"90s"``); ``scope`` is
  ``grant`` (per identity, the default), ``session`` or ``global``. Rules are named
  ``/tools/<name>/limits/<counter>`` and ``/all_tools/limits/<counter>`` (the index when unnamed).

Intercept YAML (``source_format = "intercept-yaml"``):

* ``default: deny`` denies an unlisted tool before any rule; ``"*"`` rules never rescue it.
* Every rule of a tool must pass, the tool's own before the ``"*"`` ones; the first failing rule's
  ``on_deny`` is the reason. ``action: deny`` always denies; ``evaluate`` denies unless all its
  ``args.*`` conditions hold; ``require_approval`` asks for approval when its conditions hold (all,
  if none), with ``approval_timeout`` as the approval's timeout.
* ``rate_limit: N/minute|hour|day`` and a ``state`` counter capped by an ``lt``/``lte`` condition on the
  rule's own counter become global sliding-window limits (Intercept's windows are calendar-aligned
  fixed windows; a sliding window is never more permissive). Spend caps (``increment_from``) and
  conditions reading another rule's counter are refused with an error naming the feature.
* The ``approvals`` block (webhook settings) is accepted and ignored: signoff notifies by itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from proxy.duration import parse_duration
from proxy.policy_spec import (
    DEFAULT_APPROVAL,
    OPS,
    ConditionSpec,
    PolicyError,
    PolicySpec,
    RateLimit,
    RuleSpec,
    condition_value_error,
    glob_escape,
    parse_path,
)

_WINDOWS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_INTERCEPT_WINDOWS = ("minute", "hour", "day")
_SCOPES = {"grant": "identity", "identity": "identity", "session": "session", "global": "global"}

_INTERCEPT_TOP = ("version", "description", "default", "hide", "tools", "approvals")
_INTERCEPT_RULE = ("name", "action", "conditions", "on_deny", "rate_limit", "state", "approval_timeout")
_INTERCEPT_STATE = ("counter", "window", "increment", "increment_from")
_HOSTED_TOP = ("version", "default", "hide", "all_tools", "tools")
_HOSTED_TOOL = ("require", "deny_if", "limits")
_HOSTED_LIMIT = ("counter", "window", "max", "scope")


def to_spec(data: Mapping[str, Any], source_format: str) -> PolicySpec:
    """Convert a PolicyLayer policy of the given format; raise PolicyError listing every problem."""
    if source_format == "intercept-yaml":
        return intercept_spec(data)
    if source_format == "policylayer-json":
        return hosted_spec(data)
    raise ValueError(f"unknown PolicyLayer format {source_format!r}")


# ---------------------------------------------------------------------------------------------------
# Shared pieces


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _unknown_keys(raw: Mapping[str, Any], allowed: Iterable[str], path: str, errors: list[str]) -> None:
    allowed = tuple(allowed)
    for key in raw:
        if key not in allowed:
            errors.append(f"{_join(path, key)}: unknown field (expected one of {', '.join(allowed)})")


def _check_version(data: Mapping[str, Any], errors: list[str]) -> None:
    version = data.get("version")
    # YAML reads an unquoted `version: 1` as an integer; Intercept (Go) accepts it, so do we.
    if isinstance(version, bool) or str(version) != "1":
        errors.append(f'version: must be "1", got {version!r}')


def _hide(raw: Any, errors: list[str]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if raw == "*":
        return ("*",)
    if not isinstance(raw, list):
        errors.append('hide: must be a list of tool names, or "*" to hide every tool')
        return ()
    globs: list[str] = []
    seen: set[str] = set()
    for index, name in enumerate(raw):
        if not isinstance(name, str) or not name.strip():
            errors.append(f"hide.{index}: entry must be a non-empty tool name")
        elif name in seen:
            errors.append(f"hide.{index}: duplicate entry {name!r}")
        else:
            seen.add(name)
            globs.append("*" if name == "*" else glob_escape(name))
    return tuple(globs)


def _check_op_value(raw: Mapping[str, Any], where: str, errors: list[str]) -> bool:
    op = raw.get("op")
    if op not in OPS:
        errors.append(f"{where}.op: unknown operator {op!r} (must be one of {', '.join(OPS)})")
        return False
    problem = condition_value_error(op, raw.get("value"))
    if problem:
        errors.append(f"{where}.value: {problem}")
        return False
    return True


def _describe(condition: ConditionSpec) -> str:
    return f"{condition.path} {condition.op} {json.dumps(condition.value)}"


def _pointer_escape(segment: str) -> str:
    # RFC 6901: "~" and "/" inside a JSON Pointer segment
    return segment.replace("~", "~0").replace("/", "~1")


# ---------------------------------------------------------------------------------------------------
# Intercept YAML


def intercept_spec(data: Mapping[str, Any]) -> PolicySpec:
    """Convert an Intercept YAML policy (see the module docstring for the mapping)."""
    errors: list[str] = []
    _unknown_keys(data, _INTERCEPT_TOP, "", errors)
    _check_version(data, errors)
    default = data.get("default", "allow")
    if default not in ("allow", "deny"):
        errors.append(f'default: must be "allow" or "deny", got {default!r}')
        default = "deny"
    hide = _hide(data.get("hide"), errors)
    tools = data.get("tools")
    if not isinstance(tools, Mapping):
        errors.append(
            "tools: required, a map from tool name to {rules: [...]}"
            if tools is None
            else "tools: must be a map from tool name to {rules: [...]}"
        )
        tools = {}

    listed = [name for name in tools if name != "*" and isinstance(name, str)]
    # Under default deny the "*" rules only ever see listed tools: unlisted ones are denied first.
    wildcard_scope = ("*",) if default == "allow" else tuple(glob_escape(name) for name in listed)
    own: dict[str, list[RuleSpec]] = {"deny": [], "limit": [], "approval": []}
    wild: dict[str, list[RuleSpec]] = {"deny": [], "limit": [], "approval": []}
    for tool_name, entry in tools.items():
        if not isinstance(tool_name, str) or not tool_name:
            errors.append(f"tools: tool names must be non-empty strings, got {tool_name!r}")
            continue
        is_wild = tool_name == "*"
        scope = wildcard_scope if is_wild else (glob_escape(tool_name),)
        counter_scope = "_global" if is_wild else tool_name
        for category, rule in _intercept_tool(entry, f"tools.{tool_name}", scope, counter_scope, errors):
            (wild if is_wild else own)[category].append(rule)
    if errors:
        raise PolicyError(errors)

    allows = [RuleSpec(name=f"tools.{name}", action="allow", tools=(glob_escape(name),)) for name in listed]
    rules = (
        own["deny"]
        + wild["deny"]
        + own["limit"]
        + wild["limit"]
        + own["approval"]
        + wild["approval"]
        + allows
    )
    return PolicySpec(
        source_format="intercept-yaml",
        mode="enforce",
        default=default,
        default_rule=f"(default {default})",
        hide=hide,
        rules=tuple(rules),
    )


def _intercept_tool(
    entry: Any, where: str, scope: tuple[str, ...], counter_scope: str, errors: list[str]
) -> list[tuple[str, RuleSpec]]:
    if entry is None:  # `list-pods:` with nothing under it, like `{}`: listed, no rules
        return []
    if not isinstance(entry, Mapping):
        errors.append(f"{where}: must be a map with a rules list")
        return []
    _unknown_keys(entry, ("rules",), where, errors)
    rules = entry.get("rules")
    if rules is None:
        return []
    if not isinstance(rules, list):
        errors.append(f"{where}.rules: must be a list")
        return []
    _check_duplicate_counters(rules, where, errors)
    converted: list[tuple[str, RuleSpec]] = []
    for index, raw in enumerate(rules):
        converted += _intercept_rule(raw, f"{where}.rules.{index}", scope, counter_scope, errors)
    return converted


def _check_duplicate_counters(rules: list[Any], where: str, errors: list[str]) -> None:
    seen: dict[str, int] = {}
    for index, raw in enumerate(rules):
        if not isinstance(raw, Mapping):
            continue
        counter = None
        state = raw.get("state")
        if isinstance(state, Mapping) and isinstance(state.get("counter"), str):
            counter = state["counter"]
        shorthand = raw.get("rate_limit")
        if isinstance(shorthand, str) and "/" in shorthand:  # the shorthand's counter is _rate_<window>
            counter = "_rate_" + shorthand.split("/", 1)[1].strip()
        if not counter:
            continue
        if counter in seen:
            errors.append(
                f"{where}.rules.{index}: duplicate state counter {counter!r} "
                f"(also used by rules.{seen[counter]})"
            )
        else:
            seen[counter] = index


def _intercept_rule(
    raw: Any, where: str, scope: tuple[str, ...], counter_scope: str, errors: list[str]
) -> list[tuple[str, RuleSpec]]:
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: must be a map")
        return []
    _unknown_keys(raw, _INTERCEPT_RULE, where, errors)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        errors.append(f"{where}.name: rule must have a name")
        name = where
    action = raw.get("action") or "evaluate"
    if action not in ("evaluate", "deny", "require_approval"):
        errors.append(f'{where}.action: must be "evaluate", "deny" or "require_approval", got {action!r}')
        return []
    on_deny = raw.get("on_deny")
    if on_deny is not None and not isinstance(on_deny, str):
        errors.append(f"{where}.on_deny: must be a string")
        on_deny = None

    conditions = raw.get("conditions") or []
    if not isinstance(conditions, list):
        errors.append(f"{where}.conditions: must be a list")
        conditions = []
    args_conditions: list[ConditionSpec] = []
    state_conditions: list[tuple[str, ConditionSpec]] = []
    for index, condition in enumerate(conditions):
        cwhere = f"{where}.conditions.{index}"
        parsed = _intercept_condition(condition, cwhere, errors)
        if parsed is not None and parsed.path.startswith("state."):
            state_conditions.append((cwhere, parsed))
        elif parsed is not None:
            args_conditions.append(parsed)

    shorthand, state = raw.get("rate_limit"), raw.get("state")
    if raw.get("approval_timeout") is not None and action != "require_approval":
        errors.append(f'{where}.approval_timeout: only valid with action "require_approval"')

    if shorthand is not None:
        if action != "evaluate":
            errors.append(f'{where}.rate_limit: cannot be used with action "{action}"')
        if conditions or state is not None:
            errors.append(f"{where}.rate_limit: cannot be combined with conditions or state")
        parsed_limit = _parse_rate_limit(shorthand, where, errors)
        if parsed_limit is None:
            return []
        count, window = parsed_limit
        reason = on_deny or f"Rate limit of {count} per {window} reached. Try again later."
        limit = RateLimit(
            max=count,
            window=_WINDOWS[window],
            per="global",  # Intercept's counters belong to the proxy, not to a caller
            key=f"intercept:{counter_scope}._rate_{window}",
            rule=name,
            reason=reason,
        )
        return [
            ("limit", RuleSpec(name=name, action="rate_limit", tools=scope, reason=reason, rate_limit=limit))
        ]

    if action == "deny":
        if conditions:
            errors.append(f"{where}.conditions: deny rules must not have conditions")
        return [("deny", RuleSpec(name=name, action="deny", tools=scope, reason=on_deny))]

    if action == "require_approval":
        if state is not None or state_conditions:
            errors.append(
                f"{where}.state: state counters on require_approval rules are not supported by signoff"
            )
        approval = DEFAULT_APPROVAL
        if raw.get("approval_timeout") is not None:
            try:
                timeout = parse_duration(raw["approval_timeout"])
                if timeout <= 0:
                    raise ValueError(
                        f"invalid duration {raw['approval_timeout']!r}: must be greater than zero"
                    )
                approval = replace(DEFAULT_APPROVAL, timeout=timeout)
            except ValueError as exc:
                errors.append(f"{where}.approval_timeout: {exc}")
        rule = RuleSpec(
            name=name,
            action="require_approval",
            tools=scope,
            when=tuple(args_conditions),
            reason=on_deny,
            approval=approval,
        )
        return [("approval", rule)]

    # action: evaluate
    if not conditions:
        errors.append(f"{where}.conditions: evaluate rules must have at least one condition")
        return []
    converted: list[tuple[str, RuleSpec]] = []
    if args_conditions:
        converted.append(
            (
                "deny",
                RuleSpec(
                    name=name, action="deny", tools=scope, unless=tuple(args_conditions), reason=on_deny
                ),
            )
        )
    limit = _state_limit(state, state_conditions, where, name, counter_scope, on_deny, errors)
    if limit is not None:
        converted.append(
            (
                "limit",
                RuleSpec(name=name, action="rate_limit", tools=scope, reason=limit.reason, rate_limit=limit),
            )
        )
    return converted


def _intercept_condition(raw: Any, where: str, errors: list[str]) -> ConditionSpec | None:
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: must be a map with path, op and value")
        return None
    _unknown_keys(raw, ("path", "op", "value"), where, errors)
    path = raw.get("path")
    ok = True
    if not isinstance(path, str) or not path.startswith(("args.", "state.")):
        errors.append(f'{where}.path: must start with "args." or "state.", got {path!r}')
        ok = False
    elif path.startswith("args."):
        try:
            parse_path(path)
        except ValueError as exc:
            errors.append(f"{where}.path: {exc}")
            ok = False
    ok = _check_op_value(raw, where, errors) and ok
    return ConditionSpec(path, raw["op"], raw.get("value")) if ok else None


def _parse_rate_limit(text: Any, where: str, errors: list[str]) -> tuple[int, str] | None:
    if not isinstance(text, str) or text.count("/") != 1:
        errors.append(f'{where}.rate_limit: must be "N/window" (e.g. "5/hour"), got {text!r}')
        return None
    count_text, window = (part.strip() for part in text.split("/"))
    ok = True
    if not count_text.isdigit() or int(count_text) <= 0:
        errors.append(f"{where}.rate_limit: count must be a positive integer, got {count_text!r}")
        ok = False
    if window not in _INTERCEPT_WINDOWS:
        errors.append(f'{where}.rate_limit: window must be "minute", "hour" or "day", got {window!r}')
        ok = False
    return (int(count_text), window) if ok else None


def _state_limit(
    state: Any,
    state_conditions: list[tuple[str, ConditionSpec]],
    where: str,
    name: str,
    counter_scope: str,
    on_deny: str | None,
    errors: list[str],
) -> RateLimit | None:
    """A rule's own counter capped by an lt/lte condition is a count limit; other uses are refused."""
    counter, window, increment = None, None, 1
    if state is not None:
        swhere = f"{where}.state"
        if not isinstance(state, Mapping):
            errors.append(f"{swhere}: must be a map with counter and window")
            return None
        _unknown_keys(state, _INTERCEPT_STATE, swhere, errors)
        counter, window = state.get("counter"), state.get("window")
        if not isinstance(counter, str) or not counter:
            errors.append(f"{swhere}.counter: must not be empty")
        if window not in _INTERCEPT_WINDOWS:
            errors.append(f'{swhere}.window: must be "minute", "hour" or "day", got {window!r}')
        increment = state.get("increment", 1)
        if isinstance(increment, bool) or not isinstance(increment, int) or increment < 0:
            errors.append(f"{swhere}.increment: must be a positive integer")
            increment = 1
        increment = increment or 1  # Intercept treats 0 (unset) as 1
        if state.get("increment_from") is not None:
            errors.append(
                f"{swhere}.increment_from: spend caps (a counter incremented by an argument) "
                "are not supported by signoff"
            )
    own_path = f"state.{counter_scope}.{counter}" if counter else None
    cap = None
    for cwhere, condition in state_conditions:
        if condition.path != own_path:
            errors.append(
                f"{cwhere}.path: signoff supports a state condition only on the rule's own counter "
                f"(state.{counter_scope}.<this rule's state.counter>); {condition.path!r} is not supported"
            )
        elif condition.op not in ("lt", "lte"):
            errors.append(f'{cwhere}.op: a counter limit must use "lt" or "lte" (got {condition.op!r})')
        elif cap is not None:
            errors.append(f"{cwhere}: only one limit condition per counter is supported")
        else:
            # as Intercept does: lte N allows N, lt N allows N - 1 (fractions truncated)
            cap = int(condition.value) - (1 if condition.op == "lt" else 0)
    if cap is None or counter is None or window not in _INTERCEPT_WINDOWS:
        return None  # a counter no condition caps only counts; nothing to enforce
    allowed = cap // increment
    if allowed < 1:
        errors.append(
            f"{where}: the counter limit allows no call at all (use action: deny to block the tool)"
        )
        return None
    return RateLimit(
        max=allowed,
        window=_WINDOWS[window],
        per="global",
        key=f"intercept:{counter_scope}.{counter}",
        rule=name,
        reason=on_deny or f"Rate limit exceeded for {name}",
    )


# ---------------------------------------------------------------------------------------------------
# Hosted gateway policy.json


def hosted_spec(data: Mapping[str, Any]) -> PolicySpec:
    """Convert a hosted PolicyLayer ``policy.json`` (see the module docstring for the mapping)."""
    errors: list[str] = []
    _unknown_keys(data, _HOSTED_TOP, "", errors)
    _check_version(data, errors)
    default = data.get("default")
    if default not in ("allow", "deny"):
        errors.append(
            'default: required, "allow" or "deny"'
            if default is None
            else f'default: must be "allow" or "deny", got {default!r}'
        )
        default = "deny"
    hide = _hide(data.get("hide"), errors)

    global_limits: list[RuleSpec] = []
    all_tools = data.get("all_tools")
    if all_tools is not None:
        if isinstance(all_tools, Mapping):
            _unknown_keys(all_tools, ("limits",), "all_tools", errors)
            global_limits = _hosted_limits(
                all_tools.get("limits"), "all_tools.limits", "/all_tools/limits", ("*",), errors
            )
        else:
            errors.append("all_tools: must be a map with a limits list")

    tools = data.get("tools") or {}
    if not isinstance(tools, Mapping):
        errors.append("tools: must be a map from tool name to its rules")
        tools = {}
    checks: list[RuleSpec] = []
    limits: list[RuleSpec] = []
    allows: list[RuleSpec] = []
    for tool_name, entry in tools.items():
        if not isinstance(tool_name, str) or not tool_name:
            errors.append(f"tools: tool names must be non-empty strings, got {tool_name!r}")
            continue
        where, pointer = f"tools.{tool_name}", "/tools/" + _pointer_escape(tool_name)
        scope = (glob_escape(tool_name),)
        entry = {} if entry is None else entry
        if not isinstance(entry, Mapping):
            errors.append(f"{where}: must be a map (use {{}} to allow the tool)")
            continue
        _unknown_keys(entry, _HOSTED_TOOL, where, errors)
        for kind in ("require", "deny_if"):
            checks += _hosted_checks(
                entry.get(kind), kind, f"{where}.{kind}", f"{pointer}/{kind}", scope, errors
            )
        limits += _hosted_limits(entry.get("limits"), f"{where}.limits", f"{pointer}/limits", scope, errors)
        allows.append(RuleSpec(name=pointer, action="allow", tools=scope))
    if errors:
        raise PolicyError(errors)
    return PolicySpec(
        source_format="policylayer-json",
        mode="enforce",
        default=default,
        default_rule=f"(default {default})",
        hide=hide,
        rules=tuple(checks + limits + global_limits + allows),
    )


def _hosted_checks(
    raw: Any, kind: str, where: str, pointer: str, scope: tuple[str, ...], errors: list[str]
) -> list[RuleSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.append(f"{where}: must be a list of predicates")
        return []
    rules: list[RuleSpec] = []
    for index, predicate in enumerate(raw):
        condition = _hosted_predicate(predicate, f"{where}.{index}", errors)
        if condition is None:
            continue
        name = f"{pointer}/{_pointer_escape(condition.path)}-{condition.op}"
        if kind == "require":  # must hold, so the denial fires unless it does
            rule = RuleSpec(
                name=name,
                action="deny",
                tools=scope,
                unless=(condition,),
                reason=f"required by policy: {_describe(condition)}",
            )
        else:
            rule = RuleSpec(
                name=name,
                action="deny",
                tools=scope,
                when=(condition,),
                reason=f"denied by policy: {_describe(condition)}",
            )
        rules.append(rule)
    return rules


def _hosted_predicate(raw: Any, where: str, errors: list[str]) -> ConditionSpec | None:
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: must be a map with path (or arg), op and value")
        return None
    _unknown_keys(raw, ("path", "arg", "op", "value"), where, errors)
    if ("path" in raw) == ("arg" in raw):
        errors.append(f"{where}: needs exactly one of path or arg")
        return None
    ok = True
    if "arg" in raw:
        path = f"args.{raw['arg']}" if isinstance(raw["arg"], str) and raw["arg"] else None
    else:
        path = raw["path"] if isinstance(raw["path"], str) else None
    if path is None or path.startswith("state."):
        errors.append(f"{where}: the argument path must be a non-empty string such as args.amount")
        ok = False
    else:
        try:
            parse_path(path)
        except ValueError as exc:
            errors.append(f"{where}.{'arg' if 'arg' in raw else 'path'}: {exc}")
            ok = False
    ok = _check_op_value(raw, where, errors) and ok
    return ConditionSpec(path, raw["op"], raw.get("value")) if ok and path else None


def _hosted_limits(
    raw: Any, where: str, pointer: str, scope: tuple[str, ...], errors: list[str]
) -> list[RuleSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.append(f"{where}: must be a list of limits")
        return []
    rules: list[RuleSpec] = []
    names: set[str] = set()
    for index, entry in enumerate(raw):
        lwhere = f"{where}.{index}"
        if not isinstance(entry, Mapping):
            errors.append(f"{lwhere}: must be a map with counter, window, max and scope")
            continue
        before = len(errors)
        _unknown_keys(entry, _HOSTED_LIMIT, lwhere, errors)
        counter = entry.get("counter")
        if counter is not None and (not isinstance(counter, str) or not counter):
            errors.append(f"{lwhere}.counter: must be a non-empty string")
        maximum = entry.get("max")
        if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 1:
            errors.append(f"{lwhere}.max: must be a positive integer, got {maximum!r}")
        window = _hosted_window(entry.get("window"), f"{lwhere}.window", errors)
        per = _SCOPES.get(entry.get("scope", "grant"))
        if per is None:
            errors.append(
                f"{lwhere}.scope: must be one of grant, session, global, got {entry.get('scope')!r}"
            )
        name = f"{pointer}/{_pointer_escape(counter) if isinstance(counter, str) and counter else index}"
        if name in names:
            errors.append(f"{lwhere}.counter: duplicate counter {counter!r}")
        names.add(name)
        if len(errors) > before or window is None or per is None:
            continue
        limit = RateLimit(max=maximum, window=window, per=per, key=name, rule=name)
        rules.append(RuleSpec(name=name, action="rate_limit", tools=scope, rate_limit=limit))
    return rules


def _hosted_window(raw: Any, where: str, errors: list[str]) -> float | None:
    if isinstance(raw, str) and raw in _WINDOWS:
        return _WINDOWS[raw]
    try:
        seconds = parse_duration(raw)  # their FAQ writes a number of seconds ("window": 60)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        errors.append(
            f'{where}: must be "second", "minute", "hour", "day" or a number of seconds, got {raw!r}'
        )
        return None
    return seconds
