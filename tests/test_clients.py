"""Real clients against held calls: a call whose agent is gone never runs, one that stays gets its result.

The upstream's own execution log (tests/fixtures/echo_server.py) says what ran, not the gateway.

The client table (which clients wait past 60 s for an approval, and what the others do) is measured
once for the module: one gateway holds a call from every client at once for over 60 s, then
everything is approved. It starts in a background thread as soon as the module does, so the short
tests below run during its wait; each `test_table_*` reads its own client's row.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests import clients
from tests.clients import Ending, approve
from tests.conftest import RAW_HEADERS, RAW_INIT, RAW_PROTOCOL, Admin, executions, gateway_config
from tests.procs import (
    ROOT,
    SIGNOFF,
    Gateway,
    free_port,
    running_gateway,
    start_gateway,
    wait_http,
    write_config,
)

pytestmark = pytest.mark.timeout(200)

TOKEN = "clients-test-token"  # a test identity's bearer token, handed to the gateway through TOKEN_ENV
TOKEN_ENV = "SIGNOFF_CLIENTS_TEST_TOKEN"
GONE = "the agent went away"
TOLD_WITHDRAWN = f"Withdrawn: {GONE}. Nothing will run."
HOLD_RULE = {
    "name": "deletes need approval",
    "tools": "delete_thing",
    "action": "require_approval",
    "approval": {"approvers": "oncall", "timeout": "10m"},
}
TABLE_HOLD = 65.0  # seconds every table call is held before it is approved: past the 60 s timeouts


def config(exec_log: Path, grace: str, **extra: Any) -> dict[str, Any]:
    """A gateway holding `delete_thing` for approval, one bearer-token identity, progress every second."""
    return gateway_config(
        exec_log,
        {"default": "allow", "rules": [HOLD_RULE]},
        approvers={"oncall": {"people": ["alice"]}},
        identities={"agent": {"token_env": TOKEN_ENV}},
        approvals={"progress_interval": "1s", "reconnect_grace": grace},
        **extra,
    )


def gateway(exec_log: Path, tmp_path: Path, grace: str, **extra: Any) -> Any:
    return running_gateway(config(exec_log, grace, **extra), tmp_path, env={TOKEN_ENV: TOKEN})


async def wait_decided(admin: Admin, approval_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll until the request is no longer pending; return it."""
    deadline = time.monotonic() + timeout
    while True:
        row = await admin.get(approval_id)
        if row["status"] != "pending" or time.monotonic() > deadline:
            return row
        await asyncio.sleep(0.1)


async def assert_gone_and_late_approval_runs_nothing(
    admin: Admin, control_url: str, approval_id: str
) -> None:
    row = await wait_decided(admin, approval_id)
    assert (row["status"], row["reason"]) == ("withdrawn", GONE), row
    status, body = await approve(control_url, approval_id)
    assert (status, body["message"]) == (409, TOLD_WITHDRAWN), body


# -- raw Streamable HTTP, for what no SDK client lets a test do on purpose --------------------------


@dataclass
class Event:
    id: str | None
    data: dict[str, Any] | None


async def sse_events(response: httpx2.Response) -> AsyncIterator[Event]:
    """The server-sent events of a streaming response (an empty `data` is a priming event)."""
    event_id, data = None, ""
    async for line in response.aiter_lines():
        if not line:
            if event_id is not None or data:
                yield Event(event_id, json.loads(data) if data else None)
            event_id, data = None, ""
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


async def open_session(url: str) -> dict[str, str]:
    """Initialize an MCP session over raw HTTP; the headers that every later request of it needs."""
    headers = {**RAW_HEADERS, "Authorization": f"Bearer {TOKEN}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        r = await http.post(url, json=RAW_INIT)
        assert r.status_code == 200, r.text
        headers |= {"mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": RAW_PROTOCOL}
        r = await http.post(
            url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
        )
        assert r.status_code == 202, r.text
    return headers


def delete_call(request_id: int, name: str) -> dict[str, Any]:
    params = {
        "name": "delete_thing",
        "arguments": {"name": name},
        "_meta": {"progressToken": f"p{request_id}"},
    }
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


# -- leaving without a word -----------------------------------------------------------------------


@pytest.mark.node
async def test_clients_killed_while_held_are_withdrawn_and_nothing_runs(
    tmp_path: Path, exec_log: Path
) -> None:
    with gateway(exec_log, tmp_path, grace="2s") as gw:
        admin = Admin(gw.control_url)
        runs = [
            await clients.python_sdk(gw.mcp_url, TOKEN, "delete_thing", {"name": "python_sdk"}),
            await clients.ts_sdk(gw.mcp_url, TOKEN, "delete_thing", {"name": "ts_sdk"}),
            await clients.mcp_remote(gw.mcp_url, TOKEN, "delete_thing", {"name": "mcp_remote"}),
        ]
        pending = {p["arguments"]["name"]: p["id"] for p in await admin.pending(3, timeout=60)}
        killed_at = datetime.now(UTC)
        for run in runs:
            run.kill()
        assert [(await run.ended()).kind for run in runs] == ["killed"] * 3
        for name, approval_id in pending.items():
            await assert_gone_and_late_approval_runs_nothing(admin, gw.control_url, approval_id)
            decided = datetime.fromisoformat((await admin.get(approval_id))["decidedAt"])
            decided = decided if decided.tzinfo else decided.replace(tzinfo=UTC)
            # Not before the reconnect grace: a client may come back that long.
            assert (decided - killed_at).total_seconds() >= 1.8, (name, decided, killed_at)
    assert executions(exec_log, "delete_thing") == []


async def test_a_resumed_stream_within_the_grace_keeps_its_call(tmp_path: Path, exec_log: Path) -> None:
    grace = 2.0
    with gateway(exec_log, tmp_path, grace=f"{grace}s") as gw:
        admin = Admin(gw.control_url)
        headers = await open_session(gw.mcp_url)
        seen: list[Event] = []
        # The call's own stream: read up to the first progress notification, then hang up.
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as first,
            first.stream("POST", gw.mcp_url, json=delete_call(7, "resumed")) as response,
        ):
            async for event in sse_events(response):
                seen.append(event)
                if event.data and event.data.get("method") == "notifications/progress":
                    break
        hung_up_at = seen[-1].data["params"]["progress"]  # progress counts the seconds the call waited
        [pending] = await admin.pending()
        await asyncio.sleep(grace / 2)  # away for a while: longer than a progress interval, within the grace

        replayed: list[dict[str, Any]] = []
        live: list[dict[str, Any]] = []
        resume_headers = {**headers, "Accept": "text/event-stream", "Last-Event-ID": seen[-1].id}
        async with (
            httpx2.AsyncClient(headers=resume_headers, timeout=30) as second,
            second.stream("GET", gw.mcp_url) as resumed,
        ):
            assert resumed.status_code == 200
            approver: asyncio.Task[Any] | None = None
            primed = False  # the resumed stream is primed after the replay: what follows is live
            async for event in sse_events(resumed):
                if event.data is None:
                    primed = True
                    continue
                (live if primed else replayed).append(event.data)
                waited = event.data.get("params", {}).get("progress", 0)
                if approver is None and primed and waited >= hung_up_at + 2 * grace:
                    # The call outlived the grace counted from the hang-up: the resumed stream kept it.
                    approver = asyncio.create_task(approve(gw.control_url, pending["id"]))
                if event.data.get("id") == 7:
                    break
            assert approver is not None and (await approver)[0] == 200
        assert (await admin.get(pending["id"]))["status"] == "executed"
    missed = [m["params"]["progress"] for m in replayed]
    # What was sent while the client was away is replayed, then the answer comes live.
    assert missed and min(missed) > hung_up_at, replayed
    assert live[-1]["result"]["content"][0]["text"] == "deleted resumed", live[-1]
    assert [e["args"]["name"] for e in executions(exec_log, "delete_thing")] == ["resumed"]


async def test_a_call_cancelled_on_its_stream_is_withdrawn_and_its_stream_ends_saying_so(
    tmp_path: Path, exec_log: Path
) -> None:
    with gateway(exec_log, tmp_path, grace="60s") as gw:
        admin = Admin(gw.control_url)
        headers = await open_session(gw.mcp_url)
        events: list[Event] = []
        pending: dict[str, Any] | None = None
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            http.stream("POST", gw.mcp_url, json=delete_call(4, "cancelled")) as response,
        ):
            async for event in sse_events(response):
                events.append(event)
                progress = event.data and event.data.get("method") == "notifications/progress"
                if progress and pending is None:  # held: the client changes its mind
                    [pending] = await admin.pending()
                    cancel = {"requestId": 4, "reason": "changed my mind"}
                    r = await http.post(
                        gw.mcp_url,
                        json={"jsonrpc": "2.0", "method": "notifications/cancelled", "params": cancel},
                    )
                    assert r.status_code == 202, r.text
        last = events[-1].data
        assert (
            pending is not None and last is not None and last["id"] == 4 and last["error"]["code"] == -32800
        ), events
        row = await wait_decided(admin, pending["id"], timeout=5)
        assert row["status"] == "withdrawn" and "cancelled" in row["reason"], row
        status, body = await approve(gw.control_url, pending["id"])
        assert status == 409 and body["message"].startswith("Withdrawn")
    assert executions(exec_log, "delete_thing") == []


async def test_an_answer_that_came_while_the_client_was_away_is_replayed_when_it_resumes(
    tmp_path: Path, exec_log: Path
) -> None:
    with gateway(exec_log, tmp_path, grace="30s") as gw:
        admin = Admin(gw.control_url)
        headers = await open_session(gw.mcp_url)
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            async with http.stream("POST", gw.mcp_url, json=delete_call(6, "away")) as response:
                seen = [e async for e in _until_progress(response)]
            # Away (the stream is closed) while a person approves and the call runs.
            [pending] = await admin.pending()
            assert (await approve(gw.control_url, pending["id"]))[0] == 200
            assert (await wait_decided(admin, pending["id"]))["status"] == "executed"
            resume = {"Accept": "text/event-stream", "Last-Event-ID": seen[-1].id}
            async with http.stream("GET", gw.mcp_url, headers=resume) as resumed:
                assert resumed.status_code == 200
                replayed = [e.data async for e in sse_events(resumed) if e.data is not None]
    answers = [m for m in replayed if m.get("id") == 6]
    assert [a["result"]["content"][0]["text"] for a in answers] == ["deleted away"], replayed
    assert [e["args"]["name"] for e in executions(exec_log, "delete_thing")] == ["away"]


async def test_another_identity_can_neither_resume_nor_cancel_a_held_call(
    tmp_path: Path, exec_log: Path
) -> None:
    cfg = config(exec_log, grace="30s")
    cfg["identities"]["intruder"] = {"token_env": "SIGNOFF_INTRUDER_TOKEN"}
    env = {TOKEN_ENV: TOKEN, "SIGNOFF_INTRUDER_TOKEN": "intruder-token"}
    with running_gateway(cfg, tmp_path, env=env) as gw:
        admin = Admin(gw.control_url)
        headers = await open_session(gw.mcp_url)
        intruder = {**headers, "Authorization": "Bearer intruder-token"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            http.stream("POST", gw.mcp_url, json=delete_call(8, "theirs")) as response,
        ):
            events = sse_events(response)
            seen = []
            async for event in events:  # up to the first progress: the call is held
                seen.append(event)
                if event.data and event.data.get("method") == "notifications/progress":
                    break
            # A short timeout: a resumed stream would stay open until the call's answer.
            async with httpx2.AsyncClient(headers=intruder, timeout=5) as other:
                resume = {"Accept": "text/event-stream", "Last-Event-ID": seen[-1].id}
                r = await other.get(gw.mcp_url, headers=resume)
                assert r.status_code == 404 and "deleted" not in r.text, r.text
                cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 8}}
                assert (await other.post(gw.mcp_url, json=cancel)).status_code == 404
            [pending] = await admin.pending()
            assert (await approve(gw.control_url, pending["id"]))[0] == 200
            answers = [e.data async for e in events if e.data and e.data.get("id") == 8]
    assert answers[0]["result"]["content"][0]["text"] == "deleted theirs"
    assert [e["args"]["name"] for e in executions(exec_log, "delete_thing")] == ["theirs"]


async def _until_progress(response: httpx2.Response) -> AsyncIterator[Event]:
    async for event in sse_events(response):
        yield event
        if event.data and event.data.get("method") == "notifications/progress":
            return


async def test_a_session_deleted_while_held_withdraws_at_once(tmp_path: Path, exec_log: Path) -> None:
    with gateway(exec_log, tmp_path, grace="60s") as gw:  # a long grace: the DELETE alone must do it
        admin = Admin(gw.control_url)
        headers = await open_session(gw.mcp_url)
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            call = asyncio.create_task(http.post(gw.mcp_url, json=delete_call(3, "deleted-session")))
            [pending] = await admin.pending()
            r = await http.delete(gw.mcp_url)
            assert r.status_code == 200, r.text
            row = await wait_decided(admin, pending["id"], timeout=5)
            assert (row["status"], row["reason"]) == ("withdrawn", GONE), row
            await asyncio.wait_for(call, 10)
        status, body = await approve(gw.control_url, pending["id"])
        assert (status, body["message"]) == (409, TOLD_WITHDRAWN)
    assert executions(exec_log, "delete_thing") == []


async def test_a_json_mode_request_whose_connection_closed_is_withdrawn(
    tmp_path: Path, exec_log: Path
) -> None:
    listen = {"host": "127.0.0.1", "port": free_port(), "json_response": True}
    with gateway(exec_log, tmp_path, grace="1s", listen=listen) as gw:
        admin = Admin(gw.control_url)
        headers = await open_session(gw.mcp_url)
        http = httpx2.AsyncClient(headers=headers, timeout=30)
        call = asyncio.create_task(http.post(gw.mcp_url, json=delete_call(5, "json-mode")))
        [pending] = await admin.pending()
        call.cancel()  # the agent hangs up: its connection closes, nothing is said
        await http.aclose()
        await assert_gone_and_late_approval_runs_nothing(admin, gw.control_url, pending["id"])
    assert executions(exec_log, "delete_thing") == []


async def test_a_stdio_client_whose_pipe_closed_is_withdrawn(tmp_path: Path, exec_log: Path) -> None:
    cfg = {**config(exec_log, grace="10s"), "database_url": f"sqlite+aiosqlite:///{tmp_path / 'stdio.db'}"}
    cfg["identities"] = {}
    path = write_config(cfg, tmp_path / "stdio.yaml")
    proc = subprocess.Popen(
        [*SIGNOFF, "serve", "--stdio", "--config", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "stdio.log").open("wb"),
        cwd=ROOT,
    )
    try:
        assert proc.stdin is not None
        for message in (
            RAW_INIT,
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            delete_call(2, "stdio"),
        ):
            proc.stdin.write(json.dumps(message).encode() + b"\n")
        proc.stdin.flush()
        control_url = f"http://127.0.0.1:{cfg['control']['port']}"
        wait_http(control_url + "/readyz", 30, proc)
        admin = Admin(control_url)
        [pending] = await admin.pending(timeout=30)
        proc.stdin.close()  # the agent's end of the pipe is gone; a stdio gateway then exits
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        proc.wait()
    with sqlite3.connect(tmp_path / "stdio.db") as db:
        row = db.execute(
            "SELECT status, decision_reason FROM approval WHERE id = ?", (pending["id"],)
        ).fetchone()
    assert row == ("withdrawn", GONE)
    assert executions(exec_log, "delete_thing") == []


async def test_a_gateway_that_stops_says_so_not_that_the_agent_left(tmp_path: Path, exec_log: Path) -> None:
    gw = start_gateway(config(exec_log, grace="10s"), tmp_path, env={TOKEN_ENV: TOKEN}, own_process=True)
    try:
        run = await clients.python_sdk(gw.mcp_url, TOKEN, "delete_thing", {"name": "stopping"})
        [pending] = await Admin(gw.control_url).pending(timeout=30)
        assert gw.stop(signal.SIGTERM) == 0
        ending = await run.ended()
        # The agent is told, before its session closes.
        assert (ending.kind, ending.is_error) == ("result", True), ending.output
        assert ending.text == "The approval request was withdrawn (the gateway shut down). It did not run."
    finally:
        gw.stop()
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        row = db.execute(
            "SELECT status, decision_reason FROM approval WHERE id = ?", (pending["id"],)
        ).fetchone()
    assert row == ("withdrawn", "the gateway shut down")
    assert executions(exec_log, "delete_thing") == []


# -- the client table -----------------------------------------------------------------------------

CLIENTS = ("ts_sdk", "ts_sdk_progress", "inspector_cli", "mcp_remote", "python_sdk", "fastmcp")


@dataclass
class Table:
    """What happened to one held call per client: how it ended, its request, the late approval's answer."""

    endings: dict[str, Ending] = field(default_factory=dict)
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    approvals: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    held: float = 0.0  # seconds the last call to arrive was held before the approvals
    ran: list[str] = field(default_factory=list)


async def measure_table(gw: Gateway, exec_log: Path) -> Table:
    admin = Admin(gw.control_url)
    args = {name: {"name": name} for name in CLIENTS}
    starts = [
        clients.ts_sdk(gw.mcp_url, TOKEN, "delete_thing", args["ts_sdk"]),
        clients.ts_sdk(gw.mcp_url, TOKEN, "delete_thing", args["ts_sdk_progress"], on_progress=True),
        clients.inspector_cli(gw.mcp_url, TOKEN, "delete_thing", args["inspector_cli"]),
        clients.mcp_remote(gw.mcp_url, TOKEN, "delete_thing", args["mcp_remote"]),
        clients.python_sdk(gw.mcp_url, TOKEN, "delete_thing", args["python_sdk"]),
        clients.fastmcp_client(gw.mcp_url, TOKEN, "delete_thing", args["fastmcp"]),
    ]
    runs = dict(zip(CLIENTS, await asyncio.gather(*starts), strict=True))
    endings = {name: asyncio.create_task(run.ended(limit=180)) for name, run in runs.items()}
    pending = await admin.pending(len(CLIENTS), timeout=90)
    all_held = time.monotonic()
    ids = {p["arguments"]["name"]: p["id"] for p in pending}
    await asyncio.sleep(TABLE_HOLD)  # the hold itself: every call waits this long for a human
    table = Table(held=time.monotonic() - all_held)
    for name in CLIENTS:
        if endings[name].done():  # gave up during the hold: let its request settle before the late click
            await wait_decided(admin, ids[name])
        table.approvals[name] = await approve(gw.control_url, ids[name])
    for name in CLIENTS:
        table.endings[name] = await endings[name]
        table.requests[name] = await admin.get(ids[name])
    table.ran = [e["args"]["name"] for e in executions(exec_log, "delete_thing")]
    return table


@pytest.fixture(scope="module", autouse=True)
def client_table(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start the table measurement in the background when the module starts, if a table test is selected."""
    wanted = any(
        "table" in item.fixturenames for item in request.session.items if item.module is request.module
    )
    if not wanted:
        yield None
        return
    tmp = tmp_path_factory.mktemp("client-table")
    exec_log = tmp / "executions.jsonl"
    with gateway(exec_log, tmp, grace="2s") as gw, ThreadPoolExecutor(1) as pool:
        future = pool.submit(asyncio.run, measure_table(gw, exec_log))
        yield future
        future.exception()  # let the measurement finish before its gateway stops


@pytest.fixture
def table(client_table: Future[Table]) -> Table:
    return client_table.result(timeout=190)


def assert_survived(table: Table, client: str) -> None:
    ending = table.endings[client]
    assert (ending.kind, ending.text, ending.is_error) == ("result", f"deleted {client}", False), (
        ending.output
    )
    assert table.held > 60
    assert table.approvals[client][0] == 200
    assert table.requests[client]["status"] == "executed"
    assert table.ran.count(client) == 1


def assert_gave_up(table: Table, client: str) -> None:
    ending = table.endings[client]
    assert ending.kind == "timed_out", ending.output
    assert 60 <= ending.seconds < 90, ending
    request = table.requests[client]
    assert (request["status"], request["reason"]) == ("withdrawn", GONE), request
    assert table.approvals[client] == (409, table.approvals[client][1])
    assert table.approvals[client][1]["message"] == TOLD_WITHDRAWN
    assert client not in table.ran


@pytest.mark.node
def test_table_ts_sdk_default_options_time_out_at_60s_and_nothing_runs(table: Table) -> None:
    assert_gave_up(table, "ts_sdk")
    assert table.endings["ts_sdk"].text == "MCP error -32001: Request timed out"


@pytest.mark.node
def test_table_inspector_cli_times_out_at_60s_with_progress_off(table: Table) -> None:
    assert_gave_up(table, "inspector_cli")
    assert table.endings["inspector_cli"].text.startswith("Request timed out after 1m00s (tools/call)")


@pytest.mark.node
def test_table_ts_sdk_with_reset_timeout_on_progress_survives_the_hold(table: Table) -> None:
    assert_survived(table, "ts_sdk_progress")


@pytest.mark.node
def test_table_mcp_remote_survives_the_hold(table: Table) -> None:
    assert_survived(table, "mcp_remote")


@pytest.mark.node
def test_table_python_sdk_survives_the_hold(table: Table) -> None:
    assert_survived(table, "python_sdk")


@pytest.mark.node
def test_table_fastmcp_survives_the_hold(table: Table) -> None:
    assert_survived(table, "fastmcp")
