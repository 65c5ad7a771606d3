"""PolicyLayer's hosted policy.json and Intercept YAML load unchanged and mean the same thing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from proxy.identity import Identity
from proxy.policy import CompiledPolicy, compile_policy
from proxy.policy_spec import Decision, PolicyError, RateLimit

ME = Identity("alice", frozenset({"oncall"}))


def load(text: str) -> CompiledPolicy:
    return compile_policy(yaml.safe_load(text))


def errors_of(data: Any) -> list[str]:
    with pytest.raises(PolicyError) as info:
        compile_policy(data)
    return info.value.errors


# --- hosted gateway policy.json -----------------------------------------------------------------------


def test_the_issue_policy_json() -> None:
    policy = compile_policy(
        json.loads('{"version": "1", "default": "deny", "hide": ["cancel-job"], "tools": {"list-pods": {}}}')
    )
    assert policy.source_format == "policylayer-json"
    assert policy.decide(ME, "list-pods", {}) == Decision("allow", "/tools/list-pods")
    assert policy.decide(ME, "cancel-job", {"job_id": "x"}) == Decision("hidden", "(hidden)")
    assert policy.is_hidden("cancel-job") and not policy.is_hidden("list-pods")
    for tool in ["delete-pod", "list-pods2", "list-*", "create-pod"]:
        assert policy.decide(ME, tool, {}) == Decision("deny", "(default deny)")


HOSTED = {
    "version": "1",
    "default": "deny",
    "hide": ["delete_account"],
    "all_tools": {
        "limits": [{"counter": "calls-per-minute", "window": "minute", "max": 60, "scope": "grant"}]
    },
    "tools": {
        "list_customers": {},
        "create_refund": {
            "require": [{"path": "args.reason", "op": "exists", "value": True}],
            "deny_if": [{"arg": "amount", "op": "gt", "value": 10000}],
            "limits": [{"counter": "refunds", "window": 60, "max": 10}],
        },
        "stop-pod": {
            "limits": [{"counter": "stop-pod_rate", "window": "minute", "max": 10, "scope": "grant"}]
        },
    },
}


def test_require_deny_if_and_limits() -> None:
    policy = compile_policy(HOSTED)
    missing_reason = policy.decide(ME, "create_refund", {"amount": 5})
    assert missing_reason.action == "deny"
    assert missing_reason.rule == "/tools/create_refund/require/args.reason-exists"
    assert missing_reason.reason == "required by policy: args.reason exists true"

    too_big = policy.decide(ME, "create_refund", {"amount": 20000, "reason": "dup"})
    assert (too_big.action, too_big.rule) == ("deny", "/tools/create_refund/deny_if/args.amount-gt")
    assert too_big.reason == "denied by policy: args.amount gt 10000"
    assert too_big.rate_limits == ()

    ok = policy.decide(ME, "create_refund", {"amount": 100, "reason": "damaged"})
    assert (ok.action, ok.rule) == ("allow", "/tools/create_refund")
    assert ok.rate_limits == (
        RateLimit(
            10, 60.0, "identity", "/tools/create_refund/limits/refunds", "/tools/create_refund/limits/refunds"
        ),
        RateLimit(
            60, 60.0, "identity", "/all_tools/limits/calls-per-minute", "/all_tools/limits/calls-per-minute"
        ),
    )
    stop = policy.decide(ME, "stop-pod", {})
    assert [limit.key for limit in stop.rate_limits] == [
        "/tools/stop-pod/limits/stop-pod_rate",
        "/all_tools/limits/calls-per-minute",
    ]
    assert policy.decide(ME, "list_customers", {}).rule == "/tools/list_customers"
    assert policy.decide(ME, "delete_account", {}).action == "hidden"
    assert policy.decide(ME, "unlisted", {}) == Decision("deny", "(default deny)")


def test_hosted_default_allow_applies_all_tools_limits_everywhere() -> None:
    policy = compile_policy(
        {
            "version": "1",
            "default": "allow",
            "all_tools": {"limits": [{"window": 3600, "max": 100, "scope": "global"}]},
            "tools": {"charge": {"deny_if": [{"path": "args.amount", "op": "gte", "value": 500}]}},
        }
    )
    anything = policy.decide(ME, "anything", {})
    assert anything.rule == "(default allow)"
    assert anything.rate_limits == (
        RateLimit(100, 3600.0, "global", "/all_tools/limits/0", "/all_tools/limits/0"),
    )
    assert policy.decide(ME, "charge", {"amount": 500}).action == "deny"
    assert policy.decide(ME, "charge", {"amount": 499}).rule == "/tools/charge"


def test_hosted_hide_everything_and_pointer_escaping() -> None:
    policy = compile_policy({"version": "1", "default": "allow", "hide": ["*"]})
    assert policy.decide(ME, "anything", {}).action == "hidden"
    odd = compile_policy({"version": "1", "default": "deny", "tools": {"a/b~c": {}, "x*": {}}})
    assert odd.decide(ME, "a/b~c", {}).rule == "/tools/a~1b~0c"
    # tool names are exact, never globs
    assert odd.decide(ME, "x*", {}).action == "allow"
    assert odd.decide(ME, "xyz", {}).action == "deny"


def test_hosted_session_scope_and_window_forms() -> None:
    policy = compile_policy(
        {
            "version": "1",
            "default": "deny",
            "tools": {
                "t": {
                    "limits": [
                        {"counter": "a", "window": "second", "max": 1, "scope": "session"},
                        {"counter": "b", "window": "day", "max": 2},
                        {"counter": "c", "window": "90s", "max": 3},
                    ]
                }
            },
        }
    )
    limits = policy.decide(ME, "t", {}).rate_limits
    assert [(lim.window, lim.per, lim.max) for lim in limits] == [
        (1.0, "session", 1),
        (86400.0, "identity", 2),
        (90.0, "identity", 3),
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"version": "2"}, "version: must be \"1\", got '2'"),
        ({"default": None}, 'default: required, "allow" or "deny"'),
        ({"default": "require_approval"}, 'default: must be "allow" or "deny", got \'require_approval\''),
        ({"hide": "delete_account"}, 'hide: must be a list of tool names, or "*" to hide every tool'),
        ({"hide": ["a", "a"]}, "hide.1: duplicate entry 'a'"),
        ({"hide": [""]}, "hide.0: entry must be a non-empty tool name"),
        ({"extra": 1}, "extra: unknown field (expected one of version, default, hide, all_tools, tools)"),
        (
            {"all_tools": {"limits": [{"window": "minute"}]}},
            "all_tools.limits.0.max: must be a positive integer",
        ),
        (
            {"all_tools": {"limits": [{"window": "fortnight", "max": 1}]}},
            "all_tools.limits.0.window: must be",
        ),
        (
            {"all_tools": {"limits": [{"window": 60, "max": 1, "scope": "org"}]}},
            "all_tools.limits.0.scope: must be",
        ),
        ({"all_tools": {"quota": []}}, "all_tools.quota: unknown field"),
        ({"tools": {"t": {"allow": True}}}, "tools.t.allow: unknown field"),
        (
            {"tools": {"t": {"deny_if": [{"path": "args.a", "op": "gt", "value": "x"}]}}},
            "tools.t.deny_if.0.value",
        ),
        (
            {"tools": {"t": {"require": [{"path": "args.a", "op": "like", "value": 1}]}}},
            "tools.t.require.0.op",
        ),
        (
            {"tools": {"t": {"require": [{"op": "exists", "value": True}]}}},
            "tools.t.require.0: needs exactly one",
        ),
        ({"tools": {"t": {"require": {"path": "args.a"}}}}, "tools.t.require: must be a list of predicates"),
        ({"tools": {"t": "allow"}}, "tools.t: must be a map"),
        (
            {
                "tools": {
                    "t": {
                        "limits": [
                            {"counter": "c", "window": 1, "max": 1},
                            {"counter": "c", "window": 2, "max": 1},
                        ]
                    }
                }
            },
            "tools.t.limits.1.counter: duplicate counter 'c'",
        ),
    ],
)
def test_hosted_validation_errors(change: dict[str, Any], expected: str) -> None:
    data = {"version": "1", "default": "deny", "tools": {"t": {}}} | change
    data = {key: value for key, value in data.items() if value is not None}
    errors = errors_of(data)
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors


def test_hosted_reports_every_error() -> None:
    errors = errors_of(
        {
            "version": "1",
            "default": "deny",
            "tools": {
                "a": {"deny_if": [{"path": "args.x", "op": "gt", "value": "1"}]},
                "b": {"limits": [{"window": "minute", "max": 0}]},
                "c": {"require": [{"path": "args.y", "op": "regex", "value": "("}]},
            },
        }
    )
    assert [error.split(":")[0] for error in errors] == [
        "tools.a.deny_if.0.value",
        "tools.b.limits.0.max",
        "tools.c.require.0.value",
    ]


# --- Intercept YAML -----------------------------------------------------------------------------------

NOTES_EXAMPLE = """
version: "1"
default: deny
hide: [delete-endpoint]
tools:
  list-pods: { rules: [] }
  stop-pod:
    rules:
      - name: stop burst
        rate_limit: 10/minute
  cancel-job:
    rules:
      - name: on-call must approve
        action: require_approval
        approval_timeout: 10m
        on_deny: "Cancelling a job loses its work; an on-call engineer must approve."
  "*":
    rules:
      - name: global cap
        rate_limit: 120/minute
"""

GLOBAL_CAP = RateLimit(
    max=120,
    window=60.0,
    per="global",
    key="intercept:_global._rate_minute",
    rule="global cap",
    reason="Rate limit of 120 per minute reached. Try again later.",
)


def test_the_notes_intercept_example() -> None:
    policy = load(NOTES_EXAMPLE)
    assert policy.source_format == "intercept-yaml" and policy.mode == "enforce"

    # rules: [] under default deny: allowed without checks, but the "*" cap still counts it
    assert policy.decide(ME, "list-pods", {}) == Decision(
        "allow", "tools.list-pods", rate_limits=(GLOBAL_CAP,)
    )

    # rate_limit shorthand: N per window, its own counter per tool, plus the wildcard's global one
    stop = policy.decide(ME, "stop-pod", {"podId": "p1"})
    assert (stop.action, stop.rule) == ("allow", "tools.stop-pod")
    assert stop.rate_limits == (
        RateLimit(
            max=10,
            window=60.0,
            per="global",
            key="intercept:stop-pod._rate_minute",
            rule="stop burst",
            reason="Rate limit of 10 per minute reached. Try again later.",
        ),
        GLOBAL_CAP,
    )

    # require_approval with approval_timeout; on_deny is the text shown when refused
    cancel = policy.decide(ME, "cancel-job", {"jobId": "j1"})
    assert (cancel.action, cancel.rule) == ("require_approval", "on-call must approve")
    assert cancel.reason == "Cancelling a job loses its work; an on-call engineer must approve."
    assert cancel.approval is not None and cancel.approval.timeout == 600.0
    assert cancel.rate_limits == (GLOBAL_CAP,)

    # hidden tools are hidden; unlisted tools are denied before any rule, "*" rules don't rescue them
    assert policy.decide(ME, "delete-endpoint", {}).action == "hidden"
    assert policy.decide(ME, "create-pod", {}) == Decision("deny", "(default deny)")


def test_wildcard_rules_apply_to_unlisted_tools_under_default_allow() -> None:
    policy = load(NOTES_EXAMPLE.replace("default: deny", "default: allow"))
    unlisted = policy.decide(ME, "create-pod", {})
    assert unlisted == Decision("allow", "(default allow)", rate_limits=(GLOBAL_CAP,))


def test_intercept_default_defaults_to_allow() -> None:
    policy = load('version: "1"\ntools: {a: {rules: []}}\n')
    assert policy.decide(ME, "x", {}) == Decision("allow", "(default allow)")


def test_a_policy_that_could_be_either_format_needs_a_default() -> None:
    # Hosted JSON requires `default`, Intercept reads its absence as allow: refuse to guess.
    errors = errors_of({"version": "1", "hide": ["x"], "tools": {"a": {}}})
    assert errors[0].startswith('default: required, "allow" or "deny"')


INTERCEPT_RULES = """
version: "1"
default: deny
tools:
  create_charge:
    rules:
      - name: max single charge
        conditions:
          - {path: args.amount, op: lte, value: 50000}
        on_deny: "Single charge cannot exceed $500.00"
      - name: allowed currencies
        conditions:
          - {path: args.currency, op: in, value: [usd, eur]}
        on_deny: "Only USD and EUR charges are permitted"
  delete_customer:
    rules:
      - name: block destructive action
        action: deny
        on_deny: "Customer deletion is not permitted via AI agents"
  deploy:
    rules:
      - name: prod needs approval
        action: require_approval
        conditions:
          - {path: args.env, op: eq, value: prod}
      - name: no friday deploys
        conditions:
          - {path: args.day, op: neq, value: friday}
  "*":
    rules:
      - name: no secrets
        conditions:
          - {path: args.token, op: exists, value: false}
        on_deny: "Do not pass tokens"
"""


def test_evaluate_rules_and_every_rule_must_pass() -> None:
    policy = load(INTERCEPT_RULES)
    ok = policy.decide(ME, "create_charge", {"amount": 100, "currency": "usd"})
    assert ok == Decision("allow", "tools.create_charge")

    too_much = policy.decide(ME, "create_charge", {"amount": 60000, "currency": "gbp"})
    # both rules fail: the first failing rule's on_deny is the reason
    assert (too_much.action, too_much.rule, too_much.reason) == (
        "deny",
        "max single charge",
        "Single charge cannot exceed $500.00",
    )
    currency = policy.decide(ME, "create_charge", {"amount": 1, "currency": "gbp"})
    assert currency.rule == "allowed currencies"

    # an evaluate rule whose argument is missing fails, and so denies
    assert policy.decide(ME, "create_charge", {"currency": "usd"}).rule == "max single charge"
    # tool-specific rules run before wildcard ones
    both = policy.decide(ME, "create_charge", {"amount": 60000, "currency": "usd", "token": "t"})
    assert both.rule == "max single charge"
    wild = policy.decide(ME, "create_charge", {"amount": 1, "currency": "usd", "token": "t"})
    assert (wild.rule, wild.reason) == ("no secrets", "Do not pass tokens")


def test_unconditional_deny_with_on_deny() -> None:
    decision = load(INTERCEPT_RULES).decide(ME, "delete_customer", {"id": "c1"})
    assert decision == Decision(
        "deny", "block destructive action", "Customer deletion is not permitted via AI agents"
    )


def test_require_approval_with_conditions_and_denials_before_approvals() -> None:
    policy = load(INTERCEPT_RULES)
    assert policy.decide(ME, "deploy", {"env": "prod", "day": "monday"}).action == "require_approval"
    assert policy.decide(ME, "deploy", {"env": "dev", "day": "monday"}) == Decision("allow", "tools.deploy")
    # a failing rule listed after the approval rule still denies: approval never overrides a denial
    friday = policy.decide(ME, "deploy", {"env": "prod", "day": "friday"})
    assert (friday.action, friday.rule) == ("deny", "no friday deploys")
    assert policy.decide(ME, "deploy", {"env": "prod", "day": "monday", "token": "x"}).rule == "no secrets"


def test_approval_timeout_and_default_timeout() -> None:
    policy = load(
        """
        version: "1"
        tools:
          a: {rules: [{name: slow, action: require_approval, approval_timeout: 30m}]}
          b: {rules: [{name: plain, action: require_approval}]}
        """
    )
    assert policy.decide(ME, "a", {}).approval.timeout == 1800.0  # type: ignore[union-attr]
    assert policy.decide(ME, "b", {}).approval.timeout == 600.0  # type: ignore[union-attr]


def test_hide_star_hides_everything() -> None:
    policy = load('version: "1"\nhide: "*"\ntools: {a: {rules: []}}\n')
    assert policy.decide(ME, "a", {}).action == "hidden"


def test_unquoted_version_and_ignored_approvals_block() -> None:
    policy = load(
        """
        version: 1
        description: RunPod
        approvals:
          notify: {webhook: {url: "https://example.com/hook", secret: s}}
          dedupe_window: 5m
        tools: {list-pods: {rules: []}}
        default: deny
        """
    )
    assert policy.source_format == "intercept-yaml"
    assert policy.decide(ME, "list-pods", {}).action == "allow"


def test_state_counters_become_count_limits() -> None:
    policy = load(
        """
        version: "1"
        tools:
          create_issue:
            rules:
              - name: hourly limit
                conditions:
                  - {path: state.create_issue.hourly_count, op: lte, value: 5}
                on_deny: "Hourly limit of 5 new issues reached"
                state: {counter: hourly_count, window: hour}
          create_refund:
            rules:
              - name: daily refunds
                conditions:
                  - {path: args.amount, op: lte, value: 10000}
                  - {path: state.create_refund.daily_count, op: lt, value: 10}
                state: {counter: daily_count, window: day, increment: 2}
          "*":
            rules:
              - name: global rate limit
                conditions:
                  - {path: state._global.calls_per_minute, op: lte, value: 60}
                state: {counter: calls_per_minute, window: minute}
        """
    )
    issue = policy.decide(ME, "create_issue", {})
    assert issue.rate_limits == (
        RateLimit(
            5,
            3600.0,
            "global",
            "intercept:create_issue.hourly_count",
            "hourly limit",
            "Hourly limit of 5 new issues reached",
        ),
        RateLimit(
            60,
            60.0,
            "global",
            "intercept:_global.calls_per_minute",
            "global rate limit",
            "Rate limit exceeded for global rate limit",
        ),
    )
    refund = policy.decide(ME, "create_refund", {"amount": 10})
    assert refund.rate_limits[0].max == 4  # lt 10 allows 9 units; each call takes 2
    assert policy.decide(ME, "create_refund", {"amount": 20000}).rule == "daily refunds"


def test_real_intercept_github_example_loads() -> None:
    policy = load(
        """
        version: "1"
        description: "GitHub MCP server policies"
        hide: [transfer_repository, list_webhooks]
        tools:
          create_issue:
            rules:
              - {name: "hourly issue limit", rate_limit: 5/hour, on_deny: "Hourly limit of 5 new issues reached"}
          create_pull_request:
            rules:
              - {name: "hourly pr limit", rate_limit: 3/hour}
          delete_repository:
            rules:
              - {name: "block repo deletion", action: "deny", on_deny: "Repository deletion is not permitted"}
          "*":
            rules:
              - {name: "global rate limit", rate_limit: 60/minute}
        """
    )
    issue = policy.decide(ME, "create_issue", {})
    assert [(lim.max, lim.window, lim.reason) for lim in issue.rate_limits] == [
        (5, 3600.0, "Hourly limit of 5 new issues reached"),
        (60, 60.0, "Rate limit of 60 per minute reached. Try again later."),
    ]
    assert policy.decide(ME, "delete_repository", {}).action == "deny"
    assert policy.decide(ME, "get_me", {}).rule == "(default allow)"
    assert policy.decide(ME, "list_webhooks", {}).action == "hidden"


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([{"action": "deny"}], "tools.t.rules.0.name: rule must have a name"),
        (
            [{"name": "r", "action": "allow"}],
            'tools.t.rules.0.action: must be "evaluate", "deny" or "require_approval"',
        ),
        (
            [{"name": "r", "action": "deny", "conditions": [{"path": "args.a", "op": "eq", "value": 1}]}],
            "tools.t.rules.0.conditions: deny rules must not have conditions",
        ),
        ([{"name": "r"}], "tools.t.rules.0.conditions: evaluate rules must have at least one condition"),
        (
            [{"name": "r", "conditions": [{"path": "amount", "op": "eq", "value": 1}]}],
            'tools.t.rules.0.conditions.0.path: must start with "args." or "state."',
        ),
        (
            [{"name": "r", "conditions": [{"path": "args.a", "op": "like", "value": 1}]}],
            "tools.t.rules.0.conditions.0.op: unknown operator 'like'",
        ),
        (
            [{"name": "r", "conditions": [{"path": "args.a", "op": "in", "value": "usd"}]}],
            'tools.t.rules.0.conditions.0.value: must be a list for op "in"',
        ),
        (
            [{"name": "r", "conditions": [{"path": "args.a", "op": "lte", "value": "5"}]}],
            'tools.t.rules.0.conditions.0.value: must be a number for op "lte"',
        ),
        (
            [{"name": "r", "conditions": [{"path": "args.a", "op": "exists", "value": "yes"}]}],
            'tools.t.rules.0.conditions.0.value: must be true or false for op "exists"',
        ),
        (
            [{"name": "r", "conditions": [{"path": "args.a", "op": "regex", "value": 1}]}],
            'tools.t.rules.0.conditions.0.value: must be a string (a regular expression) for op "regex"',
        ),
        (
            [{"name": "r", "conditions": [{"path": "args.a", "op": "regex", "value": "(["}]}],
            "tools.t.rules.0.conditions.0.value: invalid regular expression",
        ),
        (
            [{"name": "r", "rate_limit": "ten/minute"}],
            "tools.t.rules.0.rate_limit: count must be a positive integer",
        ),
        (
            [{"name": "r", "rate_limit": "0/minute"}],
            "tools.t.rules.0.rate_limit: count must be a positive integer",
        ),
        (
            [{"name": "r", "rate_limit": "5/week"}],
            'tools.t.rules.0.rate_limit: window must be "minute", "hour" or "day"',
        ),
        ([{"name": "r", "rate_limit": "5 per minute"}], 'tools.t.rules.0.rate_limit: must be "N/window"'),
        (
            [{"name": "r", "rate_limit": "5/minute", "action": "deny"}],
            'tools.t.rules.0.rate_limit: cannot be used with action "deny"',
        ),
        (
            [
                {
                    "name": "r",
                    "rate_limit": "5/minute",
                    "conditions": [{"path": "args.a", "op": "eq", "value": 1}],
                }
            ],
            "tools.t.rules.0.rate_limit: cannot be combined with conditions or state",
        ),
        (
            [{"name": "a", "rate_limit": "5/minute"}, {"name": "b", "rate_limit": "50/minute"}],
            "tools.t.rules.1: duplicate state counter '_rate_minute' (also used by rules.0)",
        ),
        ([{"name": "r", "action": "deny", "on_deny": 5}], "tools.t.rules.0.on_deny: must be a string"),
        (
            [{"name": "r", "action": "deny", "approval_timeout": "5m"}],
            "tools.t.rules.0.approval_timeout: only valid",
        ),
        (
            [{"name": "r", "action": "require_approval", "approval_timeout": "soon"}],
            "tools.t.rules.0.approval_timeout: invalid duration 'soon'",
        ),
        ([{"name": "r", "action": "deny", "when": []}], "tools.t.rules.0.when: unknown field"),
        (
            [
                {
                    "name": "spend",
                    "conditions": [{"path": "state.t.spend", "op": "lte", "value": 1000}],
                    "state": {"counter": "spend", "window": "day", "increment_from": "args.amount"},
                }
            ],
            "tools.t.rules.0.state.increment_from: spend caps (a counter incremented by an argument) are not supported",
        ),
        (
            [
                {
                    "name": "counts",
                    "conditions": [{"path": "args.a", "op": "exists", "value": True}],
                    "state": {"counter": "n", "window": "hour"},
                },
                {"name": "reads", "conditions": [{"path": "state.t.n", "op": "lte", "value": 3}]},
            ],
            "tools.t.rules.1.conditions.0.path: signoff supports a state condition only on the rule's own counter",
        ),
        (
            [
                {
                    "name": "r",
                    "conditions": [{"path": "state.t.n", "op": "gt", "value": 3}],
                    "state": {"counter": "n", "window": "hour"},
                },
            ],
            'tools.t.rules.0.conditions.0.op: a counter limit must use "lt" or "lte"',
        ),
        (
            [
                {
                    "name": "r",
                    "conditions": [{"path": "state.t.n", "op": "lte", "value": 1}],
                    "state": {"counter": "n", "window": "week"},
                }
            ],
            'tools.t.rules.0.state.window: must be "minute", "hour" or "day"',
        ),
    ],
)
def test_intercept_validation_errors(rules: list[dict[str, Any]], expected: str) -> None:
    errors = errors_of({"version": "1", "tools": {"t": {"rules": rules}}})
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"version": "2", "tools": {"a": {"rules": []}}}, "version: must be \"1\", got '2'"),
        ({"default": "block", "tools": {}}, 'default: must be "allow" or "deny", got \'block\''),
        ({"description": "no tools"}, "tools: required"),
        ({"tools": {"a": {"rules": []}}, "hide": ["a", "a"]}, "hide.1: duplicate entry 'a'"),
        ({"tools": {"a": {"rules": []}}, "hide": [" "]}, "hide.0: entry must be a non-empty tool name"),
        ({"tools": {"a": {"rulez": []}}}, "tools.a.rulez: unknown field"),
        ({"tools": {"a": {"rules": {}}}}, "tools.a.rules: must be a list"),
        ({"tools": {"a": {"rules": []}}, "spend_limit": "$500/day"}, "spend_limit: unknown field"),
    ],
)
def test_intercept_top_level_validation_errors(change: dict[str, Any], expected: str) -> None:
    errors = errors_of({"version": "1", **change})
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors


def test_intercept_reports_every_error() -> None:
    errors = errors_of(
        {
            "version": "1",
            "tools": {
                "a": {"rules": [{"action": "deny"}]},
                "b": {"rules": [{"name": "x", "rate_limit": "5/fortnight"}]},
                "c": {"rules": [{"name": "y", "conditions": [{"path": "amount", "op": "eq", "value": 1}]}]},
            },
        }
    )
    assert [error.split(":")[0] for error in errors] == [
        "tools.a.rules.0.name",
        "tools.b.rules.0.rate_limit",
        "tools.c.rules.0.conditions.0.path",
    ]


def test_mixed_formats_are_refused() -> None:
    errors = errors_of(
        {"version": "1", "default": "deny", "tools": {"a": {"rules": []}, "b": {"deny_if": []}}}
    )
    assert errors[0].startswith("tools: mixes Intercept fields")


def test_formats_share_meaning_and_revision_tracks_it() -> None:
    # The same allowlist in both formats means the same thing; only the rule names differ.
    hosted = compile_policy({"version": "1", "default": "deny", "tools": {"a": {}}})
    intercept = compile_policy({"version": "1", "default": "deny", "tools": {"a": {"rules": []}}})
    for tool, action in [("a", "allow"), ("b", "deny")]:
        assert hosted.decide(ME, tool, {}).action == intercept.decide(ME, tool, {}).action == action
    assert hosted.revision == compile_policy({"default": "deny", "version": "1", "tools": {"a": {}}}).revision
    assert hosted.revision != compile_policy({"version": "1", "default": "deny", "tools": {"b": {}}}).revision
