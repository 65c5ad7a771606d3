"""The official TypeScript SDK client works through the gateway (HTTP front) in front of server-everything.

`@modelcontextprotocol/server-everything` runs as the gateway's stdio upstream; `tests/node/ts_client.mjs`
(the TS SDK's `Client` + `StreamableHTTPClientTransport`, under Node 22) lists tools, calls `echo` and
`get-sum`, gets progress from `trigger-long-running-operation` with `onprogress`, and cancels a long
operation, after which the gateway keeps serving.

Needs the Node tools (`make node`); without them these tests FAIL, they do not skip.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import nodetools
from tests.procs import Gateway, running_gateway

pytestmark = pytest.mark.node

LONG_OP = "trigger-long-running-operation"


def _config() -> dict[str, Any]:
    cmd = nodetools.server_everything_cmd()
    return {"upstreams": {"everything": {"command": cmd[0], "args": cmd[1:]}}}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("ts-client")
    with running_gateway(_config(), tmp, name="gateway", own_process=True) as gw:
        yield gw


def ts(gw: Gateway, *args: str, timeout: float = 60.0) -> dict[str, Any]:
    out = nodetools.run_ts_client(["--url", gw.mcp_url, *args], timeout=timeout)
    assert "fatal" not in out and "usageError" not in out, (
        f"ts_client failed: {out}\n--- gateway log ---\n" + (gw.output()[-4000:])
    )
    return out


def _texts(result: dict[str, Any]) -> list[str]:
    return [c["text"] for c in result.get("content", []) if c.get("type") == "text"]


def test_list_tools_same_as_direct(gateway: Gateway) -> None:
    through = ts(gateway, "list-tools")
    assert through["ok"] is True
    assert through["protocolVersion"] == "2025-11-25"
    names = [t["name"] for t in through["tools"]]
    for want in ("echo", "get-sum", LONG_OP):
        assert want in names, names

    # The same TS client straight against server-everything over stdio: the tool definitions
    # (names, titles, descriptions, schemas, annotations) must be exactly what the gateway shows.
    cmd = nodetools.server_everything_cmd()
    direct = nodetools.run_ts_client(["--command", cmd[0], "--cmd-arg", cmd[1], "list-tools"], timeout=60)
    assert direct["ok"] is True, direct
    by_name = {t["name"]: t for t in through["tools"]}
    diffs = {
        t["name"]: {"direct": t, "gateway": by_name.get(t["name"])}
        for t in direct["tools"]
        if by_name.get(t["name"]) != t
    }
    assert not diffs, "tool definitions differ through the gateway:\n" + json.dumps(diffs, indent=1)[:6000]
    assert sorted(by_name) == sorted(t["name"] for t in direct["tools"])


def test_call_echo_and_get_sum(gateway: Gateway) -> None:
    echo = ts(gateway, "call", "--tool", "echo", "--args", json.dumps({"message": "hello through signoff"}))
    assert echo["ok"] is True, echo
    assert echo["result"].get("isError") is not True
    assert _texts(echo["result"]) == ["Echo: hello through signoff"]

    total = ts(gateway, "call", "--tool", "get-sum", "--args", json.dumps({"a": 2, "b": 3}))
    assert total["ok"] is True, total
    assert _texts(total["result"]) == ["The sum of 2 and 3 is 5."]


def test_unknown_tool_is_an_error(gateway: Gateway) -> None:
    out = ts(gateway, "call", "--tool", "no-such-tool", "--args", "{}")
    failed = out["ok"] is False or out["result"].get("isError") is True
    assert failed, out


def test_progress_keeps_a_short_timeout_alive(gateway: Gateway) -> None:
    # 2 s of work with a 1.5 s request timeout: only progress (relayed with the client's own token,
    # resetting the TS SDK's timer via resetTimeoutOnProgress) lets the call finish.
    out = ts(
        gateway,
        "progress",
        "--tool",
        LONG_OP,
        "--args",
        json.dumps({"duration": 2, "steps": 4}),
        "--timeout",
        "1500",
        "--reset-timeout-on-progress",
    )
    assert out["ok"] is True, out
    assert _texts(out["result"]) == ["Long running operation completed. Duration: 2 seconds, Steps: 4."]
    progress = out["progress"]
    assert [p["progress"] for p in progress] == [1, 2, 3, 4], progress
    assert all(p["total"] == 4 for p in progress), progress
    assert out["callElapsedMs"] >= 1900, out


def test_cancel_then_keep_serving(gateway: Gateway) -> None:
    out = ts(
        gateway,
        "cancel",
        "--tool",
        LONG_OP,
        "--args",
        json.dumps({"duration": 10, "steps": 10}),
        "--after",
        "1500",
        "--then-tool",
        "echo",
        "--then-args",
        json.dumps({"message": "after cancel"}),
    )
    assert out["aborted"] is True, out
    assert "lateResult" not in out, out
    assert "cancelled by ts_client" in out["error"]["message"], out
    assert out["callElapsedMs"] < 5000, out
    assert [p["progress"] for p in out["progress"]][:1] == [1], out  # the op was really running
    follow = out["followUp"]
    assert follow["ok"] is True, out
    assert _texts(follow["result"]) == ["Echo: after cancel"]

    # A new client session also works, and another long operation still completes.
    again = ts(gateway, "call", "--tool", "get-sum", "--args", json.dumps({"a": 40, "b": 2}))
    assert _texts(again["result"]) == ["The sum of 40 and 2 is 42."], again
    done = ts(gateway, "progress", "--tool", LONG_OP, "--args", json.dumps({"duration": 0.5, "steps": 2}))
    assert done["ok"] is True and [p["progress"] for p in done["progress"]] == [1, 2], done
    assert gateway.popen.poll() is None, "gateway exited"


def test_bearer_header_reaches_the_gateway(tmp_path: Path) -> None:
    token = "ts-client-test-token"
    config = {**_config(), "identities": {"alice": {"token_env": "SIGNOFF_TS_TEST_TOKEN"}}}
    with running_gateway(config, tmp_path, env={"SIGNOFF_TS_TEST_TOKEN": token}) as gw:
        ok = nodetools.run_ts_client(
            [
                "--url",
                gw.mcp_url,
                "--header",
                f"Authorization: Bearer {token}",
                "call",
                "--tool",
                "echo",
                "--args",
                json.dumps({"message": "as alice"}),
            ],
        )
        assert ok.get("ok") is True and _texts(ok["result"]) == ["Echo: as alice"], ok
        denied = nodetools.run_ts_client(
            [
                "--url",
                gw.mcp_url,
                "--header",
                "Authorization: Bearer wrong",
                "call",
                "--tool",
                "echo",
                "--args",
                json.dumps({"message": "nope"}),
            ],
        )
        assert denied.get("ok") is not True, denied
        assert denied["fatal"].get("code") == 401, denied  # refused at the HTTP front, before any MCP message
