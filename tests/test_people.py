"""Only authenticated people decide: the admin token views, nobody decides as someone else.

A real gateway and a real MCP client; each decision attempt is checked against the upstream's own
execution log, so "refused" means nothing ran. (SQLite only: who may decide is not backend business;
the approval tests run on both backends.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client

from tests.conftest import ADMIN_TOKEN, Admin, executions, gateway_config, person_token
from tests.procs import running_gateway
from tests.test_approvals import APPROVERS, HOLD, call_held, client_as, policy


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_decision(
    base: str, approval_id: str, headers: dict[str, str], body: dict[str, Any], cookies: Any = None
) -> httpx2.Response:
    async with httpx2.AsyncClient(headers=headers, cookies=cookies) as http:
        return await http.post(f"{base}/api/approvals/{approval_id}/decide", json=body)


async def test_the_admin_token_views_but_never_decides_and_nobody_decides_as_another(
    tmp_path: Path, exec_log: Path
) -> None:
    with running_gateway(gateway_config(exec_log, policy(HOLD), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            task = asyncio.create_task(call_held(client, "db1"))
            [pending] = await admin.pending()  # the admin token lists and views
            url = gw.control_url
            r = await post_decision(url, pending["id"], bearer(ADMIN_TOKEN), {"decision": "approve"})
            assert r.status_code == 403 and "never decide" in r.json()["error"]
            # The old impersonation: the admin token deciding "as" alice.
            r = await post_decision(
                url, pending["id"], bearer(ADMIN_TOKEN), {"decision": "approve", "user": "alice"}
            )
            assert r.status_code == 403
            # A person's own token cannot decide as someone else either.
            r = await post_decision(
                url, pending["id"], bearer(person_token("bob")), {"decision": "approve", "user": "alice"}
            )
            assert r.status_code == 400 and "`user` is not accepted" in r.json()["error"]
            r = await post_decision(url, pending["id"], bearer("not-anyones-token"), {"decision": "approve"})
            assert r.status_code == 401
            assert (await admin.get(pending["id"]))["status"] == "pending" and not task.done()
            assert executions(exec_log, "delete_thing") == []
            r = await post_decision(url, pending["id"], bearer(person_token("bob")), {"decision": "approve"})
            assert r.status_code == 200 and r.json()["by"] == "bob"
            result, _ = await asyncio.wait_for(task, 10)
            assert not result.is_error
        assert (await admin.get(pending["id"]))["decidedBy"] == "bob"
    assert len(executions(exec_log, "delete_thing")) == 1


async def test_a_quorum_needs_distinct_signed_in_people(tmp_path: Path, exec_log: Path) -> None:
    rule = {**HOLD, "approval": {"approvers": "oncall", "timeout": "30s", "quorum": 2}}
    with running_gateway(gateway_config(exec_log, policy(rule), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            task = asyncio.create_task(call_held(client))
            [pending] = await admin.pending()
            assert (await admin.decide(pending["id"], "approve", "alice"))[0] == 200
            status, body = await admin.decide(pending["id"], "approve", "alice")  # the same person again
            assert status == 409 and "already approved" in body["message"]
            r = await post_decision(
                gw.control_url, pending["id"], bearer(ADMIN_TOKEN), {"decision": "approve"}
            )
            assert r.status_code == 403
            assert (await admin.get(pending["id"]))["status"] == "pending"
            assert executions(exec_log, "delete_thing") == []
            status, body = await admin.decide(pending["id"], "approve", "carol")
            assert status == 200 and body["status"] == "approved"
            await asyncio.wait_for(task, 10)
        assert (await admin.get(pending["id"]))["decidedBy"] == "alice,carol"
    assert len(executions(exec_log, "delete_thing")) == 1


async def test_the_person_an_agent_acts_for_cannot_approve_its_call(tmp_path: Path, exec_log: Path) -> None:
    config = gateway_config(
        exec_log,
        policy(HOLD),
        approvers=APPROVERS,
        identities={"agent": {"token_env": "AGENT_TOKEN", "acts_for": "alice"}},
    )
    with running_gateway(config, tmp_path, env={"AGENT_TOKEN": "s3cret-agent"}) as gw:
        admin = Admin(gw.control_url)
        async with client_as(gw.mcp_url, "s3cret-agent") as client:
            task = asyncio.create_task(call_held(client))
            [pending] = await admin.pending()
            assert pending["actsFor"] == "alice"
            status, body = await admin.decide(pending["id"], "approve", "alice")
            assert status == 403 and "on your behalf" in body["message"]
            assert executions(exec_log, "delete_thing") == [] and not task.done()
            assert (await admin.decide(pending["id"], "deny", "bob", "not now"))[0] == 200
            result, _ = await asyncio.wait_for(task, 10)
            assert result.is_error
    assert executions(exec_log, "delete_thing") == []


async def test_page_sign_in_gives_a_strict_cookie_and_decisions_need_its_csrf_token(
    tmp_path: Path, exec_log: Path
) -> None:
    with running_gateway(gateway_config(exec_log, policy(HOLD), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client, httpx2.AsyncClient() as page:
            task = asyncio.create_task(call_held(client))
            [pending] = await admin.pending()
            refused = await page.post(gw.control_url + "/auth/token", json={"token": "guess"})
            assert refused.status_code == 401 and "set-cookie" not in refused.headers
            signed = await page.post(gw.control_url + "/auth/token", json={"token": person_token("alice")})
            assert signed.status_code == 200 and signed.json()["person"] == "alice"
            cookie = signed.headers["set-cookie"].lower()
            assert "httponly" in cookie and "samesite=strict" in cookie
            assert person_token("alice") not in signed.headers["set-cookie"]
            csrf = signed.json()["csrf"]
            # Viewing rides the cookie; deciding without the session's CSRF token does not.
            assert (await page.get(gw.control_url + "/api/approvals")).status_code == 200
            url = f"{gw.control_url}/api/approvals/{pending['id']}/decide"
            no_csrf = await page.post(url, json={"decision": "approve"})
            assert no_csrf.status_code == 403 and "X-CSRF-Token" in no_csrf.json()["error"]
            wrong = await page.post(url, json={"decision": "approve"}, headers={"X-CSRF-Token": "x" * 32})
            assert wrong.status_code == 403
            assert (await admin.get(pending["id"]))["status"] == "pending"
            assert executions(exec_log, "delete_thing") == []
            ok = await page.post(url, json={"decision": "approve"}, headers={"X-CSRF-Token": csrf})
            assert ok.status_code == 200 and ok.json()["by"] == "alice"
            await asyncio.wait_for(task, 10)
            # Signing out ends the session on the server, not just in this browser.
            assert (await page.post(gw.control_url + "/auth/logout")).status_code == 200
            replay = httpx2.AsyncClient(cookies={"signoff_session": signed.cookies["signoff_session"]})
            async with replay:
                assert (await replay.get(gw.control_url + "/api/approvals")).status_code == 401
    assert len(executions(exec_log, "delete_thing")) == 1


async def test_the_admin_token_signs_the_page_in_to_view_only(tmp_path: Path, exec_log: Path) -> None:
    with running_gateway(gateway_config(exec_log, policy(HOLD), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client, httpx2.AsyncClient() as page:
            task = asyncio.create_task(call_held(client))
            [pending] = await admin.pending()
            signed = await page.post(gw.control_url + "/auth/token", json={"token": ADMIN_TOKEN})
            assert signed.status_code == 200 and signed.json()["canDecide"] is False
            r = await page.post(
                f"{gw.control_url}/api/approvals/{pending['id']}/decide",
                json={"decision": "approve"},
                headers={"X-CSRF-Token": signed.json()["csrf"]},
            )
            assert r.status_code == 403 and (await admin.get(pending["id"]))["status"] == "pending"
            task.cancel()
    assert executions(exec_log, "delete_thing") == []
