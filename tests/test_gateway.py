"""The transparent gateway, end to end: real clients, a real gateway process, real upstream processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.conftest import RAW_INIT, executions, start_http_echo, stdio_echo
from tests.procs import (
    ROOT,
    SIGNOFF,
    free_port,
    running_gateway,
    wait_http,
    write_config,
)

META = "dev.signoff/decision"


@asynccontextmanager
async def stdio_gateway(config: dict[str, Any], tmp_path: Path, **client_kw: Any):
    """A `signoff serve --stdio` child process driven by the SDK client over its stdin/stdout."""
    config = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'stdio.db'}",
        "control": {"port": 0},
        **config,
    }
    path = write_config(config, tmp_path / "stdio.yaml")
    params = StdioServerParameters(
        command=SIGNOFF[0], args=[*SIGNOFF[1:], "serve", "--stdio", "--config", str(path)], cwd=str(ROOT)
    )
    async with Client(params, mode="legacy", **client_kw) as client:
        yield client


async def exercise(client: Client) -> None:
    """What every front/upstream combination must do identically to a direct connection."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {"echo", "sleep", "weather", "fail"} <= set(tools)
    assert tools["echo"].annotations.read_only_hint is True
    assert tools["weather"].output_schema["properties"]["celsius"]["type"] == "number"

    result = await client.call_tool("echo", {"text": "héllo ✓"})
    assert result.content[0].text == "héllo ✓" and not result.is_error

    weather = await client.call_tool("weather", {"city": "Oslo"})
    assert weather.structured_content == {"city": "Oslo", "celsius": 21.5}

    failed = await client.call_tool("fail", {"message": "nope"})
    assert failed.is_error  # the upstream's own tool error passes through as-is
    assert META not in (failed.meta or {})

    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total, message))

    slept = await client.session.call_tool("sleep", {"seconds": 0.3}, progress_callback=on_progress)
    assert slept.content[0].text == "slept 0.3"
    assert [p[0] for p in progress] == sorted(p[0] for p in progress) and len(progress) >= 2
    assert progress[0][2] == "step 1"

    resources = await client.list_resources()
    assert [str(r.uri) for r in resources.resources] == ["fixture://greeting"]
    read = await client.read_resource("fixture://greeting")
    assert read.contents[0].text == "hello from the fixture"
    prompt = await client.get_prompt("summarize", {"topic": "MCP"})
    assert prompt.messages[0].content.text == "Summarize MCP."


async def test_http_front_stdio_upstream(tmp_path: Path, exec_log: Path) -> None:
    with running_gateway({"upstreams": {"echo": stdio_echo(exec_log)}}, tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            await exercise(client)
    assert [e["args"]["text"] for e in executions(exec_log, "echo")] == ["héllo ✓"]


async def test_http_front_http_upstream(tmp_path: Path, http_echo: tuple[str, Any]) -> None:
    url, _ = http_echo
    with running_gateway({"upstreams": {"echo": {"url": url}}}, tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            await exercise(client)


async def test_stdio_front_stdio_upstream(tmp_path: Path, exec_log: Path) -> None:
    async with stdio_gateway({"upstreams": {"echo": stdio_echo(exec_log)}}, tmp_path) as client:
        await exercise(client)


async def test_stdio_front_http_upstream(tmp_path: Path, http_echo: tuple[str, Any]) -> None:
    url, _ = http_echo
    async with stdio_gateway({"upstreams": {"echo": {"url": url}}}, tmp_path) as client:
        await exercise(client)


async def test_several_upstreams_are_namespaced(
    tmp_path: Path, exec_log: Path, http_echo: tuple[str, Any]
) -> None:
    url, _ = http_echo
    config = {"upstreams": {"local": stdio_echo(exec_log), "remote": {"url": url}}}
    with running_gateway(config, tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"local.echo", "remote.echo", "local.weather", "remote.sleep"} <= names
            assert not any(n == "echo" for n in names)
            result = await client.call_tool("remote.echo", {"text": "via http"})
            assert result.content[0].text == "via http"
            result = await client.call_tool("local.echo", {"text": "via stdio"})
            assert result.content[0].text == "via stdio"
            prompts = {p.name for p in (await client.list_prompts()).prompts}
            assert prompts == {"local.summarize", "remote.summarize"}
            got = await client.get_prompt("remote.summarize", {"topic": "x"})
            assert got.messages[0].content.text == "Summarize x."
            with pytest.raises(MCPError, match="Unknown tool: echo"):
                await client.call_tool("echo", {"text": "which one?"})
    # Only the stdio upstream logs to exec_log... and the http fixture too (same file): one each.
    assert sorted(e["args"]["text"] for e in executions(exec_log, "echo")) == ["via http", "via stdio"]


async def test_custom_separator_and_prefix_for_one_upstream(tmp_path: Path, exec_log: Path) -> None:
    config = {
        "upstreams": {"jobs": stdio_echo(exec_log)},
        "tool_separator": "__",
        "prefix_single_upstream": True,
    }
    with running_gateway(config, tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert "jobs__echo" in names
            result = await client.call_tool("jobs__echo", {"text": "ok"})
            assert result.content[0].text == "ok"


async def test_unknown_tool_is_a_protocol_error_and_nothing_runs(tmp_path: Path, exec_log: Path) -> None:
    with running_gateway({"upstreams": {"echo": stdio_echo(exec_log)}}, tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            with pytest.raises(MCPError) as err:
                await client.call_tool("no_such_tool", {})
            assert err.value.code == types.INVALID_PARAMS
            assert "Unknown tool: no_such_tool" in err.value.message
            assert (await client.call_tool("echo", {"text": "still here"})).content[0].text == "still here"
    assert [e["tool"] for e in executions(exec_log)] == ["echo"]


async def test_elicitation_and_logging_reach_the_client_that_caused_them(
    tmp_path: Path, exec_log: Path
) -> None:
    asked: list[str] = []
    logs: list[str] = []

    async def on_elicit(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    with running_gateway({"upstreams": {"echo": stdio_echo(exec_log)}}, tmp_path) as gw:
        async with Client(
            gw.mcp_url, mode="legacy", elicitation_callback=on_elicit, logging_callback=on_log
        ) as c:
            result = await c.call_tool("ask_name", {})
            assert result.content[0].text == "hello Ada"
            assert asked == ["What is your name?"]
            await c.call_tool("log_and_echo", {"text": "x"})
            for _ in range(50):
                if len(logs) >= 3:
                    break
                await asyncio.sleep(0.02)
            assert logs == ["log 0: x", "log 1: x", "log 2: x"]


async def test_cancelled_call_stops_and_gateway_keeps_serving(tmp_path: Path, exec_log: Path) -> None:
    with running_gateway({"upstreams": {"echo": stdio_echo(exec_log)}}, tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            started = time.monotonic()
            with pytest.raises(MCPError):
                await client.session.call_tool("sleep", {"seconds": 10}, read_timeout_seconds=0.5)
            assert time.monotonic() - started < 6  # not the 10 s the tool would take
            assert (await client.call_tool("echo", {"text": "after"})).content[0].text == "after"


async def test_upstream_killed_mid_call_fails_fast_then_restarts(tmp_path: Path, exec_log: Path) -> None:
    with running_gateway({"upstreams": {"echo": stdio_echo(exec_log)}}, tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            started = time.monotonic()
            result = await client.call_tool("crash", {})
            assert time.monotonic() - started < 5
            assert result.is_error
            assert result.meta[META]["reason"] == "upstream_unavailable"
            assert "closed the connection" in result.content[0].text
            # It is restarted with backoff; the next calls succeed without reconnecting the client.
            deadline = time.monotonic() + 20
            while True:
                again = await client.call_tool("echo", {"text": "back"})
                if not again.is_error:
                    break
                assert again.meta[META]["reason"] == "upstream_unavailable"
                assert time.monotonic() < deadline, again.content[0].text
                await asyncio.sleep(0.2)
            assert again.content[0].text == "back"
        metrics = urllib.request.urlopen(gw.control_url + "/metrics").read().decode()
        assert 'signoff_upstream_up{upstream="echo"} 1.0' in metrics


async def test_hanging_upstream_is_bounded_by_call_timeout(tmp_path: Path, exec_log: Path) -> None:
    config = {"upstreams": {"echo": stdio_echo(exec_log, call_timeout="1s")}}
    with running_gateway(config, tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            started = time.monotonic()
            result = await client.call_tool("sleep", {"seconds": 30})
            assert 0.9 < time.monotonic() - started < 15  # the 1 s call timeout, not the tool's 30 s
            assert result.is_error and result.meta[META]["reason"] == "upstream_timeout"
            assert "did not answer within 1s" in result.content[0].text
            assert (await client.call_tool("echo", {"text": "ok"})).content[0].text == "ok"


async def test_missing_upstream_command_is_reported_clearly(tmp_path: Path) -> None:
    config = {"upstreams": {"ghost": {"command": "signoff-no-such-command", "connect_timeout": "2s"}}}
    with running_gateway(config, tmp_path, ready_path="/healthz", own_process=True) as gw:
        body = json.loads(_get(gw.control_url + "/readyz", expect=503))
        assert body["ready"] is False
        assert "cannot start 'signoff-no-such-command': command not found" in body["upstreams"]["ghost"]
        async with Client(gw.mcp_url, mode="legacy") as client:
            started = time.monotonic()
            with pytest.raises(MCPError, match="command not found"):
                await client.list_tools()
            assert time.monotonic() - started < 2
        assert "command not found" in gw.output()


async def test_malformed_json_rpc_gets_an_error_and_the_gateway_keeps_serving(
    tmp_path: Path, exec_log: Path
) -> None:
    with running_gateway({"upstreams": {"echo": stdio_echo(exec_log)}}, tmp_path) as gw:
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        async with httpx2.AsyncClient() as http:
            for body in (b"{not json", b'{"jsonrpc": "2.0", "method": 42, "id": 1}', b"[]", b"\xff\xfe"):
                r = await http.post(gw.mcp_url, content=body, headers=headers)
                assert 400 <= r.status_code < 500, (body, r.status_code)
                error = r.json()["error"]
                assert error["code"] in (types.PARSE_ERROR, types.INVALID_REQUEST, types.INVALID_PARAMS)
        async with Client(gw.mcp_url, mode="legacy") as client:
            assert (await client.call_tool("echo", {"text": "fine"})).content[0].text == "fine"


def test_malformed_json_rpc_over_stdio(tmp_path: Path, exec_log: Path) -> None:
    config = {
        "upstreams": {"echo": stdio_echo(exec_log)},
        "control": {"port": 0},
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'g.db'}",
    }
    path = write_config(config, tmp_path / "g.yaml")
    lines = [
        json.dumps(RAW_INIT),
        "this is not json",
        json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": 7}}),
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "survived"}},
            }
        ),
    ]
    proc = subprocess.Popen(
        [*SIGNOFF, "serve", "--stdio", "--config", str(path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in lines:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        replies: dict[Any, dict] = {}
        deadline = time.monotonic() + 30
        while 3 not in replies and time.monotonic() < deadline:
            msg = json.loads(proc.stdout.readline())
            replies[msg.get("id")] = msg
    finally:
        proc.kill()
        proc.wait()
    assert replies[None]["error"]["code"] == types.PARSE_ERROR
    assert replies[2]["error"]["code"] == types.INVALID_PARAMS
    assert replies[3]["result"]["content"][0]["text"] == "survived"


def test_invalid_config_lists_every_error_and_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "upstreams:\n"
        "  runpod: {command: npx, url: 'http://x/mcp'}\n"
        "  'bad name': {command: x}\n"
        "listen: {port: 99999, colour: blue}\n"
        "audit: {batch_size: 0}\n"
        "slack: {bot_token: '${SIGNOFF_TEST_UNSET_VAR}', channel: C1}\n"
    )
    proc = subprocess.run(
        [*SIGNOFF, "serve", "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    err = proc.stderr
    for expected in (
        "upstreams.runpod: give exactly one of `command` (stdio) or `url` (Streamable HTTP)",
        "upstreams.bad name: upstream name 'bad name' may only contain",
        "listen.port: Input should be less than or equal to 65535",
        "listen.colour: Extra inputs are not permitted",
        "audit.batch_size: Input should be greater than or equal to 1",
        "slack.bot_token: environment variable SIGNOFF_TEST_UNSET_VAR is not set",
        "slack: socket mode needs `app_token`",
    ):
        assert expected in err, f"missing {expected!r} in:\n{err}"
    assert "Traceback" not in err

    broken = tmp_path / "broken.yaml"
    broken.write_text("upstreams: [unclosed\n")
    proc = subprocess.run(
        [*SIGNOFF, "serve", "--config", str(broken)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr and "line 1" in proc.stderr


async def test_control_port_health_and_metrics(tmp_path: Path, exec_log: Path) -> None:
    with running_gateway({"upstreams": {"echo": stdio_echo(exec_log)}}, tmp_path) as gw:
        assert json.loads(_get(gw.control_url + "/healthz")) == {"status": "ok"}
        assert json.loads(_get(gw.control_url + "/readyz")) == {"ready": True, "upstreams": {"echo": "up"}}
        async with Client(gw.mcp_url, mode="legacy") as client:
            await client.call_tool("echo", {"text": "a"})
            await client.call_tool("fail", {})
        metrics = _get(gw.control_url + "/metrics")
        assert 'signoff_tool_calls_total{decision="allow",outcome="ok",tool="echo"} 1.0' in metrics
        assert 'signoff_tool_calls_total{decision="allow",outcome="tool_error",tool="fail"} 1.0' in metrics
        assert 'signoff_tool_call_seconds_count{decision="allow"} 2.0' in metrics
        assert 'signoff_upstream_up{upstream="echo"} 1.0' in metrics


def _get(url: str, expect: int = 200) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == expect
            return r.read().decode()
    except urllib.error.HTTPError as e:
        assert e.code == expect, e.code
        return e.read().decode()


async def test_a_dead_upstream_does_not_hold_back_the_others_at_start(tmp_path: Path, exec_log: Path) -> None:
    # Nothing listens on the second upstream's port yet, and its connect_timeout is the default 30 s.
    # The gateway used to wait that long before serving anyone; it now serves the live upstream
    # as soon as the dead one's first attempt fails, and keeps retrying it in the background.
    port = free_port()
    config = {
        "upstreams": {"echo": stdio_echo(exec_log), "late": {"url": f"http://127.0.0.1:{port}/mcp"}},
        "policy": {"default": "allow"},
    }
    started = time.monotonic()
    with running_gateway(config, tmp_path, ready_path="/healthz", own_process=True) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            serving_after = time.monotonic() - started
            result = await client.call_tool("echo.echo", {"text": "hi"})
            assert "echo.echo" in names and not any(n.startswith("late.") for n in names)
            assert not result.is_error and result.content[0].text == "hi"
            assert serving_after < 20, f"served only after {serving_after:.1f}s (the other's 30 s timeout?)"
            try:
                urllib.request.urlopen(gw.control_url + "/readyz")
                raise AssertionError("readyz said ready with an upstream down")
            except urllib.error.HTTPError as e:
                ready = json.loads(e.read())
            # The late one is "down" between attempts and "connecting" during one: not up, and why.
            late_state = ready["upstreams"]["late"]
            assert ready["upstreams"]["echo"] == "up" and late_state.split(":")[0] in ("down", "connecting")
            assert "cannot connect to" in late_state, late_state

            # The late upstream comes up: the gateway connects (retrying with backoff) and the
            # next listing has its tools.
            late = start_http_echo(port, exec_log, tmp_path / "late.log")
            try:
                wait_http(gw.control_url + "/readyz", 60)
                names = {t.name for t in (await client.list_tools()).tools}
                assert "late.echo" in names and "echo.echo" in names
                result = await client.call_tool("late.echo", {"text": "late"})
                assert not result.is_error and result.content[0].text == "late"
            finally:
                late.stop()
