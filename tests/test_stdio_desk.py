"""Several stdio gateways from one config on one machine, as desktop clients start them.

Each client (here the Python SDK's stdio client, one process each) starts its own `signoff serve
--stdio`. None may crash on the shared control port or overwrite another's token; a request held by
any of them is seen and decided through whichever serves the control port; when that one exits,
another takes the port over; nothing secret reaches a client's stderr (clients write it to log files).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.conftest import PEOPLE, executions, person_token, stdio_echo
from tests.procs import ROOT, SIGNOFF, free_port, write_config
from tests.test_approvals import APPROVERS, HOLD, policy


@contextlib.asynccontextmanager
async def desktop_client(config_path: Path, stderr_log: Path) -> AsyncIterator[tuple[ClientSession, float]]:
    """A client that starts its own stdio gateway; yields it and how long `initialize` took."""
    params = StdioServerParameters(
        command=SIGNOFF[0],
        args=[*SIGNOFF[1:], "serve", "--stdio", "--config", str(config_path)],
        cwd=str(ROOT),
    )
    with stderr_log.open("w") as errlog:
        started = time.monotonic()
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            yield client, time.monotonic() - started


def cli(*args: str, person: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SIGNOFF_APPROVER_TOKEN"}
    if person is not None:
        env["SIGNOFF_APPROVER_TOKEN"] = person_token(person)
    return subprocess.run([*SIGNOFF, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


async def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


class Running:
    """A desktop client (and so its stdio gateway) alive in its own task until `leave()`."""

    def __init__(self, path: Path, log: Path) -> None:
        self.log = log
        self.client: ClientSession | None = None
        self.took = 0.0
        self.ready = asyncio.Event()
        self._leave = asyncio.Event()
        self.task = asyncio.create_task(self._run(path))

    async def _run(self, path: Path) -> None:
        async with desktop_client(path, self.log) as (client, took):
            self.client, self.took = client, took
            await client.list_tools()
            self.ready.set()
            await self._leave.wait()

    async def leave(self) -> None:
        self._leave.set()
        await asyncio.wait_for(self.task, 30)


async def test_three_stdio_gateways_from_one_config_share_one_desk(tmp_path: Path, exec_log: Path) -> None:
    control_port = free_port()
    config: dict[str, Any] = {
        "upstreams": {"echo": stdio_echo(exec_log)},
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'desk.db'}",
        "control": {"host": "127.0.0.1", "port": control_port},  # no admin token: generated, shared
        "people": PEOPLE,
        "approvers": APPROVERS,
        "policy": policy(HOLD),
        "approvals": {"progress_interval": "1s"},
    }
    path = write_config(config, tmp_path / "desk.yaml")
    logs = [tmp_path / f"client-{i}.stderr" for i in range(3)]
    desks = [Running(path, log) for log in logs]  # all three at once
    try:
        await asyncio.wait_for(asyncio.gather(*(d.ready.wait() for d in desks)), 60)
        # Each answered `initialize` quickly although three started at once on two cores (the bench
        # measures the one-process figure against its 1 s target; this only guards against seconds).
        assert all(d.took < 5.0 for d in desks), [d.took for d in desks]
        clients = [d.client for d in desks if d.client is not None]
        calls = [
            asyncio.create_task(c.call_tool("delete_thing", {"name": f"db{i}"}))
            for i, c in enumerate(clients)
        ]

        def three_listed() -> str | None:
            out = cli("approvals", "list", "--config", str(path))
            return out.stdout if out.returncode == 0 and out.stdout.count("delete_thing") == 3 else None

        listed = await wait_for(three_listed, 30, "three held requests in `signoff approvals list`")
        ids = [line.split()[0] for line in listed.splitlines() if "delete_thing" in line]
        assert all(not call.done() for call in calls)
        # Decide each through the CLI, whichever gateway holds it and whichever serves the port.
        for approval_id in ids:
            decided = await asyncio.to_thread(
                cli, "approvals", "approve", approval_id, "-c", str(path), person="bob"
            )
            assert decided.returncode == 0, decided.stdout + decided.stderr
        results = await asyncio.wait_for(asyncio.gather(*calls), 30)
        assert sorted(r.content[0].text for r in results) == ["deleted db0", "deleted db1", "deleted db2"]
    finally:
        for desk in desks:
            await desk.leave()
    token = (tmp_path / "desk.db.admin-token").read_text().strip()
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text, text
        assert token not in text and person_token("bob") not in text
    assert len(executions(exec_log, "delete_thing")) == 3


async def test_the_control_port_is_taken_over_when_its_gateway_exits(tmp_path: Path, exec_log: Path) -> None:
    control_port = free_port()
    config: dict[str, Any] = {
        "upstreams": {"echo": stdio_echo(exec_log)},
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'desk.db'}",
        "control": {"host": "127.0.0.1", "port": control_port},
        "people": PEOPLE,
        "approvers": APPROVERS,
        "policy": policy(HOLD),
    }
    path = write_config(config, tmp_path / "desk.yaml")

    def serving() -> bool:
        try:
            return httpx2.get(f"http://127.0.0.1:{control_port}/healthz", timeout=2).status_code == 200
        except httpx2.HTTPError:
            return False

    first = Running(path, tmp_path / "first.stderr")
    await asyncio.wait_for(first.ready.wait(), 30)
    await wait_for(serving, 30, "the first gateway's control port")
    second = Running(path, tmp_path / "second.stderr")
    await asyncio.wait_for(second.ready.wait(), 30)
    assert "served by another process" in second.log.read_text()
    await first.leave()
    await wait_for(lambda: "now serves the control port" in second.log.read_text(), 30, "the takeover")
    assert await asyncio.to_thread(serving)
    await second.leave()
    for log in (first.log, second.log):
        assert "Traceback" not in log.read_text()
