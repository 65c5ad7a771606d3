"""The starting policy `signoff init` writes, loaded and evaluated by the real policy engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Config
from proxy.identity import ANONYMOUS
from proxy.naming import Names
from proxy.policies import PolicySet
from proxy.policy_spec import Decision
from proxy.risk import classify
from proxy.starter import starter_policy

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "runpod_tools.json").read_text())
RUNPOD_TOOLS: list[dict[str, Any]] = FIXTURE["tools"]


def load(policy: dict[str, Any], upstreams: list[str], tmp_path: Path) -> PolicySet:
    """Write the policy as `signoff init` does and load it the way the gateway does."""
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    config = Config.model_validate(
        {"upstreams": {name: {"command": "true"} for name in upstreams}, "policy": str(path)}
    )
    return PolicySet(config, Names(upstreams, config.tool_separator, config.prefixed))


@pytest.fixture
def runpod(tmp_path: Path) -> PolicySet:
    return load(
        starter_policy({"runpod": RUNPOD_TOOLS}, Names(["runpod"], prefixed=False)), ["runpod"], tmp_path
    )


def decide(policies: PolicySet, tool: str, arguments: dict[str, Any] | None = None) -> Decision:
    return policies.decide(ANONYMOUS, "runpod", tool, arguments or {}).decision


@pytest.mark.parametrize("action", ["terminate", "stop"])
def test_pod_action_terminate_and_stop_need_approval(runpod: PolicySet, action: str) -> None:
    decision = decide(runpod, "pod-action", {"id": "p1", "body": {"action": action}})
    assert decision.action == "require_approval"
    assert decision.rule == "pod-action: stop or terminate in body.action needs approval"
    assert decision.approval is not None and decision.approval.approvers == "oncall"


@pytest.mark.parametrize("action", ["start", "restart"])
def test_pod_action_start_and_restart_are_rate_limited_writes(runpod: PolicySet, action: str) -> None:
    decision = decide(runpod, "pod-action", {"id": "p1", "body": {"action": action}})
    assert decision.action == "allow" and decision.rule == "pod-action: other listed values are writes"
    assert [(limit.max, limit.window, limit.per) for limit in decision.rate_limits] == [
        (30, 60.0, "identity")
    ]


@pytest.mark.parametrize(
    "arguments",
    [
        {"id": "p1", "body": {"action": "TERMINATE"}},  # a spelling the schema does not list
        {"id": "p1", "body": {"action": ["terminate"]}},
        {"id": "p1", "body": {}},
        {"id": "p1", "action": "start"},  # the argument is body.action, not action
        {},
    ],
)
def test_pod_action_with_an_unlisted_or_missing_action_needs_approval(
    runpod: PolicySet, arguments: dict[str, Any]
) -> None:
    decision = decide(runpod, "pod-action", arguments)
    assert (decision.action, decision.rule) == ("require_approval", "(default)")


@pytest.mark.parametrize(
    "tool", ["retry-job", "update-ssh-keys", "cancel-job", "delete-pod", "update-endpoint"]
)
def test_destructive_runpod_tools_need_approval(runpod: PolicySet, tool: str) -> None:
    decision = decide(runpod, tool, {"endpointId": "e1", "jobId": "j1"})
    assert (decision.action, decision.rule) == ("require_approval", "destructive tools need on-call approval")


def test_reads_are_allowed_and_writes_rate_limited(runpod: PolicySet) -> None:
    listed = decide(runpod, "list-pods")
    assert (listed.action, listed.rule, listed.rate_limits) == ("allow", "reads are allowed", ())
    created = decide(runpod, "create-pod", {"body": {}})
    assert (created.action, created.rule) == ("allow", "writes are rate-limited") and created.rate_limits
    assert decide(runpod, "some-new-tool").action == "require_approval"  # a tool added later


def test_every_runpod_tool_gets_the_decision_of_its_class(runpod: PolicySet) -> None:
    expected = {
        "read": ("allow", False),
        "write": ("allow", True),
        "destructive": ("require_approval", False),
    }
    for tool in RUNPOD_TOOLS:
        if tool["name"] == "pod-action":  # its decision depends on the arguments (tests above)
            continue
        risk = classify(tool["name"], tool.get("description"), None, tool["inputSchema"])
        decision = decide(runpod, tool["name"])
        assert (decision.action, bool(decision.rate_limits)) == expected[risk], tool["name"]
        assert decision.rule != "(default)", tool["name"]


def test_several_upstreams_get_prefixed_rules(tmp_path: Path) -> None:
    names = Names(["runpod", "other"])
    listing = {"runpod": RUNPOD_TOOLS, "other": "could not connect"}  # a failed upstream is skipped
    policies = load(starter_policy(listing, names), ["runpod", "other"], tmp_path)
    assert decide(policies, "pod-action", {"id": "p", "body": {"action": "terminate"}}).rule == (
        "runpod.pod-action: stop or terminate in body.action needs approval"
    )
    assert decide(policies, "pod-action", {"id": "p", "body": {"action": "start"}}).action == "allow"
    assert decide(policies, "list-pods").action == "allow"


def test_a_read_with_a_dangerous_value_stays_an_unlimited_read_otherwise(tmp_path: Path) -> None:
    tools = [
        {"name": "query[db]", "inputSchema": {"properties": {"op": {"enum": ["select", "delete"]}}}},
        {"name": "queryd", "description": "Runs a query."},  # the unescaped glob "query[db]" matches it
    ]
    policy = starter_policy({"db": tools}, Names(["db"], prefixed=False))
    assert policy["rules"][0]["tools"] == ["query[[]db]"]
    policies = load(policy, ["db"], tmp_path)

    def on(tool: str, arguments: dict[str, Any]) -> Decision:
        return policies.decide(ANONYMOUS, "db", tool, arguments).decision

    assert on("query[db]", {"op": "delete"}).action == "require_approval"
    allowed = on("query[db]", {"op": "select"})
    assert (allowed.action, allowed.rate_limits, allowed.rule) == (
        "allow",
        (),
        "query[db]: other listed values are reads",
    )
    assert on("queryd", {"op": "delete"}).rule == "writes are rate-limited"


def test_an_argument_with_only_dangerous_values_gets_just_the_approval_rule(tmp_path: Path) -> None:
    tools = [{"name": "set-flag", "inputSchema": {"properties": {"cleanup": {"const": "purge"}}}}]
    policy = starter_policy({"x": tools}, Names(["x"], prefixed=False))
    assert [rule["name"] for rule in policy["rules"]] == ["set-flag: purge in cleanup needs approval"]
    policies = load(policy, ["x"], tmp_path)
    assert (
        policies.decide(ANONYMOUS, "x", "set-flag", {"cleanup": "purge"}).decision.action
        == "require_approval"
    )
    assert policies.decide(ANONYMOUS, "x", "set-flag", {}).decision.rule == "(default)"
