"""Real MCP clients making one `tools/call` through a gateway, each as a user runs it; how the call ended.

Every client runs as its own process, so a test can run several at once and kill one (SIGKILL, no
goodbye) while its call is held:

    run = ts_sdk(url, token, "delete_thing", {"name": "db1"})
    ...
    ending = await run.ended()      # Ending(kind="result" | "error" | "timed_out" | "killed", text, seconds)

Clients, all with their default options unless the function says otherwise:
  ts_sdk           the TypeScript SDK 1.32 `Client` (tests/node/ts_client.mjs); `on_progress=True` passes
                   `onprogress` + `resetTimeoutOnProgress`, the only way it waits past 60 s
  inspector_cli    the MCP Inspector 2.x CLI (`inspector --cli URL --method tools/call ...`)
  mcp_remote       mcp-remote 0.15, the stdio <-> Streamable HTTP bridge, driven by the Python SDK's stdio client
  python_sdk       the Python SDK (`mcp`) `Client`
  fastmcp_client   the `fastmcp` `Client`

The Python-driven clients run this module as a script: `python -m tests.clients CLIENT URL TOOL ARGS_JSON`
(the bearer token in $SIGNOFF_CLIENT_TOKEN); it prints one JSON line. The Node CLIs take the token as
a header argument, the way their users pass it.

`approve` is the one place tests decide an approval request, whatever the approvals API becomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import nodetools
from tests.conftest import Admin
from tests.procs import PYTHON, ROOT

TOKEN_ENV = "SIGNOFF_CLIENT_TOKEN"
INSPECTOR_JS = (
    nodetools.NODE_MODULES
    / "@modelcontextprotocol"
    / "inspector"
    / "clients"
    / "launcher"
    / "build"
    / "index.js"
)
MCP_REMOTE_JS = nodetools.NODE_MODULES / "mcp-remote" / "dist" / "proxy.js"
TIMED_OUT = "timed out"


@dataclass(frozen=True)
class Ending:
    """How one client's call ended, and when."""

    client: str
    kind: str  # "result" (a tool result, maybe isError) | "error" | "timed_out" | "killed"
    text: str  # the result's text, or the error as the client reported it
    seconds: float  # from the client's start to its end
    at: float  # time.monotonic() at the end
    is_error: bool = False  # a result with isError (a refusal, a withdrawn request)
    output: str = ""  # everything the client printed, for failure messages


class ClientRun:
    """A client process making one call; `ended()` says how it went, `kill()` ends it with SIGKILL."""

    def __init__(self, client: str, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        self.client = client
        self.cmd = cmd
        self.env = env
        self.cwd = cwd
        self.started = 0.0
        self.killed = False
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> ClientRun:
        self.started = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            *self.cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # its own process group: kill() takes its children too
        )
        return self

    def kill(self) -> None:
        """SIGKILL the client and everything it started: it says nothing to anyone."""
        assert self._proc is not None
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    async def ended(self, limit: float = 150.0) -> Ending:
        """Wait for the client to finish (at most `limit` s, then it is killed and this raises)."""
        assert self._proc is not None
        try:
            out, err = await asyncio.wait_for(self._proc.communicate(), limit)
        except TimeoutError:
            self.kill()
            await self._proc.wait()
            raise AssertionError(f"{self.client} still running after {limit}s: {self.cmd}") from None
        at = time.monotonic()
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        output = stdout + stderr
        if self.killed:
            return Ending(self.client, "killed", "", at - self.started, at, output=output)
        kind, message, is_error = _PARSERS[self.client](stdout, stderr)
        return Ending(self.client, kind, message, at - self.started, at, is_error, output)


def _env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}  # 127.0.0.1 only
    env[TOKEN_ENV] = token
    env["NO_COLOR"] = "1"
    # The Node 22 binary first on PATH, so anything a Node tool spawns gets the same Node.
    env["PATH"] = f"{Path(nodetools.node22()).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


# -- the clients ---------------------------------------------------------------------------------


async def ts_sdk(
    url: str, token: str, tool: str, arguments: dict[str, Any], *, on_progress: bool = False
) -> ClientRun:
    """The TypeScript SDK client, default options (a 60 s request timeout).

    `on_progress`: with `onprogress` + `resetTimeoutOnProgress`, so progress restarts that timeout.
    """
    script = str(nodetools.TS_CLIENT_JS)
    header = f"Authorization: Bearer {token}"
    scenario = ["progress", "--reset-timeout-on-progress"] if on_progress else ["call"]
    cmd = [nodetools.node22(), script, "--url", url, "--header", header, scenario[0], *scenario[1:]]
    cmd += ["--tool", tool, "--args", json.dumps(arguments)]
    name = "ts_sdk_progress" if on_progress else "ts_sdk"
    return await ClientRun(name, cmd, _env(token), nodetools.NODE_DIR).start()


async def inspector_cli(url: str, token: str, tool: str, arguments: dict[str, Any]) -> ClientRun:
    """The MCP Inspector 2.x CLI (`--cli`): a fixed 60 s request timeout, progress off."""
    cmd = [nodetools.node22(), str(INSPECTOR_JS), "--cli", url, "--transport", "http"]
    cmd += ["--header", f"Authorization: Bearer {token}", "--method", "tools/call", "--tool-name", tool]
    for key, value in arguments.items():
        cmd += ["--tool-arg", f"{key}={value}"]
    return await ClientRun("inspector_cli", cmd, _env(token), nodetools.NODE_DIR).start()


async def mcp_remote(url: str, token: str, tool: str, arguments: dict[str, Any]) -> ClientRun:
    """mcp-remote bridging the Python SDK's stdio client to the gateway's Streamable HTTP."""
    return await _python_client("mcp_remote", url, token, tool, arguments)


async def python_sdk(url: str, token: str, tool: str, arguments: dict[str, Any]) -> ClientRun:
    """The Python SDK `mcp.Client` over Streamable HTTP with its default timeouts."""
    return await _python_client("python_sdk", url, token, tool, arguments)


async def fastmcp_client(url: str, token: str, tool: str, arguments: dict[str, Any]) -> ClientRun:
    """The `fastmcp.Client` with a bearer token and its default options."""
    return await _python_client("fastmcp", url, token, tool, arguments)


async def _python_client(
    client: str, url: str, token: str, tool: str, arguments: dict[str, Any]
) -> ClientRun:
    cmd = [PYTHON, "-m", "tests.clients", client, url, tool, json.dumps(arguments)]
    return await ClientRun(client, cmd, _env(token), ROOT).start()


# -- the one place tests decide approvals ----------------------------------------------------------


async def approve(control_url: str, approval_id: str, user: str = "alice") -> tuple[int, dict[str, Any]]:
    """Approve a request as `user` through the gateway's approvals API; (HTTP status, body)."""
    return await Admin(control_url).decide(approval_id, "approve", user)


# -- reading what each client printed ------------------------------------------------------------


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                return json.loads(line)
    return None


def _result_text(result: dict[str, Any]) -> str:
    return "\n".join(c.get("text", "") for c in result.get("content") or [] if c.get("type") == "text")


def _parse_ts(stdout: str, _stderr: str) -> tuple[str, str, bool]:
    out = _last_json(stdout)
    if out is None:
        return "error", "no JSON output", False
    if out.get("ok") and "result" in out:
        return "result", _result_text(out["result"]), bool(out["result"].get("isError"))
    error = out.get("error") or out.get("fatal") or {}
    message = str(error.get("message", error))
    if error.get("code") == -32001 and "timed out" in message.lower():
        return "timed_out", message, False
    return "error", message, False


def _parse_inspector(stdout: str, stderr: str) -> tuple[str, str, bool]:
    # A result is printed as JSON on stdout; a failure as {"error": {"message", "cause"}} on stderr.
    out = _last_json(stdout)
    if out is not None and "content" in out:
        return "result", _result_text(out), bool(out.get("isError"))
    error = (_last_json(stderr) or {}).get("error") or {}
    message = str(error.get("message") or (stdout + stderr).strip()[-500:])
    if error.get("cause") == "Request timed out":
        return "timed_out", message, False
    return "error", message, False


def _parse_python(stdout: str, _stderr: str) -> tuple[str, str, bool]:
    out = _last_json(stdout)
    if out is None:
        return "error", "no JSON output", False
    return out["kind"], out["text"], bool(out.get("isError"))


_PARSERS = {
    "ts_sdk": _parse_ts,
    "ts_sdk_progress": _parse_ts,
    "inspector_cli": _parse_inspector,
    "mcp_remote": _parse_python,
    "python_sdk": _parse_python,
    "fastmcp": _parse_python,
}


# -- the Python-driven clients, run as `python -m tests.clients` -----------------------------------


async def _call_python_sdk(url: str, token: str, tool: str, arguments: dict[str, Any]) -> Any:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    # The SDK's own defaults (30 s, 300 s to read a stream); only the header is ours.
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=300)
    )
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        return await client.call_tool(tool, arguments)


async def _call_mcp_remote(url: str, token: str, tool: str, arguments: dict[str, Any]) -> Any:
    from mcp import Client, StdioServerParameters

    bridge = StdioServerParameters(
        command=nodetools.node22(),
        args=[str(MCP_REMOTE_JS), url, "--header", f"Authorization: Bearer {token}"],
        # mcp-remote keeps OAuth state under its config dir (none here: the token is a header).
        env={
            "PATH": os.environ["PATH"],
            "MCP_REMOTE_CONFIG_DIR": str(Path(tempfile.gettempdir(), "mcp-remote")),
        },
    )
    async with Client(bridge, mode="legacy") as client:
        return await client.call_tool(tool, arguments)


async def _call_fastmcp(url: str, token: str, tool: str, arguments: dict[str, Any]) -> Any:
    from fastmcp import Client

    async with Client(url, auth=token) as client:
        return await client.call_tool(tool, arguments, raise_on_error=False)


async def _main(client: str, url: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    calls = {"python_sdk": _call_python_sdk, "mcp_remote": _call_mcp_remote, "fastmcp": _call_fastmcp}
    try:
        result = await calls[client](url, os.environ[TOKEN_ENV], tool, arguments)
    except BaseException as e:  # what the client raised is how the call ended for its user
        message = _describe(e)
        kind = (
            "timed_out" if TIMED_OUT in message.lower() or "timeout" in type(e).__name__.lower() else "error"
        )
        return {"kind": kind, "text": message}
    texts = [getattr(c, "text", "") for c in result.content if getattr(c, "type", "") == "text"]
    return {"kind": "result", "text": "\n".join(texts), "isError": bool(result.is_error)}


def _describe(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in e.exceptions)
    return f"{type(e).__name__}: {e}"


if __name__ == "__main__":
    name, target, tool_name, args_json = sys.argv[1:5]
    print(json.dumps(asyncio.run(_main(name, target, tool_name, json.loads(args_json)))), flush=True)
