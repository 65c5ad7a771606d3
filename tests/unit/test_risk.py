"""Risk classes from MCP annotations, tool names and descriptions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.risk import Classification, call_risk, classify, explain, path_text, tokens

# Tool names in RunPod's style (no descriptions, no schemas): the name alone decides.
RUNPOD_NAMES = {
    "list-pods": "read",
    "get-pod": "read",
    "create-pod": "write",
    "update-pod": "write",
    "start-pod": "write",
    "stop-pod": "destructive",
    "delete-pod": "destructive",
    "list-endpoints": "read",
    "get-endpoint": "read",
    "create-endpoint": "write",
    "update-endpoint": "write",
    "delete-endpoint": "destructive",
    "list-templates": "read",
    "get-template": "read",
    "create-template": "write",
    "update-template": "write",
    "delete-template": "destructive",
    "list-network-volumes": "read",
    "get-network-volume": "read",
    "create-network-volume": "write",
    "update-network-volume": "write",
    "delete-network-volume": "destructive",
    "list-container-registry-auths": "read",
    "create-container-registry-auth": "write",
    "delete-container-registry-auth": "destructive",
    "cancel-job": "destructive",
    "get-job-status": "read",
    "run-job": "write",
    "runsync": "write",
    "purge-queue": "destructive",
}


@pytest.mark.parametrize(("name", "expected"), sorted(RUNPOD_NAMES.items()))
def test_runpod_tool_names(name: str, expected: str) -> None:
    assert classify(name, None, None) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("deletePod", "destructive"),
        ("listPods", "read"),
        ("getHTTPStatus", "read"),
        ("k8s.scale_deployment", "write"),
        ("db.execute_query", "write"),  # the most dangerous verb in a name wins
        ("list_and_delete_old_pods", "destructive"),
        ("force-push", "destructive"),
        ("reset_password", "destructive"),
        ("search_issues", "read"),
        ("stream_logs", "read"),
        ("health", "read"),
        ("deleteall", "destructive"),  # glued names: write/destructive verbs as prefixes
        ("listener", "write"),  # ...but never "read" by prefix
        ("frobnicate", "write"),  # unknown is write, never read
        ("", "write"),
    ],
)
def test_names(name: str, expected: str) -> None:
    assert classify(name, None, None) == expected


def test_tokens_split_on_separators_and_camel_case() -> None:
    assert tokens("runpod.get-JobStatus_v2") == ["runpod", "get", "job", "status", "v2"]
    assert tokens("parseHTTPResponse") == ["parse", "http", "response"]


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("Deletes a pod and its volume.", "destructive"),
        ("Lists every pod in the account.", "read"),
        ("Fetches the current balance", "read"),
        ("Creates a charge.", "write"),
        ("Queries the audit log", "read"),
        ("Gets a pod. To remove it, use another tool.", "read"),  # the first sentence says what it does
        ("Returns lists of pods or stops them", "destructive"),  # within a sentence, the worst verb wins
        ("Does something wonderful", "write"),
        (None, "write"),
    ],
)
def test_description_fills_in_when_the_name_has_no_verb(description: str | None, expected: str) -> None:
    assert classify("pods", description, None) == expected


def test_name_verbs_beat_description_verbs() -> None:
    # Was ("list-pods", "Deletes everything.") -> read; "deletes everything" now says something is lost
    # and raises the class (see test_loss_words_raise_the_class), so the verbs are checked with "Creates".
    assert classify("list-pods", "Creates a pod.", None) == "read"
    assert classify("delete-pod", "Lists pods.", None) == "destructive"


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({"readOnlyHint": True}, "read"),
        ({"readOnlyHint": True, "destructiveHint": True}, "read"),
        ({"destructiveHint": True}, "destructive"),
        ({"readOnlyHint": False, "destructiveHint": False}, "write"),
        ({"readOnlyHint": False}, "destructive"),  # MCP's default destructiveHint is true
        ({"readOnlyHint": False, "idempotentHint": True}, "destructive"),
        ({"read_only_hint": True}, "read"),
        ({"destructive_hint": True}, "destructive"),
        ({"readOnlyHint": "yes"}, "destructive"),  # not a boolean: ignored, the name decides
        ({}, "destructive"),
    ],
)
def test_annotations_win(annotations: dict[str, Any], expected: str) -> None:
    assert classify("delete-pod", None, annotations) == expected


def test_not_destructive_hint_caps_a_destructive_sounding_name() -> None:
    assert classify("stop-pod", None, {"destructiveHint": False}) == "write"
    assert classify("list-pods", None, {"destructiveHint": False}) == "read"


def test_sdk_annotation_objects_are_read_too() -> None:
    class Annotations:  # shaped like mcp.types.ToolAnnotations
        def model_dump(self, exclude_none: bool = False) -> dict[str, Any]:
            return {"readOnlyHint": True}

    assert classify("delete-pod", None, Annotations()) == "read"  # type: ignore[arg-type]


# -- the real RunPod tool list (@runpod/mcp-server 4.0.0: 68 tools, no annotations) ------------------

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures" / "runpod_tools.json").read_text())
RUNPOD_TOOLS = {tool["name"]: tool for tool in FIXTURE["tools"]}

# The class docs/risk.md gives each tool. Reads are everything that only looks; the rest is spelled out.
RUNPOD = {
    **{
        name: "read"
        for name in RUNPOD_TOOLS
        if name.startswith(("list-", "get-", "stream-")) or name in ("endpoint-health",)
    },
    # writes: they create, run or change something that can be put back (several of them cost money)
    "create-cluster": "write",
    "create-delegation": "write",
    "create-endpoint": "write",
    "create-network-volume": "write",
    "create-pod": "write",
    "create-registry": "write",
    "create-template": "write",
    "deploy-hub-repo": "write",
    "run-endpoint": "write",
    "runsync-endpoint": "write",
    "set-endpoint-gpus": "write",
    "update-cluster": "write",
    "update-network-volume": "write",
    "update-pod": "write",
    "update-template": "write",
    # destructive: something is gone afterwards
    "cancel-job": "destructive",
    "delete-cluster": "destructive",
    "delete-endpoint": "destructive",
    "delete-network-volume": "destructive",
    "delete-pod": "destructive",
    "delete-registry": "destructive",
    "delete-template": "destructive",
    "purge-endpoint-queue": "destructive",
    "revoke-delegation": "destructive",
    "retry-job": "destructive",  # "The previous output is removed and the job is requeued."
    "update-ssh-keys": "destructive",  # "Replaces the account's full set ... are removed"
    "update-endpoint": "destructive",  # "DESTRUCTIVE GOTCHA: ... replaces the GPU selection wholesale"
    "pod-action": "destructive",  # for body.action stop / terminate; a write otherwise
}


def _explain(name: str) -> Classification:
    tool = RUNPOD_TOOLS[name]
    return explain(name, tool.get("description"), tool.get("annotations"), tool.get("inputSchema"))


def test_the_fixture_is_the_whole_runpod_tool_list() -> None:
    assert FIXTURE["package"] == "@runpod/mcp-server" and FIXTURE["version"] == "4.0.0"
    assert len(RUNPOD_TOOLS) == 68 == len(FIXTURE["tools"])
    assert set(RUNPOD) == set(RUNPOD_TOOLS)  # a tool added to the fixture needs a class here
    assert not any("annotations" in tool for tool in FIXTURE["tools"])  # names, words and schemas decide


@pytest.mark.parametrize(("name", "expected"), sorted(RUNPOD.items()))
def test_every_runpod_tool(name: str, expected: str) -> None:
    tool = RUNPOD_TOOLS[name]
    assert (
        classify(name, tool.get("description"), tool.get("annotations"), tool.get("inputSchema")) == expected
    )
    found = _explain(name)
    assert found.risk == expected and found.reasons
    if name != "pod-action":  # the only RunPod tool whose danger hangs on an argument's value
        assert found.dangerous_values == {} and found.base is None


def test_pod_action_is_destructive_for_stop_and_terminate_only() -> None:
    found = _explain("pod-action")
    assert found.risk == "destructive" and found.base == "write"
    assert found.dangerous_values == {"body.action": ("stop", "terminate")}  # reached through two $refs
    assert found.other_values == {"body.action": ("start", "restart")}
    assert "argument body.action accepts stop, terminate" in found.reasons
    assert call_risk(found, {"id": "p1", "body": {"action": "terminate"}}) == "destructive"
    assert call_risk(found, {"id": "p1", "body": {"action": "stop"}}) == "destructive"
    assert call_risk(found, {"id": "p1", "body": {"action": "start"}}) == "write"
    assert call_risk(found, {"id": "p1", "body": {"action": "restart"}}) == "write"
    # a value the schema does not list, or none at all: fail closed
    assert call_risk(found, {"id": "p1", "body": {"action": "TERMINATE"}}) == "destructive"
    assert call_risk(found, {"id": "p1"}) == "destructive"
    # Without the schema the words "permanently delete the pod" make every call destructive: only the
    # schema shows they describe one value of one argument.
    no_schema = explain("pod-action", RUNPOD_TOOLS["pod-action"]["description"], None)
    assert no_schema.risk == "destructive" and no_schema.dangerous_values == {}


def test_retry_job_loses_the_previous_output() -> None:
    found = _explain("retry-job")
    assert found.risk == "destructive"
    assert found.reasons == ("name: 'retry' is a write verb", "description: 'is removed'")


def test_update_ssh_keys_replaces_the_whole_key_set() -> None:
    found = _explain("update-ssh-keys")
    assert found.risk == "destructive"
    assert "replaces the account's full" in found.reasons[1] and "'are removed'" in found.reasons[1]


def test_mentions_of_loss_elsewhere_do_not_raise_a_create() -> None:
    # "...keeps incurring storage charges until it is deleted", "delete with delete-cluster when finished",
    # "BILLABLE from creation until stop/terminate": about later calls of other tools
    for name in ("create-network-volume", "create-cluster", "create-pod"):
        assert _explain(name).reasons == ("name: 'create' is a write verb",)


# -- argument values in schemas ----------------------------------------------------------------------


def _schema(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


@pytest.mark.parametrize(
    ("prop", "dangerous", "others"),
    [
        ({"type": "string", "enum": ["start", "stop", "terminate"]}, ("stop", "terminate"), ("start",)),
        ({"enum": ["archive", "DELETE", "hardDelete", 3, None]}, ("DELETE", "hardDelete"), ("archive",)),
        (
            {"oneOf": [{"const": "soft"}, {"const": "purge", "title": "Purge everything"}]},
            ("purge",),
            ("soft",),
        ),
        ({"anyOf": [{"const": "keep"}, {"const": "wipe"}, {"type": "null"}]}, ("wipe",), ("keep",)),
        ({"const": "reset"}, ("reset",), ()),
        (
            {"type": "string", "description": "One of: start, stop, terminate."},
            ("stop", "terminate"),
            ("start",),
        ),
        ({"type": "string", "description": "What to do (`keep` | `destroy`)"}, ("destroy",), ("keep",)),
        ({"type": "string", "description": "either 'archive' or 'remove'"}, ("remove",), ("archive",)),
        ({"enum": ["a", "b"], "description": "Valid values: a, b, drop"}, ("drop",), ("a", "b")),
    ],
)
def test_a_dangerous_value_makes_calls_with_it_destructive(
    prop: dict[str, Any], dangerous: tuple[str, ...], others: tuple[str, ...]
) -> None:
    found = explain("node-op", "Changes a node.", None, _schema(mode=prop))
    assert found.risk == "destructive" and found.base == "write"
    assert found.dangerous_values == {"mode": dangerous} and found.other_values == {"mode": others}


@pytest.mark.parametrize(
    "description",
    [
        "Used to create, update or delete records.",  # prose, not a list of values
        "Search term, e.g. 'delete', 'remove'",  # examples of a free-form value
        "Container disk in GB (ephemeral, wiped on restart)",
        "ID of the job to cancel",
        "Must be greater than or equal to the current size",
    ],
)
def test_prose_in_a_property_description_is_not_a_list_of_values(description: str) -> None:
    found = explain("update-node", None, None, _schema(x={"type": "string", "description": description}))
    assert found.risk == "write" and found.dangerous_values == {}


def test_values_that_merely_sound_alike_are_harmless() -> None:
    # Values are not stemmed: "STOPPED" / "deleted" are states to filter by, not actions.
    schema = _schema(status={"enum": ["RUNNING", "STOPPED", "TERMINATED", "deleted"]})
    assert classify("list-pods", None, None, schema) == "read"


def test_values_in_nested_objects_refs_and_all_of_get_a_policy_path() -> None:
    schema = {
        "type": "object",
        "properties": {"spec": {"$ref": "#/$defs/Spec"}, "args": {"enum": ["wipe", "keep"]}},
        "$defs": {
            "Spec": {"allOf": [{"properties": {"on-exit": {"$ref": "#/$defs/OnExit"}}}]},
            "OnExit": {"enum": ["idle", "terminate"]},
        },
    }
    found = explain("apply-spec", None, None, schema)
    # `args.x` means the argument x to the policy's path parser: an argument named "args" is written `$.args`
    assert found.dangerous_values == {"spec.on-exit": ("terminate",), "$.args": ("wipe",)}
    assert path_text(("a.b", "c")) == '$["a.b"].c'


def test_a_dangerous_value_no_condition_can_reach_makes_the_whole_tool_destructive() -> None:
    in_list = _schema(ops={"type": "array", "items": {"enum": ["read", "delete"]}})
    in_map = _schema(ops={"type": "object", "additionalProperties": {"enum": ["keep", "purge"]}})
    for schema in (in_list, in_map):
        found = explain("apply-ops", None, None, schema)
        assert found.risk == "destructive" and found.dangerous_values == {} and found.base is None
        assert "argument (inside a list or map) accepts" in found.reasons[-1]


def test_values_a_schema_refuses_are_not_accepted_values() -> None:
    schema = _schema(mode={"type": "string", "not": {"enum": ["delete"]}})
    assert classify("set-mode", None, None, schema) == "write"


def test_a_self_referring_schema_is_read_without_looping() -> None:
    schema = {"$ref": "#/$defs/Node", "$defs": {"Node": {"properties": {"child": {"$ref": "#/$defs/Node"}}}}}
    assert classify("set-tree", None, None, schema) == "write"
    assert classify("set-tree", None, None, {"$ref": "https://example.com/schema.json"}) == "write"


def test_a_tool_destructive_by_name_needs_no_condition() -> None:
    found = explain("delete-pod", None, None, _schema(mode={"enum": ["soft", "purge"]}))
    assert found.risk == "destructive" and found.dangerous_values == {} and found.base is None
    assert call_risk(found, {"mode": "soft"}) == "destructive"


def test_a_read_with_a_dangerous_value_is_a_read_otherwise() -> None:
    found = explain("query-db", None, None, _schema(op={"enum": ["select", "delete"]}))
    assert (found.risk, found.base) == ("destructive", "read")
    assert call_risk(found, {"op": "select"}) == "read"


# -- words in the description ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "description",
    [
        "Replaces all stored keys with the given list.",
        "Replaces the whole configuration.",
        "Writes the file; overwrites an existing one.",
        "Sets the secret. This is permanent and irreversible.",
        "Re-runs the build. The previous artifacts are deleted.",
        "Updates the record. This cannot be undone.",
        "Saves the list (a complete replacement, not a merge).",
        "Resizes the volume; data on it is lost.",
        "Updates the pod and wipes the container disk.",
        "Lists pods. Deletes everything it lists.",
    ],
)
def test_loss_words_raise_the_class(description: str) -> None:
    found = explain("update-thing", description, None)
    assert found.risk == "destructive" and found.reasons[-1].startswith("description: ")
    assert classify("list-things", description, None) == "destructive"  # even over a read verb


@pytest.mark.parametrize(
    "description",
    [
        "Creates a volume. It is billed until it is deleted.",
        "Writes the file; never overwrites an existing one.",
        "A non-destructive update of the labels.",
        "Updates the record. Nothing is removed, only added.",
        "Updates the template. Templates are not deleted by this tool.",
    ],
)
def test_denied_or_later_losses_do_not(description: str) -> None:
    assert classify("update-thing", description, None) == "write"


# -- annotations keep winning ---------------------------------------------------------------------------


def test_annotations_beat_schema_values_and_words() -> None:
    schema = RUNPOD_TOOLS["pod-action"]["inputSchema"]
    words = "Permanently deletes everything."
    assert classify("pod-action", words, {"readOnlyHint": True}, schema) == "read"
    found = explain("pod-action", words, {"readOnlyHint": False, "destructiveHint": False}, schema)
    assert found.risk == "write" and found.dangerous_values == {}
    assert classify("pod-action", None, {"destructiveHint": True}, schema) == "destructive"
    # destructiveHint false alone caps the guess, values included
    found = explain("pod-action", words, {"destructiveHint": False}, schema)
    assert found.risk == "write" and found.dangerous_values == {}
    assert found.reasons[-1] == "annotations: destructiveHint is false"
