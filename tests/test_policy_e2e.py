"""Policy through a real gateway: hide, deny, rate limits, identities, hot reload, shadow mode, audit."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.conftest import DECISION, RAW_INIT, Admin, executions
from tests.procs import running_gateway
from tests.test_approvals import client_as


async def test_hidden_tool_is_absent_and_refused_exactly_like_an_unknown_one(
    tmp_path: Path, exec_log: Path, sqlite_gwconf: Any
) -> None:
    pol = {"default": "allow", "hide": ["delete_*", "crash"]}
    with running_gateway(sqlite_gwconf(pol), tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert "delete_thing" not in names and "crash" not in names and "echo" in names
            errors = []
            for tool in ("delete_thing", "no_such_tool"):
                with pytest.raises(MCPError) as err:
                    await client.call_tool(tool, {"name": "x"})
                errors.append((err.value.code, err.value.message.replace(tool, "<tool>"), err.value.data))
            assert errors[0] == errors[1]  # same code, same message shape: existence does not leak
        records = await Admin(gw.control_url).audit_for(lambda r: r["outcome"] == "unknown_tool", n=2)
        assert {r["tool"] for r in records} == {"delete_thing", "no_such_tool"}
    assert executions(exec_log) == []


async def test_deny_reason_reaches_the_agent(tmp_path: Path, exec_log: Path, sqlite_gwconf: Any) -> None:
    pol = {
        "default": "allow",
        "rules": [
            {
                "name": "no force deletes",
                "tools": "delete_thing",
                "when": [{"path": "force", "op": "eq", "value": True}],
                "action": "deny",
                "reason": "Force-deleting skips the trash; delete without force.",
            }
        ],
    }
    with running_gateway(sqlite_gwconf(pol), tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            denied = await client.call_tool("delete_thing", {"name": "a", "force": True})
            assert denied.is_error
            assert denied.meta[DECISION] == {"reason": "denied", "rule": "no force deletes"}
            assert "Force-deleting skips the trash" in denied.content[0].text
            # delete_thing declares an output schema, so the refusal carries no structuredContent to break it.
            assert denied.structured_content is None
            ok = await client.call_tool("delete_thing", {"name": "b"})
            assert not ok.is_error
    assert [e["args"]["name"] for e in executions(exec_log, "delete_thing")] == ["b"]


async def test_refusal_keeps_structured_content_out_of_tools_with_an_output_schema(
    tmp_path: Path, exec_log: Path, sqlite_gwconf: Any
) -> None:
    pol = {"default": "allow", "rules": [{"tools": "weather", "action": "deny", "reason": "no weather"}]}
    with running_gateway(sqlite_gwconf(pol), tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            await client.list_tools()
            denied = await client.call_tool("weather", {"city": "Oslo"})  # the SDK validates output schemas
            assert denied.is_error and denied.structured_content is None
            assert denied.meta[DECISION]["reason"] == "denied"


async def test_rate_limit_refuses_the_extra_call_then_allows_after_the_window(
    tmp_path: Path, exec_log: Path, gwconf: Any
) -> None:
    pol = {
        "default": "allow",
        "rules": [
            {
                "name": "echo burst",
                "tools": "echo",
                "action": "rate_limit",
                "rate_limit": {"max": 3, "window": "2s", "per": "identity"},
            }
        ],
    }
    with running_gateway(gwconf(pol), tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            for i in range(3):
                assert not (await client.call_tool("echo", {"text": str(i)})).is_error
                if i == 0:  # the gateway counted the first call before it answered
                    first_answered = time.monotonic()
            over = await client.call_tool("echo", {"text": "4th"})
            assert over.is_error
            info = over.meta[DECISION]
            assert info["reason"] == "rate_limited" and info["rule"] == "echo burst"
            assert 0 < info["retryAfterSeconds"] <= 2.0
            assert "at most 3 calls per 2 seconds" in over.content[0].text
            assert "Retry in" in over.content[0].text
            # A failed call consumes no quota, and other tools are not limited.
            assert not (await client.call_tool("weather", {"city": "x"})).is_error
            await asyncio.sleep(max(0.0, 2.05 - (time.monotonic() - first_answered)))
            assert not (await client.call_tool("echo", {"text": "later"})).is_error
        await Admin(gw.control_url).audit_for(lambda r: r["decision"] == "rate_limited")
    assert [e["args"]["text"] for e in executions(exec_log, "echo")] == ["0", "1", "2", "later"]


async def test_rate_limit_per_session_and_global(tmp_path: Path, exec_log: Path, gwconf: Any) -> None:
    pol = {
        "default": "allow",
        "rules": [
            {
                "tools": "echo",
                "action": "rate_limit",
                "rate_limit": {"max": 1, "window": "1m", "per": "session"},
            },
            {
                "tools": "weather",
                "action": "rate_limit",
                "rate_limit": {"max": 1, "window": "1m", "per": "global"},
            },
        ],
    }
    with running_gateway(gwconf(pol), tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as a, Client(gw.mcp_url, mode="legacy") as b:
            assert not (await a.call_tool("echo", {"text": "a"})).is_error
            assert (await a.call_tool("echo", {"text": "a2"})).is_error
            assert not (await b.call_tool("echo", {"text": "b"})).is_error  # another session has its own
            assert not (await a.call_tool("weather", {"city": "a"})).is_error
            assert (await b.call_tool("weather", {"city": "b"})).meta[DECISION]["reason"] == "rate_limited"


async def test_bearer_tokens_and_identity_scoped_rules(
    tmp_path: Path, exec_log: Path, sqlite_gwconf: Any
) -> None:
    pol = {
        "default": "deny",
        "rules": [
            {"name": "agents may echo", "groups": ["agents"], "tools": "echo", "action": "allow"},
            {"name": "ops may delete", "identities": ["ops-bot"], "tools": "delete_thing", "action": "allow"},
        ],
    }
    import hashlib

    ops_hash = hashlib.sha256(b"ops-token-value").hexdigest()
    identities = {
        "ci-agent": {"token_env": "CI_TOKEN", "groups": ["agents"]},
        "ops-bot": {"token_sha256": ops_hash, "groups": ["agents"]},
    }
    config = sqlite_gwconf(pol, identities=identities)
    with running_gateway(config, tmp_path, env={"CI_TOKEN": "ci-token-value"}) as gw:
        async with httpx2.AsyncClient() as http:
            body = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "0"},
                },
            }
            headers = {"Accept": "application/json, text/event-stream"}
            for auth in (None, "Bearer wrong", "Basic Y2k6dG9rZW4=", "Bearer"):
                h = dict(headers, **({"Authorization": auth} if auth else {}))
                r = await http.post(gw.mcp_url, json=body, headers=h)
                assert r.status_code == 401, auth
                assert r.headers["www-authenticate"].startswith("Bearer")
                error = r.json()["error"]
                assert error["code"] == -32001 and error["message"].startswith("Unauthorized")
        async with client_as(gw.mcp_url, "ci-token-value") as ci:
            assert (await ci.call_tool("echo", {"text": "hi"})).content[0].text == "hi"
            refused = await ci.call_tool("delete_thing", {"name": "x"})
            assert refused.meta[DECISION] == {"reason": "denied", "rule": "(default)"}
        async with client_as(gw.mcp_url, "ops-token-value") as ops:
            assert not (await ops.call_tool("delete_thing", {"name": "y"})).is_error
        records = await Admin(gw.control_url).audit_for(lambda r: r["tool"] in ("echo", "delete_thing"), n=3)
        assert {(r["identity"], r["tool"], r["outcome"]) for r in records} == {
            ("ci-agent", "echo", "ok"),
            ("ci-agent", "delete_thing", "denied"),
            ("ops-bot", "delete_thing", "ok"),
        }
    log = gw.output()
    for secret in ("ci-token-value", "ops-token-value", "wrong"):
        assert secret not in log


async def test_a_session_cannot_be_used_with_another_identitys_token(
    tmp_path: Path, exec_log: Path, sqlite_gwconf: Any
) -> None:
    identities = {"a": {"token_env": "TOKEN_A"}, "b": {"token_env": "TOKEN_B"}}
    config = sqlite_gwconf(None, identities=identities)
    with running_gateway(config, tmp_path, env={"TOKEN_A": "token-of-a", "TOKEN_B": "token-of-b"}) as gw:
        async with httpx2.AsyncClient() as http:
            headers = {"Accept": "application/json, text/event-stream", "Authorization": "Bearer token-of-a"}
            r = await http.post(gw.mcp_url, json=RAW_INIT, headers=headers)
            session = r.headers["mcp-session-id"]
            call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
            as_b = dict(headers, **{"Authorization": "Bearer token-of-b", "Mcp-Session-Id": session})
            r = await http.post(gw.mcp_url, json=call, headers=as_b)
            assert r.status_code == 404  # as if the session did not exist


async def test_policy_hot_reload_valid_then_invalid(
    tmp_path: Path, exec_log: Path, sqlite_gwconf: Any
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump({"default": "allow"}))
    with running_gateway(sqlite_gwconf(str(policy_file)), tmp_path) as gw:
        changed = asyncio.Event()

        async def on_message(message: Any) -> None:
            if getattr(message, "method", "") == "notifications/tools/list_changed":
                changed.set()

        async with Client(gw.mcp_url, mode="legacy", message_handler=on_message) as client:
            assert not (await client.call_tool("echo", {"text": "before"})).is_error
            policy_file.write_text(
                yaml.safe_dump(
                    {
                        "default": "allow",
                        "hide": ["crash"],
                        "rules": [
                            {"name": "no echo", "tools": "echo", "action": "deny", "reason": "echo is off"}
                        ],
                    }
                )
            )
            for _ in range(60):
                result = await client.call_tool("echo", {"text": "after"})
                if result.is_error:
                    break
                await asyncio.sleep(0.1)
            assert result.meta[DECISION]["rule"] == "no echo" and "echo is off" in result.content[0].text
            await asyncio.wait_for(changed.wait(), 5)  # clients learn that the tool list changed
            assert "crash" not in {t.name for t in (await client.list_tools()).tools}
            policy_file.write_text("default: allow\nrules:\n  - {tools: echo, action: explode}\n")
            await asyncio.sleep(2.0)
            still = await client.call_tool("echo", {"text": "still denied"})
            assert still.meta[DECISION]["rule"] == "no echo"  # the old policy keeps running
    log = gw.output()
    assert "policy reloaded (revision" in log and "added no echo" in log and "hide [] → ['crash']" in log
    assert "policy reload refused, the previous policy stays in force" in log and "rules.0.action" in log


async def test_policylayer_policy_json_loads_unchanged(
    tmp_path: Path, exec_log: Path, sqlite_gwconf: Any
) -> None:
    pl = {"version": "1", "default": "deny", "hide": ["delete_thing"], "tools": {"echo": {}}}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(pl))
    with running_gateway(sqlite_gwconf(str(path)), tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert "delete_thing" not in names and "echo" in names
            assert (await client.call_tool("echo", {"text": "listed"})).content[0].text == "listed"
            denied = await client.call_tool("weather", {"city": "x"})
            assert denied.meta[DECISION] == {"reason": "denied", "rule": "(default deny)"}
            with pytest.raises(MCPError, match="Unknown tool"):
                await client.call_tool("delete_thing", {"name": "x"})


async def test_intercept_yaml_loads_unchanged(tmp_path: Path, exec_log: Path, sqlite_gwconf: Any) -> None:
    intercept = {
        "version": "1",
        "default": "deny",
        "tools": {
            "echo": {"rules": [{"name": "echo burst", "rate_limit": "2/minute"}]},
            "delete_thing": {
                "rules": [
                    {
                        "name": "no force",
                        "conditions": [{"path": "args.force", "op": "neq", "value": True}],
                        "on_deny": "never force",
                    }
                ]
            },
        },
    }
    path = tmp_path / "intercept.yaml"
    path.write_text(yaml.safe_dump(intercept))
    with running_gateway(sqlite_gwconf(str(path)), tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            assert not (await client.call_tool("echo", {"text": "1"})).is_error
            assert not (await client.call_tool("echo", {"text": "2"})).is_error
            assert (await client.call_tool("echo", {"text": "3"})).meta[DECISION]["reason"] == "rate_limited"
            forced = await client.call_tool("delete_thing", {"name": "a", "force": True})
            assert forced.meta[DECISION]["reason"] == "denied" and "never force" in forced.content[0].text
            assert not (await client.call_tool("delete_thing", {"name": "a", "force": False})).is_error
            # A condition on a missing argument is false (fail closed): leaving `force` out is refused too.
            assert (await client.call_tool("delete_thing", {"name": "a"})).meta[DECISION][
                "reason"
            ] == "denied"
            assert (await client.call_tool("weather", {"city": "x"})).meta[DECISION]["reason"] == "denied"


async def test_shadow_mode_records_but_enforces_nothing(
    tmp_path: Path, exec_log: Path, sqlite_gwconf: Any
) -> None:
    pol = {
        "mode": "shadow",
        "default": "allow",
        "hide": ["crash"],
        "rules": [{"name": "would deny", "tools": "delete_thing", "action": "deny", "reason": "not yet"}],
    }
    with running_gateway(sqlite_gwconf(pol), tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            assert "crash" in {t.name for t in (await client.list_tools()).tools}
            assert not (await client.call_tool("delete_thing", {"name": "x"})).is_error
        [record] = await Admin(gw.control_url).audit_for(lambda r: r["tool"] == "delete_thing")
        assert (record["decision"], record["enforced"], record["rule"], record["outcome"]) == (
            "deny",
            False,
            "would deny",
            "ok",
        )
    assert len(executions(exec_log, "delete_thing")) == 1


async def test_audit_records_every_outcome_with_secrets_redacted(
    tmp_path: Path, exec_log: Path, gwconf: Any
) -> None:
    pol = {"default": "allow", "rules": [{"tools": "fail", "action": "deny", "reason": "no"}]}
    with running_gateway(gwconf(pol, max_argument_bytes=2000), tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            await client.call_tool(
                "echo",
                {
                    "text": "Bearer abcdefghijklmnopqrstuvwxyz",
                    "api_key": "k-123",
                    "nested": {"password": "hunter2", "db": "postgres://u:pw@h/db"},
                },
            )
            await client.call_tool("fail", {})
            big = await client.call_tool("echo", {"text": "x" * 5000})
            assert big.meta[DECISION]["reason"] == "arguments_too_large"
            with pytest.raises(MCPError):
                await client.call_tool("nope", {})
        admin = Admin(gw.control_url)
        records = await admin.audit_for(lambda r: True, n=4)
    by_outcome = {r["outcome"]: r for r in records}
    assert set(by_outcome) == {"ok", "denied", "arguments_too_large", "unknown_tool"}
    args = by_outcome["ok"]["arguments"]
    assert args == {
        "text": "Bearer [REDACTED]",
        "api_key": "[REDACTED]",
        "nested": {"password": "[REDACTED]", "db": "postgres://u:[REDACTED]@h/db"},
    }
    for r in records:
        assert r["identity"] == "anonymous" and r["session"] and r["latencyMs"] >= 0
    dumped = json.dumps(records)
    assert "hunter2" not in dumped and "k-123" not in dumped and "abcdefghijklmnop" not in dumped
    # The CLI reads the same records and exports JSON Lines.
    import subprocess

    from tests.procs import ROOT, SIGNOFF

    out = subprocess.run(
        [*SIGNOFF, "audit", str(gw.config_path), "--jsonl", "--decision", "deny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["tool"], r["outcome"]) for r in lines] == [("fail", "denied")]
