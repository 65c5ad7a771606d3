"""The pure parts of approving for a while and of edit-and-approve: the policy's `grant`, what a grant
covers, checking an edit, and the Slack messages (goldens in tests/unit/golden; regenerate with
`UPDATE_GOLDEN=1 pytest tests/unit/test_grants_and_edits.py` and review the diff)."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

import pytest

from bot import blocks
from proxy import edits, grants
from proxy.identity import Identity
from proxy.policy import compile_policy
from proxy.policy_spec import Decision, GrantSpec, PolicyError
from proxy.records import APPROVED, EXECUTED, Grant
from proxy.redact import display_mask
from tests.unit.test_blocks import CREATED, GOLDEN, NOW, approval, check_limits, decided

SCHEMA = {
    "type": "object",
    "properties": {"endpoint_id": {"type": "string"}, "job_id": {"type": "string"}},
    "required": ["endpoint_id", "job_id"],
    "additionalProperties": False,
}


def grant_rule(grant: Any) -> dict[str, Any]:
    return {
        "default": "allow",
        "rules": [{"name": "r", "tools": "t", "action": "require_approval", "approval": {"grant": grant}}],
    }


# -- the policy -------------------------------------------------------------------------------------


def test_a_rule_offers_grants_and_the_offer_defaults_to_max() -> None:
    spec = compile_policy(grant_rule({"max": "1h", "same": ["a.b", "c"], "offer": ["1h", "30m", "30m"]}))
    decision = spec.decide(Identity("x"), "t", {})
    assert decision.approval is not None
    assert decision.approval.grant == GrantSpec(max=3600.0, same=("a.b", "c"), offer=(1800.0, 3600.0))
    only_max = compile_policy(grant_rule({"max": "2h", "same": "endpoint_id"})).decide(Identity("x"), "t", {})
    assert only_max.approval is not None and only_max.approval.grant == GrantSpec(
        7200.0, ("endpoint_id",), (7200.0,)
    )


def test_grant_mistakes_are_refused_with_their_path() -> None:
    def errors(grant: Any) -> list[str]:
        with pytest.raises(PolicyError) as info:
            compile_policy(grant_rule(grant))
        return info.value.errors

    assert errors({"max": "1h", "same": [], "offer": ["2h"]}) == [
        "rules.0.approval.grant.offer: 7200s is longer than max (3600s)"
    ]
    assert errors({"max": "1h"}) == ["rules.0.approval.grant.same: required"]
    assert "rules.0.approval.grant.same" in errors({"max": "1h", "same": ["a["]})[0]
    assert errors({"max": "1h", "same": [], "for": "1h"}) == ["rules.0.approval.grant.for: unknown field"]


def test_grants_change_the_revision_and_policies_without_them_keep_theirs() -> None:
    plain = {"default": "allow", "rules": [{"name": "r", "tools": "t", "action": "require_approval"}]}
    # The revision of a policy without grants, as it was before grants existed.
    assert compile_policy(plain).revision == "a51f636aa3d2"
    assert compile_policy(grant_rule({"max": "1h", "same": []})).revision != compile_policy(plain).revision


def test_approval_defaults_may_offer_grants() -> None:
    policy = compile_policy(
        {
            "default": "allow",
            "approval_defaults": {"grant": {"max": "10m", "same": ["id"]}},
            "rules": [{"name": "r", "tools": "t", "action": "require_approval"}],
        }
    )
    decision = policy.decide(Identity("x"), "t", {})
    assert decision.approval is not None and decision.approval.grant == GrantSpec(600.0, ("id",), (600.0,))


# -- what a grant covers -------------------------------------------------------------------------------


def test_a_scope_is_the_values_at_the_same_paths() -> None:
    same = ("endpoint_id", "spec.gpu")
    base = grants.scope_of({"endpoint_id": "ep-1", "spec": {"gpu": "A100"}, "job": "j1"}, same)
    assert base.values == {"endpoint_id": "ep-1", "spec.gpu": "A100"}
    # Other arguments do not matter; key order does not either.
    assert (
        grants.scope_of({"spec": {"gpu": "A100", "x": 1}, "job": "j2", "endpoint_id": "ep-1"}, same) == base
    )
    assert grants.scope_of({"endpoint_id": "ep-2", "spec": {"gpu": "A100"}}, same).hash != base.hash
    # A missing value is not a null one, and the paths themselves are part of the hash.
    missing = grants.scope_of({"endpoint_id": "ep-1"}, same)
    null = grants.scope_of({"endpoint_id": "ep-1", "spec": {"gpu": None}}, same)
    assert len({missing.hash, null.hash, base.hash}) == 3
    assert grants.scope_of({"endpoint_id": "ep-1"}, ("endpoint_id",)).hash != missing.hash
    assert grants.scope_of({"a": [1, 2]}, ("a[1]",)).values == {"a[1]": 2}


def test_durations_offered_chosen_and_agreed() -> None:
    offered = approval(grant_offer={"offer": [1800.0, 3600.0], "same": [], "values": {}, "hash": "h"})
    assert (
        grants.choose_duration(offered, "30m") == 1800.0 and grants.choose_duration(offered, 3600) == 3600.0
    )
    assert grants.choose_duration(offered, "45m") == "choose one of: 30 min, 1 h"
    assert "invalid duration" in str(grants.choose_duration(offered, "soon"))
    assert "does not offer" in str(grants.choose_duration(approval(), "30m"))
    assert grants.quorum_duration([1800.0, 3600.0]) == 1800.0
    assert grants.quorum_duration([1800.0, None]) is None and grants.quorum_duration([]) is None
    assert [grants.spoken(s) for s in (2, 90, 1800, 3600, 5400, 86400, 172800)] == [
        "2 s",
        "1 min 30 s",
        "30 min",
        "1 h",
        "1 h 30 min",
        "1 day",
        "2 days",
    ]


def test_a_grant_from_an_edited_approval_covers_the_edited_values() -> None:
    a = approval(
        grant_offer=grants.offer_of(GrantSpec(3600.0, ("endpoint_id",), (3600.0,)), {"endpoint_id": "ep-123"})
    )
    plain = grants.new_grant(a, "alice", 3600.0, NOW, None)
    edited = grants.new_grant(a, "alice", 3600.0, NOW, {"endpoint_id": "ep-999", "job_id": "j"})
    assert plain.values == {"endpoint_id": "ep-123"} and edited.values == {"endpoint_id": "ep-999"}
    assert edited.values_hash == grants.scope_of({"endpoint_id": "ep-999"}, ("endpoint_id",)).hash
    assert plain.expires_at - plain.created_at == timedelta(hours=1) and plain.approval_id == a.id
    assert grants.covers(plain) == 'runpod.cancel-job by ci-agent with endpoint_id = "ep-123"'
    assert grants.grant_state(plain, NOW) == "live"
    assert grants.grant_state(plain, NOW + timedelta(hours=2)) == "expired"


def test_a_secret_in_a_same_argument_is_masked_in_the_stored_offer() -> None:
    token = "ghp_" + "a1B2" * 9
    offer = grants.offer_of(GrantSpec(60.0, ("token",), (60.0,)), {"token": token})
    assert token not in json.dumps(offer) and offer["values"] == display_mask({"token": token})
    assert offer["hash"] == grants.scope_of({"token": token}, ("token",)).hash


# -- checking an edit ---------------------------------------------------------------------------------


def test_edits_are_checked_against_the_schema() -> None:
    assert edits.schema_problems(SCHEMA, {"endpoint_id": "ep", "job_id": "j"}) is None
    assert (
        edits.schema_problems(SCHEMA, {"endpoint_id": 3, "job_id": "j"})
        == "endpoint_id: 3 is not of type 'string'"
    )
    missing = edits.schema_problems(SCHEMA, {"endpoint_id": "ep", "extra": 1})
    assert missing is not None and "'job_id' is a required property" in missing and "extra" in missing
    assert "cannot be checked" in str(edits.schema_problems({"type": "no-such-type"}, {}))
    assert edits.schema_problems(None, {"anything": 1}) is None


def test_an_edit_may_not_leave_the_door_it_came_through() -> None:
    allow, deny = Decision("allow", "reads"), Decision("deny", "no prod", "prod is off limits")
    assert edits.policy_problem(allow, True, "oncall", 1) is None
    assert edits.policy_problem(deny, True, "oncall", 1) == (
        "the policy denies the edited call (rule 'no prod': prod is off limits)"
    )
    assert "hides the tool" in str(edits.policy_problem(Decision("hidden", "(hidden)"), True, "oncall", 1))
    same = compile_policy({"default": "require_approval", "approval_defaults": {"approvers": "oncall"}})
    stricter = compile_policy(
        {"default": "require_approval", "approval_defaults": {"approvers": "dba", "quorum": 2}}
    )
    assert edits.policy_problem(same.decide(Identity("x"), "t", {}), True, "oncall", 1) is None
    problem = edits.policy_problem(stricter.decide(Identity("x"), "t", {}), True, "oncall", 1)
    assert problem is not None and "needs other approvers (dba, quorum 2)" in problem


def test_what_changed_and_what_is_refused_as_masked() -> None:
    before = {"name": "db1", "spec": {"replicas": 3, "tags": ["a", "b"]}, "keep": 1}
    after = {"name": "db2", "spec": {"replicas": 3.0, "tags": ["a", "c"]}, "keep": 1, "force": True}
    assert edits.changed_paths(before, after) == ["force", "name", "spec.tags[1]"]
    assert edits.changed_paths({"a": [1]}, {"a": [1, 2]}) == ["a"]
    assert edits.changed_paths({"a": True}, {"a": 1}) == ["a"]
    assert edits.changed_paths({"odd key": 1}, {}) == ['["odd key"]']
    masked = display_mask({"env": {"TOKEN": "ghp_" + "x1Y2" * 9}})
    assert edits.masked_secret(masked) == "env.TOKEN" and edits.masked_secret({"env": {"TOKEN": "t"}}) is None
    assert edits.parse_edit('{"a": 1}') == {"a": 1}
    assert edits.parse_edit("[1]") == "the arguments must be a JSON object ({…})"
    assert str(edits.parse_edit("{a}")).startswith("not valid JSON")


# -- the Slack messages --------------------------------------------------------------------------------

OFFER = grants.offer_of(
    GrantSpec(3600.0, ("endpoint_id",), (1800.0, 3600.0)), {"endpoint_id": "ep-123", "job_id": "job-456"}
)


def a_grant(**overrides: Any) -> Grant:
    fields: dict[str, Any] = {
        "id": "gr_0123456789abcdef",
        "identity": "ci-agent",
        "upstream": "runpod",
        "tool": "runpod.cancel-job",
        "rule": "on-call approves cancels",
        "same": ["endpoint_id"],
        "values": {"endpoint_id": "ep-123"},
        "values_hash": "1" * 64,
        "created_by": "U_ALICE",
        "created_at": CREATED + timedelta(minutes=3),
        "expires_at": CREATED + timedelta(minutes=33),
        "approval_id": "apr_0123456789abcdef",
    }
    return Grant(**{**fields, **overrides})


EDITED = {"endpoint_id": "ep-123", "job_id": "job-789"}
CASES: dict[str, Any] = {
    "pending_with_grants": lambda: blocks.request_message(
        approval(grant_offer=OFFER, input_schema=SCHEMA), [], now=NOW
    ),
    "approved_for_a_while": lambda: blocks.decided_message(
        decided(EXECUTED, decided_by="U_ALICE", grant_offer=OFFER, grant_id="gr_0123456789abcdef"),
        ["U_ALICE"],
        a_grant(),
        now=NOW + timedelta(minutes=5),
    ),
    "grant_revoked": lambda: blocks.decided_message(
        decided(EXECUTED, decided_by="U_ALICE", grant_offer=OFFER, grant_id="gr_0123456789abcdef"),
        ["U_ALICE"],
        a_grant(revoked_at=CREATED + timedelta(minutes=10), revoked_by="U_BOB"),
        now=NOW + timedelta(minutes=11),
    ),
    "approved_edited": lambda: blocks.decided_message(
        decided(
            APPROVED,
            decided_by="U_ALICE",
            input_schema=SCHEMA,
            edited_arguments=EDITED,
            edited_hash="2" * 64,
            edited_paths=["job_id"],
        ),
        ["U_ALICE"],
    ),
    "edit_modal": lambda: blocks.edit_modal(approval(input_schema=SCHEMA)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    rendered = CASES[name]()
    path = GOLDEN / f"{name}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(rendered, indent=2, ensure_ascii=False) + "\n")
    assert rendered == json.loads(path.read_text()), f"{name} changed; see the module docstring"
    check_limits(rendered, "modal" if rendered.get("type") == "modal" else "message")


def buttons(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["action_id"]: e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]}


def test_the_buttons_say_what_they_do() -> None:
    pending = buttons(CASES["pending_with_grants"]())
    for30, for60 = pending[f"{blocks.APPROVE_FOR}_0"], pending[f"{blocks.APPROVE_FOR}_1"]
    assert (for30["text"]["text"], for30["value"]) == ("Approve for 30 min", "apr_0123456789abcdef|1800")
    assert (for60["text"]["text"], for60["value"]) == ("Approve for 1 h", "apr_0123456789abcdef|3600")
    assert for30["confirm"]["style"] == "danger"  # cancel-job is destructive, for a while too
    assert pending[blocks.EDIT_APPROVE]["value"] == "apr_0123456789abcdef"
    # No schema to check an edit against, or several approvers: no edit button.
    assert blocks.EDIT_APPROVE not in buttons(blocks.request_message(approval(), [], now=NOW))
    quorum = blocks.request_message(approval(input_schema=SCHEMA, quorum=2), [], now=NOW)
    assert blocks.EDIT_APPROVE not in buttons(quorum)

    live = CASES["approved_for_a_while"]()
    assert live["blocks"][1]["text"]["text"].startswith(
        ":white_check_mark: *Approved* by <@U_ALICE> for 30 min (grant `gr_0123456789abcdef`) <!date^"
    )
    assert set(buttons(live)) == {blocks.REVOKE_GRANT}
    assert buttons(CASES["grant_revoked"]()) == {}
    assert "*revoked* by <@U_BOB>" in json.dumps(CASES["grant_revoked"]())
    ended = blocks.decided_message(
        decided(EXECUTED, decided_by="U_ALICE", grant_id="gr_0123456789abcdef"),
        ["U_ALICE"],
        a_grant(),
        now=CREATED + timedelta(hours=1),
    )
    assert buttons(ended) == {} and "ended" in json.dumps(ended)
    edited = json.dumps(CASES["approved_edited"]())
    assert "with edited arguments" in edited and "0" * 64 in edited and "2" * 64 in edited


def test_the_edit_modal_holds_the_arguments_as_shown_or_is_not_offered() -> None:
    modal = CASES["edit_modal"]()
    [field] = [b for b in modal["blocks"] if b.get("block_id") == blocks.EDIT_BLOCK]
    assert json.loads(field["element"]["initial_value"]) == {"endpoint_id": "ep-123", "job_id": "job-456"}
    assert blocks.edit_modal(approval(arguments={"q": "x" * 3100})) is None
