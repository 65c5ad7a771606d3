"""The native policy: validation, every action and operator, scopes, composition, revision."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from proxy.duration import parse_duration
from proxy.identity import ANONYMOUS, Identity
from proxy.policy import CompiledPolicy, compile_policy
from proxy.policy_spec import ApprovalSpec, Decision, PolicyError, RateLimit, parse_path

ALICE = Identity("alice", frozenset({"oncall", "sre"}))
BOT = Identity("ci-bot", frozenset({"agents"}))


def load(text: str) -> CompiledPolicy:
    return compile_policy(yaml.safe_load(text))


def errors_of(data: Any) -> list[str]:
    with pytest.raises(PolicyError) as info:
        compile_policy(data)
    return info.value.errors


def one_rule(rule: dict[str, Any], **top: Any) -> CompiledPolicy:
    return compile_policy({"default": "allow", **top, "rules": [{"name": "r", **rule}]})


# --- actions, default, hide -------------------------------------------------------------------------


def test_each_terminal_action_decides() -> None:
    policy = load(
        """
        default: deny
        rules:
          - {name: reads, tools: "runpod.list-*", action: allow}
          - {name: no deletes, tools: "runpod.delete-*", action: deny, reason: deleting is off limits}
          - {name: cancels, tools: runpod.cancel-job, action: require_approval}
        """
    )
    assert policy.decide(ALICE, "runpod.list-pods", {}) == Decision("allow", "reads")
    deny = policy.decide(ALICE, "runpod.delete-pod", {})
    assert (deny.action, deny.rule, deny.reason) == ("deny", "no deletes", "deleting is off limits")
    approval = policy.decide(ALICE, "runpod.cancel-job", {})
    assert approval.action == "require_approval" and approval.rule == "cancels"
    assert approval.approval == ApprovalSpec(None, None, 600.0, 1, "hold", False)
    assert policy.decide(ALICE, "runpod.other", {}) == Decision("deny", "(default)")


@pytest.mark.parametrize("default", ["allow", "deny", "require_approval"])
def test_default_decides_unmatched_tools(default: str) -> None:
    policy = compile_policy({"default": default, "rules": [{"tools": "a", "action": "deny"}]})
    decision = policy.decide(ALICE, "b", None)
    assert (decision.action, decision.rule) == (default, "(default)")
    assert (decision.approval is not None) == (default == "require_approval")


def test_default_is_deny_and_mode_enforce_when_omitted() -> None:
    policy = compile_policy({})
    assert policy.decide(ALICE, "anything", {}).action == "deny"
    assert policy.mode == "enforce" and policy.source_format == "signoff"


def test_shadow_mode_is_exposed() -> None:
    assert compile_policy({"mode": "shadow"}).mode == "shadow"


def test_first_terminal_match_wins() -> None:
    policy = compile_policy(
        {
            "rules": [
                {"name": "a", "tools": "x", "action": "allow"},
                {"name": "b", "tools": "x", "action": "deny"},
            ]
        }
    )
    assert policy.decide(ALICE, "x", {}).rule == "a"


def test_hide_beats_allow_and_reports_hidden() -> None:
    policy = load(
        """
        default: allow
        hide: ["*.delete-*", "admin.*"]
        rules: [{name: everything, tools: "*", action: allow}]
        """
    )
    assert policy.decide(ALICE, "runpod.delete-pod", {}) == Decision("hidden", "(hidden)")
    assert policy.decide(ALICE, "admin.reset", {}).action == "hidden"
    assert policy.is_hidden("admin.x.y") and not policy.is_hidden("runpod.list-pods")
    assert policy.decide(ALICE, "runpod.list-pods", {}).rule == "everything"


def test_hide_globs_are_case_sensitive() -> None:
    policy = compile_policy({"default": "allow", "hide": ["Admin.*"]})
    assert policy.is_hidden("Admin.x") and not policy.is_hidden("admin.x")


@pytest.mark.parametrize(
    ("tools", "tool", "matches"),
    [
        ("runpod.cancel-job", "runpod.cancel-job", True),
        ("runpod.cancel-job", "runpod.cancel-jobs", False),
        ("*", "anything.at.all", True),
        ("runpod.*", "runpod.list-pods", True),
        ("runpod.*", "search.query", False),
        ("*.delete-*", "runpod.delete-pod", True),
        ("runpod.get-?od", "runpod.get-pod", True),
        ("runpod.[gl]*", "runpod.list-pods", True),
        ("runpod.[gl]*", "runpod.delete-pod", False),
        (["a", "runpod.*"], "runpod.x", True),
        (["a", "b"], "c", False),
    ],
)
def test_tool_globs(tools: Any, tool: str, matches: bool) -> None:
    policy = compile_policy({"default": "deny", "rules": [{"name": "r", "tools": tools, "action": "allow"}]})
    assert (policy.decide(ALICE, tool, {}).action == "allow") is matches


def test_rule_without_tools_applies_to_every_tool() -> None:
    policy = compile_policy({"rules": [{"action": "allow"}]})
    assert policy.decide(ALICE, "whatever", {}) == Decision("allow", "rules[0]")


# --- conditions ---------------------------------------------------------------------------------------

MISSING = object()  # marks "the argument is absent"

CASES = [
    # op, value, actual argument, expected
    ("eq", "stop", "stop", True),
    ("eq", "stop", "start", False),
    ("eq", 3, 3.0, True),
    ("eq", 1, True, False),
    ("eq", True, 1, False),
    ("eq", "3", 3, False),
    ("eq", None, None, True),
    ("eq", [1, 2], [1, 2], True),
    ("eq", {"a": 1}, {"a": 1}, True),
    ("eq", "stop", MISSING, False),
    ("neq", "stop", "start", True),
    ("neq", "stop", "stop", False),
    ("neq", "stop", MISSING, False),
    ("in", ["a", "b"], "a", True),
    ("in", ["a", "b"], "c", False),
    ("in", [1, 2], 2.0, True),
    ("in", [1, 2], True, False),
    ("in", ["a"], MISSING, False),
    ("in", ["a"], ["a"], False),
    ("not_in", ["admin"], "dev", True),
    ("not_in", ["admin"], "admin", False),
    ("not_in", ["admin"], MISSING, False),
    ("lt", 10, 9, True),
    ("lt", 10, 10, False),
    ("lte", 10, 10, True),
    ("lte", 10, 10.5, False),
    ("gt", 3, 4, True),
    ("gt", 3, 3, False),
    ("gt", 3, "4", False),
    ("gt", 3, True, False),
    ("gt", 3, None, False),
    ("gt", 3, [4], False),
    ("gt", 3, MISSING, False),
    ("gte", 3, 3, True),
    ("gte", 3.5, 3, False),
    ("regex", "^SELECT", "SELECT * FROM t", True),
    ("regex", "^SELECT", "DELETE FROM t; SELECT 1", False),
    ("regex", "SELECT", "DELETE FROM t; SELECT 1", True),
    ("regex", "^SELECT", 42, False),
    ("regex", "^SELECT", MISSING, False),
    ("contains", "prod", "my-prod-db", True),
    ("contains", "prod", "staging", False),
    ("contains", "gpu", ["cpu", "gpu"], True),
    ("contains", "gpu", ["cpu"], False),
    ("contains", 2, [1, 2], True),
    ("contains", 2, "12", False),
    ("contains", "x", {"x": 1}, False),
    ("contains", "x", MISSING, False),
    ("exists", True, "anything", True),
    ("exists", True, 0, True),
    ("exists", True, None, False),
    ("exists", True, MISSING, False),
    ("exists", False, MISSING, True),
    ("exists", False, None, True),
    ("exists", False, "x", False),
]


@pytest.mark.parametrize(("op", "value", "actual", "expected"), CASES)
def test_condition_operators(op: str, value: Any, actual: Any, expected: bool) -> None:
    policy = one_rule({"tools": "t", "when": [{"path": "field", "op": op, "value": value}], "action": "deny"})
    arguments = {} if actual is MISSING else {"field": actual}
    assert (policy.decide(ALICE, "t", arguments).action == "deny") is expected


def test_conditions_are_anded() -> None:
    policy = one_rule(
        {
            "tools": "t",
            "when": [{"path": "a", "op": "eq", "value": 1}, {"path": "b", "op": "eq", "value": 2}],
            "action": "deny",
        }
    )
    assert policy.decide(ALICE, "t", {"a": 1, "b": 2}).action == "deny"
    assert policy.decide(ALICE, "t", {"a": 1, "b": 3}).action == "allow"


def test_unless_matches_when_not_all_conditions_hold() -> None:
    policy = one_rule(
        {
            "tools": "sql.query",
            "unless": [{"path": "query", "op": "regex", "value": "^SELECT"}],
            "action": "deny",
            "reason": "read-only queries only",
        }
    )
    assert policy.decide(ALICE, "sql.query", {"query": "SELECT 1"}).action == "allow"
    assert policy.decide(ALICE, "sql.query", {"query": "DROP TABLE t"}).reason == "read-only queries only"
    assert policy.decide(ALICE, "sql.query", {}).action == "deny"  # missing = condition false = denied


@pytest.mark.parametrize(
    ("path", "arguments"),
    [
        ("spec.replicas", {"spec": {"replicas": 5}}),
        ("$.spec.replicas", {"spec": {"replicas": 5}}),
        ("args.spec.replicas", {"spec": {"replicas": 5}}),
        ("$.args.spec", {"args": {"spec": 5}}),
        ("items[1].n", {"items": [{"n": 0}, {"n": 5}]}),
        ("items.1.n", {"items": [{"n": 0}, {"n": 5}]}),
        ('labels["app.kubernetes.io/name"]', {"labels": {"app.kubernetes.io/name": 5}}),
        ("$['a b']", {"a b": 5}),
        ("m.0", {"m": {"0": 5}}),
    ],
)
def test_path_forms(path: str, arguments: dict[str, Any]) -> None:
    policy = one_rule({"tools": "t", "when": [{"path": path, "op": "gt", "value": 3}], "action": "deny"})
    assert policy.decide(ALICE, "t", arguments).action == "deny"


@pytest.mark.parametrize(
    "arguments",
    [
        {"items": []},
        {"items": "abc"},
        {"items": {"1": {"n": 5}}},  # an object: "1" is a key, and it is there
        {"items": [{"n": 5}]},
        {"items": None},
        {},
    ],
)
def test_paths_never_raise_on_odd_shapes(arguments: dict[str, Any]) -> None:
    policy = one_rule(
        {"tools": "t", "when": [{"path": "items[1].n", "op": "gt", "value": 3}], "action": "deny"}
    )
    expected = "deny" if arguments == {"items": {"1": {"n": 5}}} else "allow"
    assert policy.decide(ALICE, "t", arguments).action == expected


@pytest.mark.parametrize("arguments", [None, [], "text", 42, {"a": object()}, {"a": {"b": [[[[]]]]}}])
def test_decide_never_raises_on_non_mapping_arguments(arguments: Any) -> None:
    policy = one_rule({"tools": "*", "when": [{"path": "a.b[0]", "op": "eq", "value": 1}], "action": "deny"})
    assert policy.decide(ALICE, "t", arguments).action == "allow"


def test_deeply_nested_arguments_do_not_raise() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    policy = one_rule(
        {"tools": "*", "when": [{"path": "a", "op": "contains", "value": "x"}], "action": "deny"}
    )
    assert policy.decide(ALICE, "t", {"a": deep}).action == "allow"
    equal = one_rule({"tools": "*", "when": [{"path": "a", "op": "eq", "value": [["x"]]}], "action": "deny"})
    assert equal.decide(ALICE, "t", {"a": deep}).action == "allow"


def test_parse_path_rejects_malformed_paths() -> None:
    for bad in ["", "$", "a..b", "a[", "a[x]", "args."]:
        with pytest.raises(ValueError, match="invalid path"):
            parse_path(bad)


# --- identity scopes ----------------------------------------------------------------------------------


def test_identity_and_group_scopes() -> None:
    policy = load(
        """
        default: deny
        rules:
          - {name: bot only, tools: "*", identities: [ci-bot], action: allow}
          - {name: sre only, tools: "*", groups: [sre, dba], action: require_approval}
        """
    )
    assert policy.decide(BOT, "x", {}).rule == "bot only"
    assert policy.decide(ALICE, "x", {}).rule == "sre only"
    assert policy.decide(ANONYMOUS, "x", {}).rule == "(default)"


def test_identities_and_groups_together_mean_either() -> None:
    policy = one_rule({"tools": "*", "identities": ["ci-bot"], "groups": ["sre"], "action": "deny"})
    assert policy.decide(BOT, "x", {}).action == "deny"
    assert policy.decide(ALICE, "x", {}).action == "deny"
    assert policy.decide(Identity("eve", frozenset({"guests"})), "x", {}).action == "allow"


# --- rate limits --------------------------------------------------------------------------------------


def test_rate_limit_rules_are_non_terminal_and_compose() -> None:
    policy = load(
        """
        default: allow
        rules:
          - {name: global cap, tools: "*", action: rate_limit, rate_limit: {max: 100, window: 1m, per: global}}
          - {name: per session, tools: "runpod.*", action: rate_limit, rate_limit: {max: 5, window: 10s, per: session}}
          - name: starts
            tools: runpod.start-pod
            action: allow
            rate_limit: {max: 2, window: 1h}
        """
    )
    decision = policy.decide(ALICE, "runpod.start-pod", {})
    assert (decision.action, decision.rule) == ("allow", "starts")
    assert decision.rate_limits == (
        RateLimit(100, 60.0, "global", "global cap", "global cap"),
        RateLimit(5, 10.0, "session", "per session", "per session"),
        RateLimit(2, 3600.0, "identity", "starts", "starts"),
    )
    default = policy.decide(ALICE, "runpod.list-pods", {})
    assert default.rule == "(default)" and [r.key for r in default.rate_limits] == [
        "global cap",
        "per session",
    ]
    assert [r.key for r in policy.decide(ALICE, "other", {}).rate_limits] == ["global cap"]


def test_a_denied_call_carries_no_rate_limits() -> None:
    policy = load(
        """
        default: deny
        rules:
          - {name: cap, action: rate_limit, rate_limit: {max: 1, window: 1m}}
          - {name: nope, tools: bad, action: deny}
        """
    )
    assert policy.decide(ALICE, "bad", {}) == Decision("deny", "nope")
    assert policy.decide(ALICE, "other", {}) == Decision("deny", "(default)")


def test_rate_limit_on_an_approval_rule_and_its_reason() -> None:
    policy = one_rule(
        {
            "tools": "t",
            "action": "require_approval",
            "reason": "slow down",
            "rate_limit": {"max": 3, "window": 60},
        }
    )
    limit = policy.decide(ALICE, "t", {}).rate_limits[0]
    assert (limit.max, limit.window, limit.per, limit.reason) == (3, 60.0, "identity", "slow down")


def test_conditional_rate_limit() -> None:
    policy = one_rule(
        {
            "tools": "t",
            "when": [{"path": "size", "op": "gt", "value": 10}],
            "action": "rate_limit",
            "rate_limit": {"max": 1, "window": "1d"},
        }
    )
    assert policy.decide(ALICE, "t", {"size": 11}).rate_limits[0].window == 86400.0
    assert policy.decide(ALICE, "t", {"size": 1}).rate_limits == ()


# --- approvals ----------------------------------------------------------------------------------------


def test_approval_fields_merge_with_defaults() -> None:
    policy = load(
        """
        default: require_approval
        approval_defaults: {approvers: oncall, timeout: 5m, quorum: 1, channel: C-DEFAULT}
        rules:
          - name: two approvers
            tools: db.drop
            action: require_approval
            approval: {quorum: 2, channel: C0123, mode: pending}
          - {name: plain, tools: db.truncate, action: require_approval}
        """
    )
    assert policy.decide(ALICE, "db.drop", {}).approval == ApprovalSpec(
        "oncall", "C0123", 300.0, 2, "pending", False
    )
    assert policy.decide(ALICE, "db.truncate", {}).approval == ApprovalSpec(
        "oncall", "C-DEFAULT", 300.0, 1, "hold", False
    )
    assert policy.decide(ALICE, "other", {}).approval == ApprovalSpec(
        "oncall", "C-DEFAULT", 300.0, 1, "hold", False
    )


def test_approver_groups_lists_every_named_group() -> None:
    policy = load(
        """
        default: require_approval
        approval_defaults: {approvers: oncall}
        rules:
          - {tools: a, action: require_approval, approval: {approvers: dba}}
          - {tools: b, action: require_approval}
          - {tools: c, action: allow}
        """
    )
    assert policy.approver_groups() == {"oncall", "dba"}
    assert compile_policy({"default": "allow"}).approver_groups() == set()


# --- revision -----------------------------------------------------------------------------------------

BASE = """
description: first
default: deny
hide: [a, b]
rules:
  - {name: r1, tools: "x.*", when: [{path: n, op: gt, value: 3}], action: require_approval}
  - {name: r2, tools: y, action: allow}
"""


def test_revision_is_stable_for_the_same_meaning() -> None:
    first = load(BASE)
    assert first.revision == load(BASE).revision
    assert len(first.revision) == 12
    # formatting, key order, description, hide order and unused approval defaults do not change meaning
    same = load(
        """
        hide: [b, a, a]
        rules:
          - action: require_approval
            when: [{value: 3, op: gt, path: n}]
            tools: ["x.*"]
            name: r1
          - {name: r2, tools: y, action: allow}
        default: deny
        description: second
        """
    )
    assert same.revision == first.revision
    assert load(BASE + "approval_defaults: {timeout: 10m}\n").revision == first.revision


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("value: 3", "value: 4"),
        ("name: r2", "name: r3"),
        ("action: allow", "action: deny"),
        ("default: deny", "default: allow"),
        ("hide: [a, b]", "hide: [a]"),
        ('tools: "x.*"', 'tools: "x.y"'),
    ],
)
def test_revision_changes_with_meaning(old: str, new: str) -> None:
    assert BASE.count(old) == 1
    assert load(BASE.replace(old, new)).revision != load(BASE).revision


def test_revision_changes_when_used_approval_defaults_change() -> None:
    assert load(BASE + "approval_defaults: {timeout: 5m}\n").revision != load(BASE).revision
    assert load(BASE + "mode: shadow\n").revision != load(BASE).revision


# --- validation ---------------------------------------------------------------------------------------


def test_three_mistakes_three_errors_with_paths() -> None:
    errors = errors_of(
        yaml.safe_load(
            """
            default: maybe
            rules:
              - {tools: a, action: allow}
              - {tools: b, action: deny}
              - {tools: c, action: deny, when: [{path: n, op: greater, value: 1}]}
              - {tools: d, action: rate_limit, rate_limit: {max: 0, window: 1m}}
            """
        )
    )
    assert errors == [
        "default: must be one of allow, deny or require_approval",
        "rules.2.when.0.op: must be one of eq, neq, in, not_in, lt, lte, gt, gte, regex, contains or exists",
        "rules.3.rate_limit.max: must be at least 1",
    ]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"action": "allw"}, "rules.0.action: must be one of allow, deny, require_approval or rate_limit"),
        ({"action": "allow", "tool": "x"}, "rules.0.tool: unknown field (did you mean 'tools'?)"),
        ({"tools": []}, "rules.0.tools: must not be empty"),
        ({"tools": [""]}, "rules.0.tools.0: must not be empty"),
        ({"identities": []}, "rules.0.identities: must not be empty"),
        (
            {"when": [{"path": "a", "op": "in", "value": "x"}]},
            'rules.0.when.0.value: must be a list for op "in"',
        ),
        (
            {"when": [{"path": "a", "op": "not_in", "value": 3}]},
            'rules.0.when.0.value: must be a list for op "not_in"',
        ),
        (
            {"when": [{"path": "a", "op": "gt", "value": "3"}]},
            'rules.0.when.0.value: must be a number for op "gt"',
        ),
        (
            {"when": [{"path": "a", "op": "lte", "value": True}]},
            'rules.0.when.0.value: must be a number for op "lte"',
        ),
        (
            {"when": [{"path": "a", "op": "exists", "value": "yes"}]},
            'rules.0.when.0.value: must be true or false for op "exists"',
        ),
        (
            {"when": [{"path": "a", "op": "exists"}]},
            'rules.0.when.0.value: must be true or false for op "exists"',
        ),
        (
            {"when": [{"path": "a", "op": "regex", "value": 5}]},
            'rules.0.when.0.value: must be a string (a regular expression) for op "regex"',
        ),
        (
            {"when": [{"path": "a", "op": "regex", "value": "("}]},
            "rules.0.when.0.value: invalid regular expression",
        ),
        ({"when": [{"path": "a..b", "op": "eq", "value": 1}]}, "rules.0.when.0.path: invalid path 'a..b'"),
        ({"when": [{"path": "a", "op": "eq", "value": 1, "x": 2}]}, "rules.0.when.0.x: unknown field"),
        (
            {"unless": [{"path": "a", "op": "contains"}]},
            "rules.0.unless.0.value: must be a string or a JSON value",
        ),
        ({"action": "rate_limit"}, "rules.0.rate_limit: required when action is rate_limit"),
        (
            {"action": "rate_limit", "rate_limit": {"max": 1, "window": "soon"}},
            "rules.0.rate_limit.window: invalid duration 'soon'",
        ),
        (
            {"action": "rate_limit", "rate_limit": {"max": 1, "window": 0}},
            "rules.0.rate_limit.window: invalid duration 0: must be greater than zero",
        ),
        (
            {"action": "rate_limit", "rate_limit": {"max": 1, "window": 1, "per": "user"}},
            "rules.0.rate_limit.per: must be one of identity, session or global",
        ),
        (
            {"action": "rate_limit", "rate_limit": {"max": "10", "window": 1}},
            "rules.0.rate_limit.max: must be an integer",
        ),
        ({"approval": {"quorum": 2}}, "rules.0.approval: only allowed with action: require_approval"),
        (
            {"action": "require_approval", "approval": {"timeout": "forever"}},
            "rules.0.approval.timeout: invalid duration 'forever'",
        ),
        (
            {"action": "require_approval", "approval": {"mode": "async"}},
            "rules.0.approval.mode: must be one of hold or pending",
        ),
        (
            {"action": "require_approval", "approval": {"allow_self_approval": "no"}},
            "rules.0.approval.allow_self_approval: must be true or false",
        ),
    ],
)
def test_rule_validation_errors(rule: dict[str, Any], expected: str) -> None:
    errors = errors_of({"rules": [{"tools": "x", "action": "deny", **rule}]})
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors


def test_top_level_validation_errors() -> None:
    errors = errors_of({"mode": "dry-run", "hide": "x", "approval_defaults": {"quorum": 0}, "rulez": []})
    assert errors == [
        "mode: must be one of enforce or shadow",
        "approval_defaults.quorum: must be at least 1",
        "rulez: unknown field (did you mean 'rules'?)",
    ]


def test_duplicate_rule_names_are_errors_alongside_schema_errors() -> None:
    errors = errors_of(
        {"rules": [{"name": "a", "action": "allow"}, {"name": "a", "action": "deny"}, {"action": "nope"}]}
    )
    assert errors == [
        "rules.2.action: must be one of allow, deny, require_approval or rate_limit",
        "rules.1.name: duplicate rule name 'a' (also rules.0)",
    ]
    # an explicit name may not take a default name either
    assert errors_of({"rules": [{"action": "allow"}, {"name": "rules[0]", "action": "deny"}]}) == [
        "rules.1.name: duplicate rule name 'rules[0]' (also rules.0)"
    ]


def test_policy_error_is_a_value_error_listing_everything() -> None:
    with pytest.raises(ValueError, match=r"invalid policy \(2 errors\)") as info:
        compile_policy({"mode": 1, "default": 2})
    assert isinstance(info.value, PolicyError) and len(info.value.errors) == 2


def test_non_mapping_policy_is_an_error() -> None:
    assert errors_of(["rules"]) == ["(root): a policy must be a mapping, not list"]


# --- odd inputs and the per-tool cache ----------------------------------------------------------------


def test_many_distinct_tool_names_keep_working() -> None:
    policy = compile_policy({"default": "deny", "rules": [{"tools": "t-1*", "action": "allow"}]})
    for i in range(10_000):
        expected = "allow" if str(i).startswith("1") else "deny"
        assert policy.decide(ALICE, f"t-{i}", {}).action == expected


def test_non_string_tool_name_does_not_raise() -> None:
    policy = compile_policy({"default": "allow", "hide": ["None"]})
    assert policy.decide(ALICE, None, {}).action == "hidden"  # type: ignore[arg-type]


# --- durations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("90", 90.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("0", 0.0),
        (90, 90.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad", ["", "10x", "h", "-5", "1h-30m", "ten minutes", "1H", True, None, [], -1, float("nan")]
)
def test_parse_duration_names_the_bad_value(bad: object) -> None:
    with pytest.raises(ValueError, match=r"invalid duration"):
        parse_duration(bad)  # type: ignore[arg-type]
