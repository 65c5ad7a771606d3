"""Approvals end to end: a real gateway, a real MCP client, decisions through the approvals API."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import DECISION, Admin, executions
from tests.nodetools import run_ts_client
from tests.procs import running_gateway, start_gateway

HOLD = {
    "name": "deletes need approval",
    "tools": "delete_thing",
    "action": "require_approval",
    "approval": {"approvers": "oncall", "timeout": "20s"},
}
APPROVERS = {"oncall": {"people": ["alice", "bob", "carol"]}}


def policy(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"default": "allow", "rules": list(rules)}


def client_as(url: str, token: str, **kw: Any) -> Client:
    """An MCP client presenting a bearer token."""
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=300)
    )
    return Client(streamable_http_client(url, http_client=http), mode="legacy", **kw)


async def call_held(client: Client, name: str = "db1", **kw: Any) -> Any:
    progress: list[str] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    result = await client.session.call_tool(
        "delete_thing", {"name": name}, progress_callback=on_progress, **kw
    )
    return result, progress


async def test_approve_runs_the_exact_call_once(tmp_path: Path, exec_log: Path, gwconf: Any) -> None:
    config = gwconf(policy(HOLD), approvers=APPROVERS)
    with running_gateway(config, tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            task = asyncio.create_task(call_held(client, "db1"))
            [pending] = await admin.pending()
            assert pending["tool"] == "delete_thing" and pending["arguments"] == {"name": "db1"}
            assert pending["risk"] == "destructive" and pending["rule"] == "deletes need approval"
            assert executions(exec_log) == []  # nothing runs while it waits
            await asyncio.sleep(1.2)  # long enough for progress notifications
            status, body = await admin.decide(pending["id"], "approve", "alice")
            assert (status, body["status"]) == (200, "approved")
            result, progress = await asyncio.wait_for(task, 10)
        assert not result.is_error and result.content[0].text == "deleted db1"
        assert progress and all(
            p.startswith("waiting for approval on the approvals page (") for p in progress
        )
        assert [e["args"] for e in executions(exec_log, "delete_thing")] == [{"name": "db1", "force": False}]
        # A second click changes nothing and says who decided.
        status, body = await admin.decide(pending["id"], "deny", "bob", "too late")
        assert status == 409 and "Already approved by alice" in body["message"]
        [record] = await admin.audit_for(
            lambda r: r["tool"] == "delete_thing" and r["decision"] == "require_approval"
        )
        assert (
            record["approvers"] == "alice"
            and record["outcome"] == "ok"
            and record["approvalId"] == pending["id"]
        )
        assert (await admin.get(pending["id"]))["outcome"] == "ok"


async def test_deny_with_reason_reaches_the_agent(tmp_path: Path, exec_log: Path, gwconf: Any) -> None:
    config = gwconf(policy(HOLD), approvers=APPROVERS)
    with running_gateway(config, tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            task = asyncio.create_task(call_held(client))
            [pending] = await admin.pending()
            status, _ = await admin.decide(pending["id"], "deny", "bob", None)
            assert status == 400  # a denial needs a reason
            status, body = await admin.decide(pending["id"], "deny", "bob", "db1 holds the billing data")
            assert status == 200 and body["status"] == "denied"
            result, _ = await asyncio.wait_for(task, 10)
    assert result.is_error
    info = result.meta[DECISION]
    assert info["reason"] == "denied" and info["decidedBy"] == "bob" and info["approvalId"] == pending["id"]
    assert info["humanReason"] == "db1 holds the billing data"
    assert "Denied by bob: db1 holds the billing data" in result.content[0].text
    assert executions(exec_log, "delete_thing") == []


async def test_nobody_answers_the_call_expires_denied(tmp_path: Path, exec_log: Path, gwconf: Any) -> None:
    rule = {**HOLD, "approval": {"approvers": "oncall", "timeout": "1s"}}
    with running_gateway(gwconf(policy(rule), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            started = time.monotonic()
            result, _ = await call_held(client)
            assert 0.9 < time.monotonic() - started < 5
        assert result.is_error and result.meta[DECISION]["reason"] == "expired"
        approval = await admin.get(result.meta[DECISION]["approvalId"])
        assert approval["status"] == "expired"
        status, body = await admin.decide(approval["id"], "approve", "alice")
        assert status == 409 and "expired" in body["message"]
    assert executions(exec_log, "delete_thing") == []


async def test_quorum_two_of_three(tmp_path: Path, exec_log: Path, gwconf: Any) -> None:
    rule = {**HOLD, "approval": {"approvers": "oncall", "timeout": "20s", "quorum": 2}}
    with running_gateway(gwconf(policy(rule), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            task = asyncio.create_task(call_held(client))
            [pending] = await admin.pending()
            status, body = await admin.decide(pending["id"], "approve", "alice")
            assert status == 200 and body["status"] == "pending" and "1 of 2" in body["message"]
            status, body = await admin.decide(pending["id"], "approve", "alice")
            assert status == 409 and "already approved" in body["message"]
            assert (await admin.get(pending["id"]))["votes"] == ["alice"]
            assert not task.done() and executions(exec_log, "delete_thing") == []
            status, body = await admin.decide(pending["id"], "approve", "carol")
            assert status == 200 and body["status"] == "approved"
            result, _ = await asyncio.wait_for(task, 10)
        assert not result.is_error
        assert (await admin.get(pending["id"]))["decidedBy"] == "alice,carol"
    assert len(executions(exec_log, "delete_thing")) == 1


async def test_self_approval_and_non_approvers_are_refused_and_audited(
    tmp_path: Path, exec_log: Path, sqlite_gwconf: Any
) -> None:
    config = sqlite_gwconf(
        policy(HOLD),
        approvers=APPROVERS,
        identities={"agent": {"token_env": "AGENT_TOKEN", "slack_user": "U_ALICE"}},
    )
    with running_gateway(config, tmp_path, env={"AGENT_TOKEN": "s3cret-agent"}) as gw:
        admin = Admin(gw.control_url)
        async with client_as(gw.mcp_url, "s3cret-agent") as client:
            task = asyncio.create_task(call_held(client))
            [pending] = await admin.pending()
            assert pending["identity"] == "agent" and pending["actsFor"] == "U_ALICE"
            status, body = await admin.decide(pending["id"], "approve", "U_ALICE")
            assert status == 403 and "on your behalf" in body["message"]
            status, body = await admin.decide(pending["id"], "approve", "dave")  # a person, not in oncall
            assert status == 403 and "not an approver" in body["message"]
            assert (await admin.get(pending["id"]))["status"] == "pending" and not task.done()
            status, body = await admin.decide(pending["id"], "approve", "U_BOB")
            assert status == 200
            result, _ = await asyncio.wait_for(task, 10)
            assert not result.is_error
        refused = await admin.audit_for(lambda r: r["decision"] == "refused_click", n=2)
        assert sorted((r["approvers"], r["reason"]) for r in refused) == [
            ("alice", "self-approval"),
            ("dave", "not an approver"),
        ]
    assert len(executions(exec_log, "delete_thing")) == 1


async def test_cancelled_call_withdraws_and_a_late_approval_runs_nothing(
    tmp_path: Path, exec_log: Path, sqlite_gwconf: Any
) -> None:
    with running_gateway(sqlite_gwconf(policy(HOLD), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            with pytest.raises(Exception):  # noqa: B017 - the SDK raises its timeout error
                await call_held(client, read_timeout_seconds=1.0)
            approval_id = (await admin.audit_for(lambda r: r["tool"] == "delete_thing"))[0]["approvalId"]
            for _ in range(50):
                if (await admin.get(approval_id))["status"] == "withdrawn":
                    break
                await asyncio.sleep(0.1)
            approval = await admin.get(approval_id)
            assert approval["status"] == "withdrawn" and "cancelled" in approval["reason"]
            status, body = await admin.decide(approval_id, "approve", "alice")
            assert status == 409 and body["message"].startswith("Withdrawn")
            assert (await client.call_tool("echo", {"text": "still fine"})).content[0].text == "still fine"
        [record] = await admin.audit_for(lambda r: r["decision"] == "require_approval")
        assert record["outcome"] == "cancelled"
        [late] = await admin.audit_for(lambda r: r["decision"] == "late_click")
        assert (late["approvers"], late["reason"]) == ("alice", "withdrawn")
    assert executions(exec_log, "delete_thing") == []


async def test_client_disconnect_withdraws(tmp_path: Path, exec_log: Path, sqlite_gwconf: Any) -> None:
    with running_gateway(sqlite_gwconf(policy(HOLD), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        client = Client(gw.mcp_url, mode="legacy")
        await client.__aenter__()
        task = asyncio.create_task(call_held(client))
        [pending] = await admin.pending()
        task.cancel()
        await client.__aexit__(None, None, None)  # terminates the MCP session (HTTP DELETE)
        for _ in range(100):
            if (await admin.get(pending["id"]))["status"] != "pending":
                break
            await asyncio.sleep(0.1)
        assert (await admin.get(pending["id"]))["status"] == "withdrawn"
        status, _ = await admin.decide(pending["id"], "approve", "alice")
        assert status == 409
    assert executions(exec_log, "delete_thing") == []


async def test_pending_mode_call_again_runs_exactly_once(tmp_path: Path, exec_log: Path, gwconf: Any) -> None:
    rule = {**HOLD, "approval": {"approvers": "oncall", "timeout": "30s", "mode": "pending"}}
    with running_gateway(gwconf(policy(rule), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            first = await client.call_tool("delete_thing", {"name": "db9"})
            assert first.is_error and first.meta[DECISION]["reason"] == "approval_pending"
            approval_id = first.meta[DECISION]["approvalId"]
            assert "call the same tool again" in first.content[0].text.lower()
            again = await client.call_tool("delete_thing", {"name": "db9"})
            assert again.meta[DECISION] == {
                **again.meta[DECISION],
                "reason": "approval_pending",
                "approvalId": approval_id,
            }
            assert len(await admin.pending()) == 1  # asking again does not create a second request
            assert (await admin.decide(approval_id, "approve", "alice"))[0] == 200
            other = await client.call_tool("delete_thing", {"name": "db10"})  # other arguments: not approved
            assert other.meta[DECISION]["reason"] == "approval_pending"
            assert other.meta[DECISION]["approvalId"] != approval_id
            ran = await client.call_tool("delete_thing", {"name": "db9"})
            assert not ran.is_error and ran.content[0].text == "deleted db9"
            once_more = await client.call_tool("delete_thing", {"name": "db9"})  # single use
            assert once_more.meta[DECISION]["reason"] == "approval_pending"
            assert once_more.meta[DECISION]["approvalId"] not in (
                approval_id,
                other.meta[DECISION]["approvalId"],
            )
            # A denial is reported once to the agent that calls again.
            denied_id = once_more.meta[DECISION]["approvalId"]
            await admin.decide(denied_id, "deny", "bob", "enough deleting for today")
            told = await client.call_tool("delete_thing", {"name": "db9"})
            assert told.meta[DECISION]["reason"] == "denied" and "enough deleting" in told.content[0].text
    assert [e["args"]["name"] for e in executions(exec_log, "delete_thing")] == ["db9"]


@pytest.mark.node
async def test_ts_client_with_short_timeout_survives_a_long_hold(
    tmp_path: Path, exec_log: Path, sqlite_gwconf: Any
) -> None:
    config = sqlite_gwconf(policy(HOLD), approvers=APPROVERS, approvals={"progress_interval": "1s"})
    with running_gateway(config, tmp_path) as gw:
        admin = Admin(gw.control_url)

        async def approve_late() -> None:
            [pending] = await admin.pending(timeout=30)
            await asyncio.sleep(10)  # a 10 s hold, against a client whose request timeout is 3 s
            await admin.decide(pending["id"], "approve", "alice")

        approver = asyncio.create_task(approve_late())
        out = await asyncio.to_thread(
            run_ts_client,
            [
                "progress",
                "--url",
                gw.mcp_url,
                "--tool",
                "delete_thing",
                "--args",
                json.dumps({"name": "ts"}),
                "--timeout",
                "3000",
                "--reset-timeout-on-progress",
            ],
            60,
        )
        await approver
    assert out.get("error") is None, out
    assert out["elapsedMs"] >= 10_000
    assert out["result"]["content"][0]["text"] == "deleted ts"
    assert len(out["progress"]) >= 8
    assert all("waiting for approval" in (p.get("message") or "") for p in out["progress"])
    assert len(executions(exec_log, "delete_thing")) == 1


async def test_restart_withdraws_held_calls_and_runs_nothing(
    tmp_path: Path, exec_log: Path, gwconf: Any
) -> None:
    pending_rule = {
        "name": "echo later",
        "tools": "echo",
        "action": "require_approval",
        "approval": {"approvers": "oncall", "timeout": "60s", "mode": "pending"},
    }
    short = {
        "name": "sleep needs ok",
        "tools": "sleep",
        "action": "require_approval",
        "approval": {"approvers": "oncall", "timeout": "2s"},
    }
    config = gwconf(
        policy(HOLD, pending_rule, short),
        approvers=APPROVERS,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}",
    )
    gw = start_gateway(config, tmp_path, name="first", own_process=True)
    admin = Admin(gw.control_url)
    try:
        async with Client(gw.mcp_url, mode="legacy") as client:
            held = asyncio.create_task(call_held(client))
            sleeper = asyncio.create_task(client.call_tool("sleep", {"seconds": 0.1}))
            later = await client.call_tool("echo", {"text": "after restart"})
            assert later.meta[DECISION]["reason"] == "approval_pending"
            await admin.pending(3)
            gw.stop(signal.SIGKILL)  # no clean shutdown: the held calls die with the process
            for task in (held, sleeper):
                with pytest.raises(BaseException):  # noqa: B017
                    await asyncio.wait_for(task, 10)
    except BaseException:
        gw.stop(signal.SIGKILL)
        raise
    await asyncio.sleep(2.5)  # the sleep request is now overdue
    with running_gateway(config, tmp_path, name="second") as gw2:
        admin = Admin(gw2.control_url)
        rows = {a["tool"]: a for a in (await _all(admin))}
        assert rows["delete_thing"]["status"] == "withdrawn"
        assert "restarted" in rows["delete_thing"]["reason"]
        assert rows["sleep"]["status"] == "expired"
        assert rows["echo"]["status"] == "pending"  # pending mode survives: the agent calls again
        for tool in ("delete_thing", "sleep"):
            status, _ = await admin.decide(rows[tool]["id"], "approve", "alice")
            assert status == 409
        assert (await admin.decide(rows["echo"]["id"], "approve", "alice"))[0] == 200
        async with Client(gw2.mcp_url, mode="legacy") as client:
            ran = await client.call_tool("echo", {"text": "after restart"})
            assert ran.content[0].text == "after restart"
    assert [e["tool"] for e in executions(exec_log)] == ["echo"]


async def _all(admin: Admin) -> list[dict[str, Any]]:
    async with httpx2.AsyncClient(headers=admin.headers) as http:
        return (await http.get(admin.base + "/api/approvals?status=all")).json()["approvals"]


async def test_concurrent_decisions_race_to_exactly_one_outcome(
    tmp_path: Path, exec_log: Path, gwconf: Any
) -> None:
    """Many held calls, each hit at once by approve, deny and its own expiry: one decision each."""
    n = 24
    rule = {**HOLD, "approval": {"approvers": "oncall", "timeout": "3s"}}
    with running_gateway(gwconf(policy(rule), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            calls = [asyncio.create_task(call_held(client, f"item{i}")) for i in range(n)]
            pending = await admin.pending(n)
            created = {a["arguments"]["name"]: a for a in pending}
            # Wait until the requests are about to expire, then fire approve and deny together.
            await asyncio.sleep(max(0.0, 2.95 - (time.monotonic() - _t0(pending))))
            clicks = []
            for a in pending:
                clicks.append(admin.decide(a["id"], "approve", "alice"))
                clicks.append(admin.decide(a["id"], "deny", "bob", "race"))
            answers = await asyncio.gather(*clicks)
            results = await asyncio.gather(*calls)
        accepted = [body for status, body in answers if status == 200]
        assert len(accepted) <= n
        finals = {name: (await admin.get(a["id"]))["status"] for name, a in created.items()}
        assert set(finals.values()) <= {"executed", "denied", "expired"}
        ran = [e["args"]["name"] for e in executions(exec_log, "delete_thing")]
        assert sorted(ran) == sorted(name for name, s in finals.items() if s == "executed")
        assert len(ran) == len(set(ran))  # never twice
        for (result, _), i in zip(results, range(n), strict=True):
            status = finals[f"item{i}"]
            if status == "executed":
                assert not result.is_error
            else:
                assert result.meta[DECISION]["reason"] == status
        # every winning click is the recorded decision
        assert len(accepted) == sum(1 for s in finals.values() if s in ("executed", "denied"))
        print(
            f"race: {sum(s == 'executed' for s in finals.values())} approved, "
            f"{sum(s == 'denied' for s in finals.values())} denied, "
            f"{sum(s == 'expired' for s in finals.values())} expired"
        )


def _t0(pending: list[dict[str, Any]]) -> float:
    """Monotonic time matching the oldest request's creation (from its seconds left)."""
    oldest = min(a["secondsLeft"] for a in pending)
    return time.monotonic() - (3.0 - oldest)
