"""The policy evaluator: a `PolicySpec` compiled once into matchers and small test functions.

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

import fnmatch
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from proxy.identity import Identity
from proxy.policy_native import native_spec
from proxy.policy_spec import (
    DEFAULT_APPROVAL,
    ApprovalSpec,
    ConditionSpec,
    Decision,
    PathSegment,
    PolicyError,
    PolicySpec,
    RateLimit,
    RuleSpec,
    is_number,
    parse_path,
)
from proxy.policylayer import to_spec

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
        return lambda actual: is_number(actual) and actual < value
    if op == "lte":
        return lambda actual: is_number(actual) and actual <= value
    if op == "gt":
        return lambda actual: is_number(actual) and actual > value
    if op == "gte":
        return lambda actual: is_number(actual) and actual >= value
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
    return compile_spec(to_spec(data, source_format))
