"""Context probes' pure parts (proxy/context.py) and their policy syntax (proxy/policy_native.py)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.context import (
    ProbeError,
    after_click,
    answer_of,
    ask_again,
    change_text,
    fill,
    label_of,
    pick,
    same_state,
    summary,
)
from proxy.identity import Identity
from proxy.policy import compile_policy
from proxy.policy_spec import ContextProbe, PolicyError

CALL = {"job_id": "job-7f3a", "endpoint_id": "ep-1", "spec": {"target": {"id": 42}}, "ids": ["a", "b"]}


def test_placeholders_take_the_call_arguments() -> None:
    template = {"job_id": "{job_id}", "nested": "{$.spec.target.id}", "text": "job {job_id} on {endpoint_id}"}
    assert fill(template, CALL) == {"job_id": "job-7f3a", "nested": 42, "text": "job job-7f3a on ep-1"}
    assert fill({"first": "{ids[1]}", "fixed": 3, "list": ["{job_id}"]}, CALL) == {
        "first": "b",
        "fixed": 3,
        "list": ["job-7f3a"],
    }
    with pytest.raises(ProbeError, match="the call has no argument pod_id"):
        fill({"x": "{pod_id}"}, CALL)


def test_fields_come_from_structured_content_or_the_json_text() -> None:
    structured = {"structuredContent": {"status": "RUNNING", "meta": {"at": "14:02"}}, "content": []}
    assert pick(answer_of(structured), ["status", "meta.at"]) == {"status": "RUNNING", "meta.at": "14:02"}
    text = {"content": [{"type": "text", "text": '{"status": "IN_QUEUE"}'}]}
    assert pick(answer_of(text), ["status", "missing"]) == {"status": "IN_QUEUE", "missing": None}
    with pytest.raises(ProbeError, match="its answer has no status"):
        pick(answer_of({"content": [{"type": "text", "text": "not json"}]}), ["status"])


def stored(fields: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    return {"tool": "get-job", "label": "job-7f3a", "fields": fields, "error": None, "was": None, **extra}


def test_summary_and_changes_read_plainly() -> None:
    assert summary(stored({"status": "IN_PROGRESS", "n": 3})) == "job-7f3a: status IN_PROGRESS, n 3"
    assert summary(stored(None, error="get-job did not answer within 2.5s")) == (
        "job-7f3a: state unknown (get-job did not answer within 2.5s)"
    )
    assert summary(stored({"status": "x" * 500}))[-1] == "…"
    shown = stored({"status": "IN_PROGRESS"})
    fresh = stored({"status": "COMPLETED"})
    assert not same_state(shown, fresh)
    assert same_state(shown, stored(None, error="timeout"))  # an unknown state never counts as a change
    assert same_state(stored(None, error="x"), fresh)  # nothing known was shown
    updated = after_click(shown, fresh)
    assert change_text(updated) == "status COMPLETED (was IN_PROGRESS)"
    assert ask_again(updated) == (
        "job-7f3a changed since the request was shown: now status COMPLETED (was IN_PROGRESS). Approve anyway?"
    )
    # A second change keeps what was first shown as the baseline.
    again = after_click(updated, stored({"status": "FAILED"}))
    assert change_text(again) == "status FAILED (was IN_PROGRESS)"


def test_the_label_defaults_to_the_probe_arguments() -> None:
    spec = ContextProbe("get-job", {"job_id": "{job_id}"}, ("status",))
    assert label_of(spec, CALL, {"job_id": "job-7f3a"}) == "job-7f3a"
    labelled = ContextProbe("get-job", {}, ("status",), label="job {job_id}")
    assert label_of(labelled, CALL, {}) == "job job-7f3a"


def policy_with(context: Any) -> dict[str, Any]:
    return {
        "rules": [{"tools": "cancel-job", "action": "require_approval", "approval": {"context": context}}]
    }


def test_the_policy_names_a_probe() -> None:
    probe = {"tool": "get-job", "arguments": {"job_id": "{job_id}"}, "show": ["status"], "timeout": "2s"}
    decision = compile_policy(policy_with(probe)).decide(Identity("a"), "cancel-job", {})
    assert decision.approval is not None
    assert decision.approval.context == ContextProbe(
        "get-job", {"job_id": "{job_id}"}, ("status",), None, 2.0
    )


@pytest.mark.parametrize(
    ("context", "error"),
    [
        ({"tool": "get-job"}, "rules.0.approval.context.show: required"),
        ({"tool": "get-job", "show": ["status"], "timeout": "1m"}, "at most 10s"),
        ({"tool": "get-job", "show": ["a..b"]}, "invalid path"),
        ({"tool": "get-job", "show": ["status"], "argumnets": {}}, "did you mean 'arguments'"),
    ],
)
def test_a_wrong_probe_is_refused_with_its_path(context: dict[str, Any], error: str) -> None:
    with pytest.raises(PolicyError) as e:
        compile_policy(policy_with(context))
    assert any(error in line for line in e.value.errors), e.value.errors


def test_annotated_destructive_tools_need_approval_unless_a_rule_names_them() -> None:
    rules = [
        {"tools": "named", "action": "allow"},
        {"tools": "limited*", "when": [{"path": "x", "op": "exists", "value": True}], "action": "deny"},
        {"tools": "*", "action": "rate_limit", "rate_limit": {"max": 5, "window": "1m"}},
    ]
    policy = compile_policy({"default": "allow", "rules": rules})
    assert policy.names("named") and policy.names("limited-one") and not policy.names("wipe")
    destructive = {"destructiveHint": True}
    default = policy.decide(Identity("a"), "wipe", {})
    assert policy.for_annotations(default, destructive).action == "require_approval"
    assert policy.for_annotations(default, destructive).rule == "(annotated destructive)"
    assert policy.for_annotations(default, {"destructiveHint": True, "readOnlyHint": True}) is default
    assert policy.for_annotations(default, {}) is default
    assert policy.for_annotations(default, destructive).rate_limits == default.rate_limits  # the "*" limit
    named = policy.decide(Identity("a"), "named", {})
    assert policy.for_annotations(named, destructive) is named  # a rule decided: it stands
    stricter = compile_policy({"default": "deny"})
    denied = stricter.decide(Identity("a"), "wipe", {})
    assert stricter.for_annotations(denied, destructive) is denied
    off = compile_policy({"default": "allow", "annotated_destructive": "default"})
    assert off.for_annotations(off.decide(Identity("a"), "wipe", {}), destructive).action == "allow"
    # PolicyLayer's formats keep their meaning.
    hosted = compile_policy({"version": "1", "default": "allow", "tools": {}})
    assert hosted.for_annotations(hosted.decide(Identity("a"), "wipe", {}), destructive).action == "allow"
