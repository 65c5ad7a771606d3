"""Several gateway processes sharing one database (PostgreSQL), and the single-machine SQLite case."""

from __future__ import annotations

import asyncio
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.conftest import DECISION, Admin, executions, gateway_config
from tests.procs import ROOT, SIGNOFF, free_port, running_gateway, start_gateway, write_config
from tests.test_approvals import APPROVERS, HOLD, call_held, policy


def replica_config(exec_log: Path, db: str, name: str, **extra: Any) -> dict[str, Any]:
    return gateway_config(
        exec_log,
        policy(HOLD),
        approvers=APPROVERS,
        database_url=db,
        replica=name,
        approvals={"progress_interval": "1s", "heartbeat_timeout": "2s"},
        **extra,
    )


@pytest.mark.postgres
async def test_a_call_held_on_a_is_approved_through_b_and_resumes_on_a(
    tmp_path: Path, exec_log: Path, pg: Any
) -> None:
    db = pg.new_database()
    with (
        running_gateway(replica_config(exec_log, db, "a"), tmp_path, name="a") as a,
        running_gateway(replica_config(exec_log, db, "b"), tmp_path, name="b") as b,
    ):
        admin_b = Admin(b.control_url)
        latencies = []
        async with Client(a.mcp_url, mode="legacy") as client:
            for i in range(5):
                task = asyncio.create_task(call_held(client, f"x{i}"))
                [pending] = await admin_b.pending()  # B sees A's request: one database
                started = time.monotonic()
                status, body = await admin_b.decide(pending["id"], "approve", "alice")
                assert status == 200, body
                result, _ = await asyncio.wait_for(task, 10)
                latencies.append((time.monotonic() - started) * 1000)
                assert not result.is_error and result.content[0].text == f"deleted x{i}"
        audit = await Admin(a.control_url).audit_for(lambda r: r["decision"] == "require_approval", n=5)
        assert {r["replica"] for r in audit} == {"a"}
    assert len(executions(exec_log, "delete_thing")) == 5
    print(
        f"cross-replica decision-to-result: median {statistics.median(latencies):.1f} ms, "
        f"max {max(latencies):.1f} ms"
    )
    assert statistics.median(latencies) < 1000


@pytest.mark.postgres
async def test_rate_limit_holds_across_replicas(tmp_path: Path, exec_log: Path, pg: Any) -> None:
    db = pg.new_database()
    pol = {
        "default": "allow",
        "rules": [
            {
                "name": "global echo cap",
                "tools": "echo",
                "action": "rate_limit",
                "rate_limit": {"max": 3, "window": "1m", "per": "global"},
            }
        ],
    }
    with (
        running_gateway(gateway_config(exec_log, pol, database_url=db, replica="a"), tmp_path, name="a") as a,
        running_gateway(gateway_config(exec_log, pol, database_url=db, replica="b"), tmp_path, name="b") as b,
    ):
        async with Client(a.mcp_url, mode="legacy") as ca, Client(b.mcp_url, mode="legacy") as cb:
            results = await asyncio.gather(
                *(c.call_tool("echo", {"text": str(i)}) for i, c in enumerate([ca, cb, ca, cb, ca, cb]))
            )
    allowed = [r for r in results if not r.is_error]
    refused = [r for r in results if r.is_error]
    assert len(allowed) == 3 and len(refused) == 3
    assert all(r.meta[DECISION]["reason"] == "rate_limited" for r in refused)
    assert len(executions(exec_log, "echo")) == 3


@pytest.mark.postgres
async def test_the_same_approval_decided_on_both_replicas_at_once(
    tmp_path: Path, exec_log: Path, pg: Any
) -> None:
    db = pg.new_database()
    with (
        running_gateway(replica_config(exec_log, db, "a"), tmp_path, name="a") as a,
        running_gateway(replica_config(exec_log, db, "b"), tmp_path, name="b") as b,
    ):
        admins = [Admin(a.control_url), Admin(b.control_url)]
        async with Client(a.mcp_url, mode="legacy") as client:
            for round_ in range(6):
                task = asyncio.create_task(call_held(client, f"r{round_}"))
                [pending] = await admins[0].pending()
                answers = await asyncio.gather(
                    admins[0].decide(pending["id"], "approve", "alice"),
                    admins[1].decide(pending["id"], "deny", "bob", "no"),
                    admins[1].decide(pending["id"], "approve", "carol"),
                )
                assert sum(1 for status, _ in answers if status == 200) == 1, answers
                result, _ = await asyncio.wait_for(task, 10)
                final = (await admins[1].get(pending["id"]))["status"]
                assert final in ("executed", "denied")
                assert result.is_error == (final == "denied")
    ran = executions(exec_log, "delete_thing")
    assert len(ran) == len({e["args"]["name"] for e in ran})  # never twice


@pytest.mark.postgres
async def test_killing_a_replica_withdraws_its_held_calls_and_the_other_keeps_serving(
    tmp_path: Path, exec_log: Path, pg: Any
) -> None:
    db = pg.new_database()
    a = start_gateway(replica_config(exec_log, db, "a"), tmp_path, name="a", own_process=True)
    try:
        with running_gateway(replica_config(exec_log, db, "b"), tmp_path, name="b") as b:
            admin_b = Admin(b.control_url)
            async with Client(a.mcp_url, mode="legacy") as client:
                tasks = [asyncio.create_task(call_held(client, f"k{i}")) for i in range(3)]
                pending = await admin_b.pending(3)
                a.stop(signal.SIGKILL)
                for task in tasks:
                    with pytest.raises(BaseException):  # noqa: B017 - the connection died
                        await asyncio.wait_for(task, 10)
            deadline = time.monotonic() + 15
            while True:
                states = {(await admin_b.get(p["id"]))["status"] for p in pending}
                if states == {"withdrawn"} or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert states == {"withdrawn"}
            for p in pending:
                assert (await admin_b.decide(p["id"], "approve", "alice"))[0] == 409
            async with Client(b.mcp_url, mode="legacy") as client:
                assert (await client.call_tool("echo", {"text": "b serves"})).content[0].text == "b serves"
    finally:
        a.stop(signal.SIGKILL)
    assert executions(exec_log, "delete_thing") == []


def test_sqlite_refuses_a_second_http_replica(tmp_path: Path, exec_log: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'one.db'}"
    with running_gateway(gateway_config(exec_log, None, database_url=db), tmp_path, name="first"):
        second = gateway_config(exec_log, None, database_url=db)
        second["listen"] = {"host": "127.0.0.1", "port": free_port()}
        path = write_config(second, tmp_path / "second.yaml")
        out = subprocess.run(
            [*SIGNOFF, "serve", "--config", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 1
    assert "SQLite supports one HTTP replica" in out.stderr and "postgresql+asyncpg" in out.stderr


async def test_two_stdio_gateways_on_one_sqlite_file_the_holder_learns_of_a_click_on_the_other(
    tmp_path: Path, exec_log: Path
) -> None:
    """Two desktop clients, each with its own `signoff --stdio`; the click lands on the process not holding the call."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'desk.db'}"

    def params(name: str) -> tuple[StdioServerParameters, str]:
        cfg = gateway_config(exec_log, policy(HOLD), approvers=APPROVERS, database_url=db)
        path = write_config(cfg, tmp_path / f"{name}.yaml")
        control = f"http://127.0.0.1:{cfg['control']['port']}"
        return StdioServerParameters(
            command=SIGNOFF[0], args=[*SIGNOFF[1:], "serve", "--stdio", "--config", str(path)], cwd=str(ROOT)
        ), control

    pa, _control_a = params("desk-a")
    pb, control_b = params("desk-b")
    async with Client(pa, mode="legacy") as a, Client(pb, mode="legacy") as b:
        assert (await b.call_tool("echo", {"text": "b is up"})).content[0].text == "b is up"
        task = asyncio.create_task(call_held(a, "from-a"))
        admin_b = Admin(control_b)
        [pending] = await admin_b.pending()
        started = time.monotonic()
        assert (await admin_b.decide(pending["id"], "approve", "alice"))[0] == 200
        result, _ = await asyncio.wait_for(task, 10)
        print(f"SQLite cross-process wake-up: {(time.monotonic() - started) * 1000:.0f} ms")
        assert not result.is_error and result.content[0].text == "deleted from-a"
    assert len(executions(exec_log, "delete_thing")) == 1
