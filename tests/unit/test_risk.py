"""Risk classes from MCP annotations, tool names and descriptions."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.risk import classify, tokens

# RunPod's MCP server ships no annotations, so its names decide.
RUNPOD = {
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


@pytest.mark.parametrize(("name", "expected"), sorted(RUNPOD.items()))
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


def test_name_beats_description() -> None:
    assert classify("list-pods", "Deletes everything.", None) == "read"
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
