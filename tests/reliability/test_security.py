"""Security at the edges: bearer tokens on the MCP front, sessions bound to identities, the admin API.

A request without a valid token is refused with 401 before any MCP message is read: nothing runs and
nothing is audited as a call. A session answers only the identity that opened it (404 for anyone
else, who cannot end it either). Only people decide approvals; the admin token reads, never decides.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx2

from tests.conftest import ADMIN_TOKEN, Admin, executions
from tests.conftest import RAW_HEADERS as HEADERS
from tests.conftest import RAW_INIT as INIT
from tests.conftest import RAW_PROTOCOL as PROTOCOL
from tests.procs import running_gateway
from tests.reliability.harness import GATEWAY_ENV, TOKENS, export_audit, load_config, session

CALL = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": "sneaky"}},
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def open_session(http: httpx2.AsyncClient, url: str, token: str) -> dict[str, str]:
    """Initialize a session as `token`; the headers to use it."""
    r = await http.post(url, json=INIT, headers={**HEADERS, **bearer(token)})
    assert r.status_code == 200, r.text
    headers = {
        **HEADERS,
        **bearer(token),
        "Mcp-Session-Id": r.headers["mcp-session-id"],
        "Mcp-Protocol-Version": PROTOCOL,
    }
    await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    return headers


def sse_result(r: httpx2.Response) -> dict[str, Any]:
    for line in r.text.split("\n"):
        if line.startswith("data:") and line[5:].strip():
            return json.loads(line[5:])
    return r.json()


async def test_requests_without_a_valid_token_get_401_run_nothing_and_are_not_audited(
    tmp_path: Path, exec_log: Path, figures
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'tokens.db'}"
    a_token = TOKENS["agent-a"]
    credentials = {
        "none": None,
        "empty": "",
        "wrong token": "Bearer not-a-token",
        "bare scheme": "Bearer",
        "basic": "Basic " + "YWdlbnQtYTpzZWNyZXQ=",
        "token without scheme": a_token,
        "token with a suffix": f"Bearer {a_token}x",
        "token prefix": f"Bearer {a_token[:-1]}",
        "two tokens": f"Bearer {a_token} {a_token}",
        "huge": "Bearer " + "A" * 100_000,
        "admin token": f"Bearer {ADMIN_TOKEN}",
        "non-latin": "Bearer tökén-ünïcode",
    }
    refused = 0
    with running_gateway(load_config(exec_log, db), tmp_path, env=GATEWAY_ENV, own_process=True) as gw:
        async with httpx2.AsyncClient(timeout=20) as http:
            session_headers = await open_session(http, gw.mcp_url, a_token)
            for name, auth in credentials.items():
                for method, body, extra in (
                    ("POST", INIT, {}),
                    ("POST", CALL, {"Mcp-Session-Id": session_headers["Mcp-Session-Id"]}),
                    ("GET", None, {"Mcp-Session-Id": session_headers["Mcp-Session-Id"]}),
                    ("DELETE", None, {"Mcp-Session-Id": session_headers["Mcp-Session-Id"]}),
                ):
                    headers = {**HEADERS, "Mcp-Protocol-Version": PROTOCOL, **extra}
                    if auth is not None:
                        headers["Authorization"] = auth.encode()  # UTF-8 bytes on the wire, as sent
                    r = await http.request(
                        method, gw.mcp_url, headers=headers, content=json.dumps(body) if body else None
                    )
                    assert r.status_code == 401, (name, method, r.status_code, r.text[:200])
                    assert r.headers["www-authenticate"].startswith("Bearer")
                    error = r.json()["error"]
                    assert error["code"] == -32001 and error["message"].startswith("Unauthorized"), error
                    assert a_token not in r.text and ADMIN_TOKEN not in r.text
                    refused += 1
            # The session the bad requests aimed at was neither used nor ended: its owner still works.
            ok = await http.post(
                gw.mcp_url,
                json={**CALL, "params": {"name": "echo", "arguments": {"text": "owner"}}},
                headers=session_headers,
            )
            assert sse_result(ok)["result"]["content"][0]["text"] == "owner"
        await asyncio.sleep(0.8)  # audit flush
        audit = export_audit(db)
        log = gw.output()
    assert [e["args"]["text"] for e in executions(exec_log, "echo")] == ["owner"]
    assert [r["arguments"] for r in audit] == [{"text": "owner"}]
    for secret in (a_token, TOKENS["agent-b"]):
        assert secret not in log
    figures(f"tokens: {refused} requests with missing or wrong credentials → 401, 0 executed, 0 audited")


async def test_a_session_answers_only_the_identity_that_opened_it(tmp_path: Path, exec_log: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'bind.db'}"
    with running_gateway(load_config(exec_log, db), tmp_path, env=GATEWAY_ENV, own_process=True) as gw:
        async with httpx2.AsyncClient(timeout=20) as http:
            as_a = await open_session(http, gw.mcp_url, TOKENS["agent-a"])
            as_b = {**as_a, **bearer(TOKENS["agent-b"])}  # B presents A's session id
            for method, body in (
                ("POST", CALL),
                ("POST", {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
                ("GET", None),
                ("DELETE", None),
            ):
                r = await http.request(
                    method, gw.mcp_url, headers=as_b, content=json.dumps(body) if body else None
                )
                assert r.status_code == 404, (method, r.status_code, r.text[:200])
            # A's session is intact (B could not end it) and still A's.
            r = await http.post(
                gw.mcp_url,
                json={**CALL, "params": {"name": "echo", "arguments": {"text": "still a"}}},
                headers=as_a,
            )
            assert sse_result(r)["result"]["content"][0]["text"] == "still a"
        await asyncio.sleep(0.8)
        audit = export_audit(db)
    assert [(r["identity"], r["arguments"]) for r in audit] == [("agent-a", {"text": "still a"})]
    assert [e["args"]["text"] for e in executions(exec_log, "echo")] == ["still a"]


async def test_only_people_decide_and_only_people_or_the_admin_token_read_approvals_and_audit(
    tmp_path: Path, exec_log: Path
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"
    with running_gateway(load_config(exec_log, db), tmp_path, env=GATEWAY_ENV, own_process=True) as gw:
        admin = Admin(gw.control_url)
        async with session(gw.mcp_url, TOKENS["agent-a"]) as client:
            call = asyncio.create_task(client.call_tool("delete_thing", {"name": "approve-mine"}))
            [pending] = await admin.pending()
            base = gw.control_url
            requests = [
                ("GET", "/api/approvals", None),
                ("GET", f"/api/approvals/{pending['id']}", None),
                ("POST", f"/api/approvals/{pending['id']}/decide", {"decision": "approve"}),
                ("GET", "/api/audit", None),
            ]
            async with httpx2.AsyncClient(timeout=20) as http:
                for auth in (
                    None,
                    "Bearer",
                    f"Bearer {TOKENS['agent-a']}",
                    f"Bearer {ADMIN_TOKEN}x",
                    ADMIN_TOKEN,
                    f"Basic {ADMIN_TOKEN}",
                    f"bearer  {ADMIN_TOKEN[:-1]}",
                ):
                    for method, path, body in requests:
                        headers = {"Authorization": auth} if auth is not None else {}
                        r = await http.request(method, base + path, headers=headers, json=body)
                        assert r.status_code == 401, (auth, method, path, r.status_code, r.text[:200])
                        assert ADMIN_TOKEN not in r.text
                # The admin token reads, but never decides — not even "as" someone.
                for body in ({"decision": "approve"}, {"decision": "approve", "user": "alice"}):
                    r = await http.post(
                        f"{base}/api/approvals/{pending['id']}/decide", json=body, headers=bearer(ADMIN_TOKEN)
                    )
                    assert r.status_code == 403 and "never decide" in r.json()["error"]
                # The agent's own token cannot approve its call; the request is still pending.
                assert (await admin.get(pending["id"]))["status"] == "pending" and not call.done()
                # The admin token is not an agent identity on the MCP port either.
                r = await http.post(gw.mcp_url, json=INIT, headers={**HEADERS, **bearer(ADMIN_TOKEN)})
                assert r.status_code == 401
            assert executions(exec_log, "delete_thing") == []
            status, body = await admin.decide(pending["id"], "deny", "bob", "security test")
            assert status == 200
            result = await asyncio.wait_for(call, 10)
        assert result.is_error
    assert executions(exec_log, "delete_thing") == []


async def test_the_configured_admin_token_is_never_logged(tmp_path: Path, exec_log: Path) -> None:
    """A configured admin token (a secret from the environment) never reaches the log."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'log.db'}"
    config = load_config(exec_log, db)
    config["control"]["admin_token"] = "${SIGNOFF_TEST_ADMIN_TOKEN}"
    secret = "admin-secret-from-the-environment-0123456789"
    with running_gateway(
        config, tmp_path, env={**GATEWAY_ENV, "SIGNOFF_TEST_ADMIN_TOKEN": secret}, own_process=True
    ) as gw:
        admin = Admin(gw.control_url, token=secret)
        assert await admin.audit() == []  # the token works
        time.sleep(0.2)
        log = gw.output()
    assert secret not in log
