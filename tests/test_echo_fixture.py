"""The SDK-free echo fixture answers exactly as the same tools on the SDK's MCPServer do.

Most gateway tests run `echo_server.py` over stdio without the SDK (it starts in milliseconds);
this runs the same conversation against it and against `echo_sdk.py` and compares every message.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.procs import PYTHON, ROOT

FIXTURES = ROOT / "tests" / "fixtures"

CONVERSATION: list[dict[str, Any]] = [
    {
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {"elicitation": {}},
            "clientInfo": {"name": "t", "version": "1"},
        },
    },
    {"method": "notifications/initialized"},
    {"method": "tools/list"},
    {"method": "resources/list"},
    {"method": "resources/templates/list"},
    {"method": "resources/read", "params": {"uri": "fixture://greeting"}},
    {"method": "prompts/list"},
    {"method": "prompts/get", "params": {"name": "summarize", "arguments": {"topic": "MCP"}}},
    {"method": "ping"},
    {"method": "no/such/method"},
    {"method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi ✓"}}},
    {"method": "tools/call", "params": {"name": "delete_thing", "arguments": {"name": "db"}}},
    {"method": "tools/call", "params": {"name": "delete_thing", "arguments": {"name": "db", "force": True}}},
    {"method": "tools/call", "params": {"name": "fail", "arguments": {"message": "boom"}}},
    {"method": "tools/call", "params": {"name": "weather", "arguments": {"city": "Oslo"}}},
    {"method": "tools/call", "params": {"name": "log_and_echo", "arguments": {"text": "yo"}}},
    {
        "method": "tools/call",
        "params": {"name": "sleep", "arguments": {"seconds": 0.2}, "_meta": {"progressToken": "p"}},
    },
    {"method": "tools/call", "params": {"name": "sleep", "arguments": {"seconds": 0.1}}},
    {"method": "tools/call", "params": {"name": "no_such_tool", "arguments": {}}},
    {"method": "tools/call", "params": {"name": "echo", "arguments": {}}},
    {"method": "tools/call", "params": {"name": "echo", "arguments": {"text": 5}}},
    {
        "method": "tools/call",
        "params": {"name": "ask_name", "arguments": {}},
        "answer": {"action": "accept", "content": {"name": "Ada"}},
    },
    {
        "method": "tools/call",
        "params": {"name": "ask_name", "arguments": {}},
        "answer": {"action": "decline"},
    },
]


def converse(script: Path, exec_log: Path) -> list[Any]:
    """Every message the server sent, request by request (a failed validation: its first two lines)."""
    proc = subprocess.Popen(
        [PYTHON, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"EXEC_LOG": str(exec_log), "PATH": "/usr/bin:/bin"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    seen: list[Any] = []
    try:
        for n, step in enumerate(CONVERSATION):
            message = {
                "jsonrpc": "2.0",
                "method": step["method"],
                **({"params": step["params"]} if "params" in step else {}),
            }
            if not step["method"].startswith("notifications/"):
                message["id"] = n
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
            if "id" not in message:
                continue
            while True:
                got = json.loads(proc.stdout.readline())
                if got.get("method") == "elicitation/create":
                    seen.append(got["params"])
                    proc.stdin.write(
                        json.dumps({"jsonrpc": "2.0", "id": got["id"], "result": step["answer"]}) + "\n"
                    )
                    proc.stdin.flush()
                    continue
                result = got.get("result") or {}
                for part in result.get("content", []):
                    if result.get("isError") and "validation error" in part["text"]:
                        part["text"] = "\n".join(part["text"].splitlines()[:3]).split(" [type=")[0]
                seen.append(got)
                if got.get("id") == n:
                    break
    finally:
        proc.stdin.close()
        proc.wait(30)
    return seen


@pytest.mark.timeout(60)
def test_the_sdk_free_echo_fixture_says_what_the_sdk_one_says(tmp_path: Path) -> None:
    plain = converse(FIXTURES / "echo_server.py", tmp_path / "plain.jsonl")
    sdk = converse(FIXTURES / "echo_sdk.py", tmp_path / "sdk.jsonl")
    assert plain == sdk
    assert len(plain) > len(CONVERSATION)  # progress and log notifications came too

    def executed(log: Path) -> list[Any]:
        return [(r["tool"], r["args"]) for r in map(json.loads, log.read_text().splitlines())]

    assert executed(tmp_path / "plain.jsonl") == executed(tmp_path / "sdk.jsonl")
    assert ("delete_thing", {"name": "db", "force": False}) in executed(tmp_path / "plain.jsonl")
