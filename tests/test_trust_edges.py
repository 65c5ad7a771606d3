"""The small holes on the approval path: hidden tools, metric labels, strict JSON, exposure, verbose logs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.conftest import (
    ADMIN_TOKEN,
    DECISION,
    RAW_HEADERS,
    RAW_INIT,
    RAW_PROTOCOL,
    Admin,
    executions,
    gateway_config,
    stdio_echo,
)
from tests.procs import ROOT, SIGNOFF, free_port, running_gateway, write_config
from tests.test_approvals import APPROVERS, HOLD, policy

HIDE_CRASH = {"default": "allow", "hide": ["crash"], "rules": [HOLD]}


async def timed_call(client: Client, name: str) -> tuple[float, str]:
    started = time.monotonic()
    with pytest.raises(MCPError) as err:
        await client.call_tool(name, {})
    return time.monotonic() - started, err.value.error.message


async def test_a_hidden_tool_and_an_unknown_one_get_the_same_answer_without_asking_the_upstream(
    tmp_path: Path, exec_log: Path
) -> None:
    # The upstream takes 1.5 s to list its tools: a gateway that asked it about an unknown name on the
    # call path (as it did) would answer that name 1.5 s later than a hidden one.
    config = gateway_config(exec_log, HIDE_CRASH, approvers=APPROVERS)
    config["upstreams"]["echo"] = stdio_echo(exec_log, env={"EXEC_LOG": str(exec_log), "LIST_DELAY": "1.5"})
    with running_gateway(config, tmp_path, ready_timeout=60) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            await client.call_tool("echo", {"text": "catalog loaded"})
            for _ in range(3):
                hidden_time, hidden = await timed_call(client, "crash")
                unknown_time, unknown = await timed_call(client, "no_such_tool")
                assert hidden == "Unknown tool: crash" and unknown == "Unknown tool: no_such_tool"
                assert hidden_time < 1.0 and unknown_time < 1.0, (hidden_time, unknown_time)
    assert executions(exec_log, "crash") == []


async def test_unknown_and_hidden_names_share_one_metric_label(tmp_path: Path, exec_log: Path) -> None:
    with running_gateway(gateway_config(exec_log, HIDE_CRASH, approvers=APPROVERS), tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            names = [f"probe_{i}_" + "n" * 2000 for i in range(40)]
            for name in [*names, "crash"]:
                with pytest.raises(MCPError):
                    await client.call_tool(name, {})
            await client.call_tool("echo", {"text": "hi"})
        metrics = httpx2.get(gw.control_url + "/metrics").text
    assert "probe_" not in metrics and 'tool="crash"' not in metrics
    assert 'tool="(unknown)"' in metrics and 'tool="echo"' in metrics
    assert len(metrics) < 200_000


async def raw_call(
    http: httpx2.AsyncClient, url: str, headers: dict[str, str], body: bytes
) -> dict[str, Any]:
    r = await http.post(url, content=body, headers=headers)
    assert r.status_code == 200, r.text
    for line in r.text.split("\n"):
        if line.startswith("data:") and line[5:].strip():
            return json.loads(line[5:])
    return r.json()


async def test_nan_and_huge_integers_are_refused_clearly_and_the_page_api_stays_valid_json(
    tmp_path: Path, exec_log: Path
) -> None:
    with running_gateway(gateway_config(exec_log, policy(HOLD), approvers=APPROVERS), tmp_path) as gw:
        async with httpx2.AsyncClient(timeout=20) as http:
            r = await http.post(gw.mcp_url, json=RAW_INIT, headers=RAW_HEADERS)
            headers = {
                **RAW_HEADERS,
                "Mcp-Session-Id": r.headers["mcp-session-id"],
                "Mcp-Protocol-Version": RAW_PROTOCOL,
            }
            await http.post(
                gw.mcp_url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
            )
            frames = {
                "NaN": b'{"name": NaN}',
                "Infinity": b'{"name": "db", "force": -Infinity}',
                "an integer beyond 64 bits": b'{"name": 123456789012345678901234567890}',
            }
            for i, (what, arguments) in enumerate(frames.items(), start=10):
                body = (
                    b'{"jsonrpc": "2.0", "id": %d, "method": "tools/call", '
                    b'"params": {"name": "delete_thing", "arguments": %s}}' % (i, arguments)
                )
                answer = await raw_call(http, gw.mcp_url, headers, body)
                result = answer["result"]
                assert result["isError"] and result["_meta"][DECISION]["reason"] == "invalid_arguments"
                assert what in result["content"][0]["text"] and "Nothing ran" in result["content"][0]["text"]
            # Nothing was held for a human to approve, and the page's API is strict JSON.
            raw = (
                await http.get(
                    gw.control_url + "/api/approvals?status=all",
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                )
            ).text
            assert json.loads(raw, parse_constant=lambda c: pytest.fail(f"{c} in the API")) == {
                "approvals": []
            }
        records = await Admin(gw.control_url).audit_for(lambda r: r["outcome"] == "invalid_arguments", n=3)
        assert len(records) == 3
    assert executions(exec_log) == []


def test_listening_beyond_loopback_without_identities_is_refused(tmp_path: Path, exec_log: Path) -> None:
    config = {
        "upstreams": {"echo": stdio_echo(exec_log)},
        "listen": {"host": "0.0.0.0", "port": free_port()},
        "control": {"host": "127.0.0.1", "port": free_port()},
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'g.db'}",
    }
    path = write_config(config, tmp_path / "open.yaml")
    out = subprocess.run(
        [*SIGNOFF, "serve", "--config", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "beyond loopback" in out.stderr and "allow_anonymous" in out.stderr
    assert "Traceback" not in out.stderr


async def test_verbose_logs_carry_no_arguments_or_results(tmp_path: Path, exec_log: Path) -> None:
    secret = "hunter2-" + "s3cr3t" * 4
    config = gateway_config(exec_log, policy(), approvers=APPROVERS)
    config["listen"] = {"host": "127.0.0.1", "port": free_port()}
    config["database_url"] = f"sqlite+aiosqlite:///{tmp_path / 'v.db'}"
    path = write_config(config, tmp_path / "v.yaml")
    log = tmp_path / "verbose.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [*SIGNOFF, "-v", "serve", "--config", str(path)], cwd=ROOT, stderr=fh, stdout=fh
        )
    try:
        control = f"http://127.0.0.1:{config['control']['port']}"
        for _ in range(300):
            try:
                if httpx2.get(control + "/readyz").status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            await asyncio.sleep(0.1)
        url = f"http://127.0.0.1:{config['listen']['port']}/mcp"
        async with Client(url, mode="legacy") as client:
            result = await client.call_tool("echo", {"text": f"password={secret}"})
            assert secret in result.content[0].text  # the agent gets its result…
        await asyncio.sleep(0.5)  # the audit batch is written
    finally:
        proc.terminate()
        proc.wait(10)
    output = log.read_text()
    assert "DEBUG signoff" in output  # -v did turn signoff's own debug output on…
    assert secret not in output  # …and nothing printed the arguments or the result
