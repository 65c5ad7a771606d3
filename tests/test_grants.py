"""Approving for a while: a real gateway, a real MCP client, the echo fixture's execution log.

A call a grant covers runs without a request (the upstream's log shows it, no approval row appears);
a call with another value of a `same` argument asks again; expiry and revocation stop the next call,
on every replica; with a quorum, a grant needs every completing vote to have chosen a duration.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from playwright.async_api import Dialog, Page, expect
from sqlalchemy import text
from sqlmodel import SQLModel

from bot import blocks
from proxy.records import Approval, Grant, utcnow
from proxy.store import MIGRATIONS, GrantRow, Store
from tests.browser import browser, page  # noqa: F401 (headless Chromium and a page in it)
from tests.conftest import Admin, executions, person_token
from tests.fakeslack import SIGNING_SECRET, FakeSlack, block_action_payload, post_signed
from tests.procs import ROOT, SIGNOFF, running_gateway
from tests.test_approvals import APPROVERS, policy
from tests.test_slack import (
    all_text,
    ephemerals_for,
    fake,  # noqa: F401 (the fake Slack fixture)
    gateway,
    mcp_client,
    posted_request,
    top_level,
    wait_message,
)
from tests.test_slack import config as slack_config


def granting(grant: dict[str, Any], **approval: Any) -> dict[str, Any]:
    """`delete_thing` needs `oncall`'s approval, which may be given for a while."""
    return {
        "name": "deletes need approval",
        "tools": "delete_thing",
        "action": "require_approval",
        "approval": {"approvers": "oncall", "timeout": "20s", "grant": grant, **approval},
    }


FOR_A_WHILE = granting({"max": "1h", "same": ["name"], "offer": ["30m", "1h"]})


async def approve(base: str, approval_id: str, user: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    """Approve as the test person `user`, with `for` / `arguments` as given."""
    headers = {"Authorization": f"Bearer {person_token(user)}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        r = await http.post(
            f"{base}/api/approvals/{approval_id}/decide", json={"decision": "approve", **extra}
        )
        return r.status_code, r.json()


async def listed(admin: Admin, what: str) -> list[dict[str, Any]]:
    """`approvals?status=all` or `grants?status=all`, as the admin token views them."""
    async with httpx2.AsyncClient(headers=admin.headers) as http:
        return (await http.get(f"{admin.base}/api/{what}?status=all")).json()[what]


async def delete(client: Client, name: str, **args: Any) -> Any:
    # A guard against a hang, not a time limit: a held call here waits for CLI runs (~2 s each
    # on a loaded machine), and the guard expiring cancels the call, which withdraws it.
    return await asyncio.wait_for(client.call_tool("delete_thing", {"name": name, **args}), 90)


async def test_approving_for_a_while_lets_the_same_calls_run_without_asking(
    tmp_path: Path, exec_log: Path, gwconf: Any
) -> None:
    with running_gateway(gwconf(policy(FOR_A_WHILE), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            first = asyncio.create_task(delete(client, "db1"))
            [pending] = await admin.pending()
            offer = pending["grantOffer"]
            assert offer["offerText"] == ["30 min", "1 h"] and offer["values"] == {"name": "db1"}
            status, body = await approve(gw.control_url, pending["id"], "alice", **{"for": "2h"})
            assert status == 400 and "choose one of: 30 min, 1 h" in body["message"]
            assert (await admin.get(pending["id"]))["status"] == "pending"  # a bad duration decides nothing

            status, body = await approve(gw.control_url, pending["id"], "alice", **{"for": "30m"})
            assert status == 200 and body["message"].startswith("Approved for 30 min (grant gr_"), body
            assert not (await first).is_error
            grant_id = (await admin.get(pending["id"]))["grantId"]
            [grant] = await listed(admin, "grants")
            assert grant["id"] == grant_id and grant["state"] == "live" and grant["createdBy"] == "alice"
            started = datetime.fromisoformat(grant["createdAt"])
            assert (datetime.fromisoformat(grant["expiresAt"]) - started).total_seconds() == 1800

            # The same identity, tool and name: each runs at once, with no new request.
            for force in (False, True):
                result = await delete(client, "db1", force=force)
                assert not result.is_error and result.content[0].text == "deleted db1"
            assert len(await listed(admin, "approvals")) == 1
            ran = [e["args"] for e in executions(exec_log, "delete_thing")]
            assert ran == [{"name": "db1", "force": f} for f in (False, False, True)]

            # Another name is not covered: it asks.
            other = asyncio.create_task(delete(client, "db2"))
            [again] = await admin.pending()
            assert again["arguments"] == {"name": "db2"} and again["grantOffer"]["values"] == {"name": "db2"}
            assert (await admin.decide(again["id"], "deny", "bob", "not db2"))[0] == 200
            assert (await other).is_error

        uses = await admin.audit_for(
            lambda r: r["grantId"] == grant_id and r["decision"] == "require_approval", 2
        )
        assert [(r["approvers"], r["outcome"], r["approvalId"]) for r in uses] == [("alice", "ok", None)] * 2
        [created] = await admin.audit_for(lambda r: r["decision"] == "grant_created")
        assert created["grantId"] == grant_id and created["approvers"] == "alice"
        assert "for 30 min" in created["reason"] and 'name = "db1"' in created["reason"]
    assert len(executions(exec_log, "delete_thing")) == 3


async def test_a_grant_ends_when_it_expires(tmp_path: Path, exec_log: Path, gwconf: Any) -> None:
    rule = granting({"max": "3s", "same": ["name"]})  # offer defaults to [max]
    with running_gateway(gwconf(policy(rule), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            first = asyncio.create_task(delete(client, "db1"))
            [pending] = await admin.pending()
            assert pending["grantOffer"]["offerText"] == ["3 s"]
            assert (await approve(gw.control_url, pending["id"], "bob", **{"for": 3}))[0] == 200
            assert not (await first).is_error
            assert not (await delete(client, "db1")).is_error  # within the grant
            assert len(executions(exec_log, "delete_thing")) == 2

            async def ended() -> None:
                while True:
                    if (await listed(admin, "grants"))[0]["state"] == "expired":
                        return
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(ended(), 10)
            late = asyncio.create_task(delete(client, "db1"))
            [again] = await admin.pending()  # asks again
            assert again["id"] != pending["id"]
            assert (await admin.decide(again["id"], "deny", "alice", "enough"))[0] == 200
            assert (await late).is_error
    assert len(executions(exec_log, "delete_thing")) == 2


async def test_with_a_quorum_a_grant_needs_every_vote_to_choose_a_duration(
    tmp_path: Path, exec_log: Path, gwconf: Any
) -> None:
    rule = granting({"max": "1h", "same": ["name"], "offer": ["30m", "1h"]}, quorum=2)
    with running_gateway(gwconf(policy(rule), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            # Alice approves for 30 min, Bob just approves: the call runs, no grant.
            call = asyncio.create_task(delete(client, "db1"))
            [first] = await admin.pending()
            status, body = await approve(gw.control_url, first["id"], "alice", **{"for": "30m"})
            assert status == 200 and body["message"] == "Approval for 30 min recorded: 1 of 2."
            assert (await approve(gw.control_url, first["id"], "bob"))[0] == 200
            assert not (await call).is_error
            assert (await admin.get(first["id"]))["grantId"] is None and await listed(admin, "grants") == []

            # Both choose a duration: a grant, for the shorter one.
            call = asyncio.create_task(delete(client, "db1"))
            [second] = await admin.pending()
            assert (await approve(gw.control_url, second["id"], "alice", **{"for": "1h"}))[0] == 200
            assert (await approve(gw.control_url, second["id"], "carol", **{"for": "30m"}))[0] == 200
            assert not (await call).is_error
            [grant] = await listed(admin, "grants")
            assert grant["id"] == (await admin.get(second["id"]))["grantId"]
            assert grant["createdBy"] == "alice,carol"
            length = datetime.fromisoformat(grant["expiresAt"]) - datetime.fromisoformat(grant["createdAt"])
            assert length.total_seconds() == 1800

            assert not (await delete(client, "db1")).is_error  # covered: no third request
            assert len(await listed(admin, "approvals")) == 2
            [use] = await admin.audit_for(
                lambda r: r["grantId"] == grant["id"] and r["decision"] == "require_approval"
            )
            assert use["approvers"] == "alice,carol"
    assert len(executions(exec_log, "delete_thing")) == 3


def signoff_as(person: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SIGNOFF_APPROVER_TOKEN"}
    if person is not None:
        env["SIGNOFF_APPROVER_TOKEN"] = person_token(person)
    return subprocess.run([*SIGNOFF, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


async def test_cli_approves_for_a_while_then_lists_and_revokes_grants(
    tmp_path: Path, exec_log: Path, sqlite_gwconf: Any
) -> None:
    with running_gateway(sqlite_gwconf(policy(FOR_A_WHILE), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        conf = str(gw.config_path)

        async def cli(person: str | None, *args: str) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(signoff_as, person, *args, "--config", conf)

        async with Client(gw.mcp_url, mode="legacy") as client:
            call = asyncio.create_task(delete(client, "db1"))
            [pending] = await admin.pending()
            shown = await cli("alice", "approvals", "show", pending["id"])
            assert "may be approved for a while: 30 min, 1 h (covers the same name" in shown.stdout
            out = await cli("alice", "approvals", "approve", pending["id"], "--for", "45m")
            assert out.returncode == 1 and "choose one of: 30 min, 1 h" in out.stdout
            out = await cli("alice", "approvals", "approve", pending["id"], "--for", "30m")
            assert out.returncode == 0 and "grant gr_" in out.stdout and "(as alice)" in out.stdout, out
            assert not (await call).is_error

            listing = await cli("bob", "grants", "list")
            assert listing.returncode == 0, listing.stderr
            [row] = [line for line in listing.stdout.splitlines() if line.startswith("gr_")]
            grant_id = row.split()[0]
            assert (
                " live " in row and " alice " in row and 'delete_thing by anonymous with name = "db1"' in row
            )
            nobody = await cli(None, "grants", "list")
            assert nobody.returncode != 0 and "SIGNOFF_APPROVER_TOKEN" in nobody.stderr

            refused = await cli("dave", "grants", "revoke", grant_id)  # dave is in no approver group
            assert refused.returncode == 1 and "not an approver" in refused.stdout
            assert not (await delete(client, "db1")).is_error  # still covered

            revoked = await cli("bob", "grants", "revoke", grant_id)
            assert revoked.returncode == 0 and f"Grant {grant_id} revoked" in revoked.stdout, revoked
            again = await cli("carol", "grants", "revoke", grant_id)
            assert again.returncode == 1 and "already revoked by bob" in again.stdout
            call = asyncio.create_task(delete(client, "db1"))
            [asked] = await admin.pending()  # the next call asks again
            assert (await admin.decide(asked["id"], "deny", "carol", "revoked for a reason"))[0] == 200
            assert (await call).is_error
            listing = await cli("bob", "grants", "list", "--all")
            assert f"{grant_id}  revoked  bob" in listing.stdout
        [audited] = await admin.audit_for(lambda r: r["decision"] == "grant_revoked")
        assert (audited["grantId"], audited["approvers"], audited["outcome"]) == (grant_id, "bob", "revoked")
        refusals = await admin.audit_for(lambda r: r["decision"] == "refused_click")
        assert [(r["approvers"], r["reason"]) for r in refusals] == [
            ("dave", "not an approver (revoke grant)")
        ]
    assert len(executions(exec_log, "delete_thing")) == 2


@pytest.mark.browser
async def test_the_page_approves_for_a_while_lists_the_grant_and_revokes_it(
    tmp_path: Path,
    exec_log: Path,
    sqlite_gwconf: Any,
    page: Page,  # noqa: F811
) -> None:
    async def confirm(dialog: Dialog) -> None:
        await dialog.accept()  # delete_thing is destructive: the page asks first

    page.on("dialog", confirm)
    with running_gateway(sqlite_gwconf(policy(FOR_A_WHILE), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            call = asyncio.create_task(delete(client, "db1"))
            await admin.pending()
            await page.goto(f"{gw.control_url}/approvals#signin={person_token('alice')}")
            card = page.locator("#pending article.card")
            await expect(card).to_contain_text("later calls of delete_thing by anonymous with the same name")
            await card.get_by_role("button", name="Approve for 30 min").click()
            await expect(page.locator("#banner")).to_contain_text("Approved for 30 min (grant gr_")
            assert not (await call).is_error

            live = page.locator("#grants tr").filter(has_text="live")
            await expect(live).to_have_count(1)
            await expect(live).to_contain_text('delete_thing by anonymous with name = "db1"')
            await expect(live).to_contain_text("alice")
            assert not (await delete(client, "db1")).is_error  # covered

            await live.get_by_role("button", name="Revoke").click()
            await expect(page.locator("#banner")).to_contain_text("revoked")
            await expect(page.locator("#grants tr").filter(has_text="revoked by alice")).to_have_count(1)
            call = asyncio.create_task(delete(client, "db1"))
            [asked] = await admin.pending()
            assert (await admin.decide(asked["id"], "deny", "bob", "asked again"))[0] == 200
            assert (await call).is_error
    assert len(executions(exec_log, "delete_thing")) == 2


# -- Slack, two replicas on one PostgreSQL ----------------------------------------------------------


def slack_button(message: dict[str, Any], text: str) -> dict[str, Any]:
    for block in message.get("blocks", []):
        for element in block.get("elements", []):
            if element.get("type") == "button" and element["text"]["text"] == text:
                return {**element, "block_id": block.get("block_id")}
    raise AssertionError(f"no {text!r} button in {all_text(message)[:800]}")


async def press(url: str, user: str, button: dict[str, Any], channel: str, ts: str) -> None:
    payload = block_action_payload(
        user=user,
        action_id=button["action_id"],
        value=button["value"],
        channel=channel,
        message_ts=ts,
        block_id=button["block_id"],
    )
    status, _ = await post_signed(url + "/slack/events", payload, SIGNING_SECRET)
    assert status == 200


@pytest.mark.postgres
@pytest.mark.usefixtures("no_proxy")
async def test_revoking_in_slack_stops_the_next_call_on_the_other_replica(
    fake: FakeSlack,  # noqa: F811
    tmp_path: Path,
    exec_log: Path,
    pg: Any,
) -> None:
    db = pg.new_database()

    def replica(name: str) -> dict[str, Any]:
        cfg = slack_config(fake, exec_log)
        cfg["policy"] = policy(FOR_A_WHILE)
        return {**cfg, "database_url": db, "replica": name}

    async with (
        gateway(replica("a"), tmp_path, name="a") as a,
        gateway(replica("b"), tmp_path, name="b") as b,
        mcp_client(a.mcp_url) as client,
    ):
        call = asyncio.create_task(delete(client, "db-1"))
        channel, ts, _ = await posted_request(fake)
        posted = fake.message(channel, ts)
        assert "run without asking until it ends" in all_text(posted)
        # Approved for 30 min on B; the call held on A runs.
        await press(b.control_url, "U_ALICE", slack_button(posted, "Approve for 30 min"), channel, ts)
        assert not (await call).is_error
        final = await wait_message(fake, channel, ts, "Approved* by <@U_ALICE> for 30 min (grant `gr_")
        revoke = slack_button(final, "Revoke")
        assert revoke["action_id"] == blocks.REVOKE_GRANT

        assert not (await delete(client, "db-1")).is_error  # covered on A: no new message
        assert len(top_level(fake)) == 1

        # Someone who is not an approver of the rule cannot revoke it.
        await press(b.control_url, "U_MALLORY", revoke, channel, ts)
        [refused] = await ephemerals_for(fake, "U_MALLORY")
        assert "not an approver" in refused["text"]
        assert not (await delete(client, "db-1")).is_error
        assert len(top_level(fake)) == 1

        await press(b.control_url, "U_BOB", revoke, channel, ts)
        revoked = await wait_message(fake, channel, ts, "*revoked* by <@U_BOB>")
        assert blocks.REVOKE_GRANT not in all_text(revoked)
        # The very next call on A asks again.
        call = asyncio.create_task(delete(client, "db-1"))
        second_channel, second_ts, _ = await posted_request(fake, 2)
        deny = slack_button(fake.message(second_channel, second_ts), "Deny")
        await press(a.control_url, "U_BOB", deny, second_channel, second_ts)
        assert (await call).is_error
    assert len(executions(exec_log, "delete_thing")) == 3


# -- the schema ------------------------------------------------------------------------------------

ADDED_IN_3 = [
    ("approval", "input_schema"),
    ("approval", "identity_groups"),
    ("approval", "grant_offer"),
    ("approval", "grant_id"),
    ("approval", "edited_arguments"),
    ("approval", "edited_hash"),
    ("approval", "edited_paths"),
    ("vote", "grant_for"),
    ("audit", "grant_id"),
    ("audit", "edited_hash"),
]


async def test_migration_3_brings_an_older_database_up_to_grants_and_edits(db_url: str) -> None:
    store = Store(db_url)
    await store.open()
    try:
        # A database as it was before version 3: no grant table, none of the columns 3 adds.
        async with store.engine.begin() as conn:
            await conn.execute(text('DROP TABLE "grant"'))
            for table, column in ADDED_IN_3:
                await conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        async with store.engine.begin() as conn:
            for statement in dict(MIGRATIONS)[3]:
                await conn.execute(text(statement))
            await conn.run_sync(SQLModel.metadata.create_all)  # what `Store.open` does for new tables

        now = utcnow()
        edited = {"name": 'db\u2028"2"', "n": 1.5}
        row = Approval(
            id="apr_1",
            identity="agent",
            tool="delete_thing",
            args_hash="h",
            expires_at=now,
            input_schema={"type": "object"},
            identity_groups=["ops"],
            grant_offer={"offer": [60.0]},
            edited_arguments=edited,
            edited_hash="e",
            edited_paths=["name"],
        )
        await store.add_approval(row)
        count, _ = await store.vote("apr_1", "alice", 2, grant_for=60.0)
        assert count == 1
        back = await store.approval("apr_1")
        assert back is not None and back.edited_arguments == edited and back.identity_groups == ["ops"]
        grant = Grant(
            id="gr_1",
            identity="agent",
            tool="delete_thing",
            values_hash="v",
            created_by="alice",
            expires_at=now + timedelta(minutes=1),
            approval_id="apr_1",
        )
        async with store.sessions() as s:
            s.add(GrantRow(**asdict(grant)))
            await s.commit()
        assert (await store.live_grant("agent", "delete_thing", "", "v", utcnow(), 60.0)) is not None
        await store.insert_audit(
            [
                store.audit_params(
                    {
                        "call_id": "c",
                        "identity": "agent",
                        "tool": "t",
                        "decision": "x",
                        "grant_id": "gr_1",
                        "edited_hash": "e",
                    }
                )
            ]
        )
        [record] = await store.audit()
        assert (record.grant_id, record.edited_hash) == ("gr_1", "e")
        assert await store.revoke_grant("gr_1", "bob", utcnow()) is not None
        assert await store.live_grant("agent", "delete_thing", "", "v", utcnow(), 60.0) is None
    finally:
        await store.close()
