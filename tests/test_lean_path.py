"""The lean HTTP path: plain calls are answered without the SDK's server stack, and nothing else changes.

What a client sees must be the same whichever path answered (the conformance suite and every client
test run through both); here we check that plain calls do take the lean path, in both protocol eras
and both reply framings, that calls which wait (held, progress) take it on a stream of their own,
and that what must not take it (a session the upstream may send requests to) does not.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.conftest import Admin, executions, gateway_config, stdio_echo
from tests.procs import PYTHON, ROOT, free_port, running_gateway
from tests.test_approvals import APPROVERS, HOLD, policy
from tests.test_clients import open_session


def lean_answers(control_url: str, method: str = "tools/call") -> float:
    text = httpx2.get(control_url + "/metrics").text
    m = re.search(rf'^signoff_lean_answers_total{{method="{method}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_plain_calls_take_the_lean_path_in_both_eras_and_framings(
    tmp_path: Path, exec_log: Path, mode: str, json_response: bool
) -> None:
    config = {
        "upstreams": {"echo": stdio_echo(exec_log)},
        "listen": {"host": "127.0.0.1", "port": free_port(), "json_response": json_response},
    }
    with running_gateway(config, tmp_path) as gw:
        async with Client(gw.mcp_url, mode=mode) as client:  # type: ignore[arg-type]
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"echo", "weather"} <= tools
            for i in range(3):
                result = await client.call_tool("echo", {"text": f"lean {i}"})
                assert result.content[0].text == f"lean {i}" and not result.is_error
            weather = await client.call_tool("weather", {"city": "Oslo"})
            assert weather.structured_content == {"city": "Oslo", "celsius": 21.5}
        # The first call of a handshake session may go through the SDK (it creates the session record).
        assert lean_answers(gw.control_url) >= 3
    assert len(executions(exec_log, "echo")) == 3


async def test_a_held_call_and_a_call_with_progress_take_a_lean_stream_and_a_session_that_can_be_asked_the_sdk(
    tmp_path: Path, exec_log: Path
) -> None:
    config = gateway_config(exec_log, policy(HOLD), approvers=APPROVERS)
    with running_gateway(config, tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            await client.call_tool("echo", {"text": "warm"})
            before = lean_answers(gw.control_url)
            held = asyncio.create_task(client.call_tool("delete_thing", {"name": "db1"}))
            [pending] = await Admin(gw.control_url).pending()
            assert (await Admin(gw.control_url).decide(pending["id"], "approve", "alice"))[0] == 200
            assert not (await asyncio.wait_for(held, 10)).is_error
            progress: list[Any] = []

            async def on_progress(p: float, total: float | None, message: str | None) -> None:
                progress.append(p)

            slept = await client.session.call_tool("sleep", {"seconds": 0.3}, progress_callback=on_progress)
            assert slept.content[0].text == "slept 0.3" and progress
            assert lean_answers(gw.control_url) == before + 2  # both on a stream of the lean path

        async def on_elicit(*_: Any) -> Any:
            raise AssertionError("not asked here")

        # A client the upstream may ask things (elicitation): its calls ride the SDK's request streams.
        async with Client(gw.mcp_url, mode="legacy", elicitation_callback=on_elicit) as asked:
            await asked.call_tool("echo", {"text": "warm"})
            before = lean_answers(gw.control_url)
            held = asyncio.create_task(asked.call_tool("delete_thing", {"name": "db2"}))
            [pending] = await Admin(gw.control_url).pending()
            assert (await Admin(gw.control_url).decide(pending["id"], "approve", "alice"))[0] == 200
            assert not (await asyncio.wait_for(held, 10)).is_error
            assert lean_answers(gw.control_url) == before
    assert [e["args"]["name"] for e in executions(exec_log, "delete_thing")] == ["db1", "db2"]


REFUSING = str(ROOT / "tests" / "fixtures" / "refusing_server.py")


async def test_an_upstreams_json_rpc_error_reaches_the_client_as_it_is_and_is_audited(
    tmp_path: Path, exec_log: Path
) -> None:
    """Through the lean path and the SDK's (progress asked): same code, message and data; audited once each."""
    config = gateway_config(exec_log, None)
    config["upstreams"] = {"records": {"command": PYTHON, "args": [REFUSING]}}
    with running_gateway(config, tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            await client.list_tools()
            errors = []
            for record, progress in (("r1", None), ("r2", _ignore_progress)):
                with pytest.raises(MCPError) as raised:
                    await client.session.call_tool("lookup", {"record": record}, progress_callback=progress)
                errors.append((raised.value.error.code, raised.value.error.message, raised.value.error.data))
        assert errors == [
            (-32602, "No such record: r1", {"record": "r1"}),
            (-32602, "No such record: r2", {"record": "r2"}),
        ]
        assert lean_answers(gw.control_url, "tools/call") >= 1  # the first call took the lean path
        records = await Admin(gw.control_url).audit_for(lambda r: r["tool"] == "lookup", n=2)
        assert sorted((r["arguments"]["record"], r["outcome"], r["reason"]) for r in records) == [
            ("r1", "upstream_error", "No such record: r1"),
            ("r2", "upstream_error", "No such record: r2"),
        ]


async def _ignore_progress(progress: float, total: float | None, message: str | None) -> None:
    return None


async def test_a_request_naming_another_host_or_origin_is_refused_and_runs_nothing(
    tmp_path: Path, exec_log: Path
) -> None:
    """DNS rebinding: a loopback front serves only a loopback Host and Origin, on the lean path too."""
    port = free_port()
    config = {"upstreams": {"echo": stdio_echo(exec_log)}, "listen": {"host": "127.0.0.1", "port": port}}

    def call(text: str) -> dict[str, Any]:
        params = {"name": "echo", "arguments": {"text": text}}
        return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}

    with running_gateway(config, tmp_path) as gw:
        headers = await open_session(gw.mcp_url)
        async with httpx2.AsyncClient(timeout=30) as http:
            before = lean_answers(gw.control_url)
            on_loopback = {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}
            r = await http.post(gw.mcp_url, json=call("loopback"), headers={**headers, **on_loopback})
            assert r.status_code == 200 and "loopback" in r.text, r.text
            assert lean_answers(gw.control_url) == before + 1
            for other in (
                {"Host": "attacker.example"},
                {"Host": f"attacker.example:{port}"},
                {"Host": f"127.0.0.1.attacker.example:{port}"},  # loopback's name as a prefix only
                {"Origin": "http://attacker.example"},
                {"Origin": f"http://localhost.attacker.example:{port}"},
            ):
                r = await http.post(gw.mcp_url, json=call(str(other)), headers={**headers, **other})
                assert r.status_code in (403, 421), (other, r.status_code, r.text)
    assert [e["args"]["text"] for e in executions(exec_log, "echo")] == ["loopback"]
