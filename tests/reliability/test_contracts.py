"""Focused, deterministic checks of promises the load and fault runs rely on (one behaviour each).

Each began as a gateway bug the reliability suite found (an `xfail(strict=True, reason="BUG: …")`
test until the fix landed); they stay as regression tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.conftest import DECISION, Admin, executions, gateway_config, person_token
from tests.pg import remove, start_postgres
from tests.procs import running_gateway, start_gateway
from tests.reliability.harness import (
    APPROVERS,
    GATEWAY_ENV,
    TOKENS,
    export_audit,
    load_config,
    session,
)

HOLD_DELETES = {
    "name": "deletes need approval",
    "tools": "delete_thing",
    "action": "require_approval",
    "approval": {"approvers": "oncall", "timeout": "30s"},
}


async def test_waiting_retry_after_seconds_is_enough(tmp_path: Path, exec_log: Path) -> None:
    """retryAfterSeconds is never earlier than the moment the refused call's slot frees.

    The slot was taken at a server time no earlier than when that request was sent, and the refusal
    computed no later than when its answer arrived: so the true wait is at least
    `sent(take) + window - received(refusal)`. The gap before the refused call is swept across the
    window so the advertised value lands everywhere between two tenths of a second.
    """
    window = 0.3
    pol = {
        "default": "allow",
        "rules": [
            {
                "name": "one echo per window",
                "tools": "echo",
                "action": "allow",
                "rate_limit": {"max": 1, "window": f"{window}s", "per": "global"},
            }
        ],
    }
    db = f"sqlite+aiosqlite:///{tmp_path / 'retry.db'}"
    too_early: list[tuple[float, float]] = []
    advertised: list[float] = []
    with running_gateway(gateway_config(exec_log, pol, database_url=db), tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            await client.list_tools()
            rounds = 14
            for i in range(rounds):
                await asyncio.sleep(window)  # the window is empty again
                sent = time.monotonic()
                if (await client.call_tool("echo", {"text": f"take-{i}"})).is_error:
                    continue  # a slow machine: the previous window had not quite passed
                await asyncio.sleep(i / rounds * (window - 0.03))  # sweep the gap across the window
                refusal = await client.call_tool("echo", {"text": f"refused-{i}"})
                received = time.monotonic()
                if not refusal.is_error:
                    continue  # a slow machine: the window passed before the second call arrived
                retry = refusal.meta[DECISION]["retryAfterSeconds"]
                advertised.append(retry)
                at_least = sent + window - received
                if retry < at_least:
                    too_early.append((retry, round(at_least, 3)))
    print(f"retry-after advertised {advertised}; earlier than the slot frees: {too_early}")
    assert len(advertised) >= 5, "too few refusals to judge"
    assert all(r > 0 for r in advertised)
    assert too_early == []


async def test_an_approved_call_that_fails_upstream_reports_its_outcome(
    tmp_path: Path, exec_log: Path
) -> None:
    pol = {
        "default": "allow",
        "rules": [
            {
                "name": "sleep needs approval",
                "tools": "sleep",
                "action": "require_approval",
                "approval": {"approvers": "oncall", "timeout": "30s"},
            }
        ],
    }
    db = f"sqlite+aiosqlite:///{tmp_path / 'outcome.db'}"
    config = gateway_config(exec_log, pol, approvers=APPROVERS, database_url=db)
    config["upstreams"]["echo"]["call_timeout"] = "1s"
    with running_gateway(config, tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            call = asyncio.create_task(client.call_tool("sleep", {"seconds": 5}))
            [pending] = await admin.pending()
            assert (await admin.decide(pending["id"], "approve", "alice"))[0] == 200
            result = await asyncio.wait_for(call, 15)
        assert result.meta[DECISION]["reason"] == "upstream_timeout"
        await asyncio.sleep(0.5)
        approval = await admin.get(pending["id"])
        log = gw.output()
    assert approval["status"] == "executed"
    assert approval["outcome"] is not None, approval  # what the approver is shown: it failed
    assert f"approval {pending['id']} ran:" in log  # the channel's post_outcome was called


@pytest.mark.postgres
@pytest.mark.timeout(120)
async def test_database_unavailable_refuses_calls_that_need_it_clearly(
    tmp_path: Path, exec_log: Path
) -> None:
    """With the database down, a call that needs it fails closed with a reason; others are served."""
    pg = await asyncio.to_thread(start_postgres)
    answers: dict[str, Any] = {}
    try:
        db = await asyncio.to_thread(pg.new_database)
        with running_gateway(load_config(exec_log, db), tmp_path, env=GATEWAY_ENV) as gw:
            async with session(gw.mcp_url, TOKENS["agent-a"]) as client:
                await client.list_tools()
                await asyncio.to_thread(pg.stop)
                try:
                    echo = await client.call_tool("echo", {"text": "db down"})
                    for tool, args in (("delete_thing", {"name": "approve-db"}), ("weather", {"city": "db"})):
                        try:
                            answers[tool] = await client.call_tool(tool, args)
                        except MCPError as e:
                            answers[tool] = e
                finally:
                    await asyncio.to_thread(pg.start)
            await asyncio.sleep(2)  # the audit writer retries until the database is back
            audit = {r["tool"]: r for r in await asyncio.to_thread(export_audit, db)}
    finally:
        await asyncio.to_thread(remove, pg)
    assert echo.content[0].text == "db down"  # a call that needs no database is served
    print(
        {
            k: (v.error.code, v.error.message) if isinstance(v, MCPError) else v.meta
            for k, v in answers.items()
        }
    )
    print({k: v["outcome"] for k, v in audit.items()})
    for tool, answer in answers.items():
        assert not isinstance(answer, MCPError), (
            f"{tool}: JSON-RPC error {answer.error.code}: {answer.error.message}"
        )
        assert answer.is_error and answer.meta[DECISION]["reason"], answer
        assert "Errno" not in answer.content[0].text and "127.0.0.1" not in answer.content[0].text
        assert audit[tool]["outcome"] != "cancelled", audit[tool]
    assert executions(exec_log, "delete_thing") == [] and executions(exec_log, "weather") == []


@pytest.mark.postgres
@pytest.mark.timeout(120)
async def test_an_approved_request_whose_holder_died_is_withdrawn(
    tmp_path: Path, exec_log: Path, pg: Any
) -> None:
    """Approved through replica B while A (holding the call) is frozen, then A dies: the row ends withdrawn."""
    db = pg.new_database()

    def replica(name: str) -> dict[str, Any]:
        return gateway_config(
            exec_log,
            {"default": "allow", "rules": [HOLD_DELETES]},
            approvers=APPROVERS,
            database_url=db,
            replica=name,
            approvals={"progress_interval": "1s", "heartbeat_timeout": "2s"},
        )

    a = start_gateway(replica("a"), tmp_path, name="a", own_process=True)
    try:
        with running_gateway(replica("b"), tmp_path, name="b", own_process=True) as b:
            admin_b = Admin(b.control_url)
            async with Client(a.mcp_url, mode="legacy") as client:
                call = asyncio.create_task(client.call_tool("delete_thing", {"name": "orphan"}))
                [pending] = await admin_b.pending()
                os.kill(a.popen.pid, signal.SIGSTOP)  # A holds the call but cannot act on the decision
                assert (await admin_b.decide(pending["id"], "approve", "alice"))[0] == 200
                a.stop(signal.SIGKILL)
                with pytest.raises(BaseException):  # noqa: B017 - the connection died with A
                    await asyncio.wait_for(call, 10)
            deadline = time.monotonic() + 10  # B's heartbeat check (2 s) and sweep (every 5 s)
            while time.monotonic() < deadline:
                status = (await admin_b.get(pending["id"]))["status"]
                if status != "approved":
                    break
                await asyncio.sleep(0.5)
    finally:
        a.stop(signal.SIGKILL)
    assert executions(exec_log, "delete_thing") == []
    assert status == "withdrawn"


async def test_a_client_on_the_newest_protocol_is_served(tmp_path: Path, exec_log: Path) -> None:
    """The Python SDK's default client (mode='auto', the newest protocol) works through the gateway."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'modern.db'}"
    with running_gateway(gateway_config(exec_log, None, database_url=db), tmp_path) as gw:
        try:
            async with Client(gw.mcp_url) as client:  # mode="auto", the SDK's default
                names = {t.name for t in (await client.list_tools()).tools}
                result = await client.call_tool("echo", {"text": "modern"})
        except Exception as e:
            raise AssertionError(f"the default SDK client failed through the gateway: {e!r}") from e
    assert "echo" in names and result.content[0].text == "modern"


@pytest.mark.postgres
@pytest.mark.timeout(120)
async def test_an_approve_click_that_failed_half_way_can_be_repeated(
    tmp_path: Path, exec_log: Path, pg: Any
) -> None:
    """With a quorum, a vote whose decision failed with the database connection can be given again."""
    import asyncpg
    import httpx2

    db = pg.new_database()
    two_of = {**HOLD_DELETES, "approval": {**HOLD_DELETES["approval"], "quorum": 2}}
    config = gateway_config(
        exec_log, {"default": "allow", "rules": [two_of]}, approvers=APPROVERS, database_url=db
    )
    dsn = db.replace("postgresql+asyncpg://", "postgresql://")
    with running_gateway(config, tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            call = asyncio.create_task(client.call_tool("delete_thing", {"name": "half-way"}))
            try:
                [pending] = await admin.pending()
                status, first_vote = await admin.decide(pending["id"], "approve", "alice")
                assert status == 200 and "1 of 2" in first_vote["message"], first_vote
                url = f"{gw.control_url}/api/approvals/{pending['id']}/decide"
                body = {"decision": "approve"}  # bob's vote, which completes the quorum
                locker, killer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
                bob = {"Authorization": f"Bearer {person_token('bob')}"}
                async with httpx2.AsyncClient(headers=bob, timeout=30) as http:
                    try:
                        # Hold the approval row so the decision's UPDATE waits, then drop that
                        # connection: the vote is already committed, the transition fails.
                        tx = locker.transaction()
                        await tx.start()
                        await locker.execute("SELECT 1 FROM approval WHERE id = $1 FOR UPDATE", pending["id"])
                        first = asyncio.create_task(http.post(url, json=body))
                        waiting: list[Any] = []
                        for _ in range(200):  # the decision's transaction, waiting on the row lock
                            waiting = await killer.fetch(
                                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                "AND datname = current_database() AND pid <> $1",
                                locker.get_server_pid(),
                            )
                            if waiting:
                                break
                            await asyncio.sleep(0.05)
                        assert waiting, "the decision never waited on the row lock"
                        await killer.execute("SELECT pg_terminate_backend($1)", waiting[0]["pid"])
                        first_status = (await first).status_code
                        await tx.rollback()
                    finally:
                        await locker.close()
                        await killer.close()
                    again = await http.post(url, json=body)
                state = (await admin.get(pending["id"]))["status"]
                if again.status_code == 200:
                    result = await asyncio.wait_for(call, 10)
            finally:
                call.cancel()
    print(f"first click: {first_status}; again: {again.status_code} {again.text}; {state}")
    assert first_status >= 500  # the click failed: the database connection died under it
    assert again.status_code == 200, again.text  # a second click completes the decision
    assert not result.is_error and result.content[0].text == "deleted half-way"
