"""Edit and approve: the approver changes the arguments, and the call runs with exactly those.

Real gateways and MCP clients; the echo fixture's execution log says what the upstream received. An
edit the tool's input schema or the policy refuses decides nothing and runs nothing; an accepted one
is audited with both hashes and the agent is told what changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from mcp import Client
from playwright.async_api import Dialog, Page, expect

from bot import blocks
from tests.browser import browser, page  # noqa: F401 (headless Chromium and a page in it)
from tests.conftest import DECISION, Admin, executions, person_token
from tests.fakeslack import SIGNING_SECRET, FakeSlack, post_signed, view_submission_payload
from tests.procs import ROOT, SIGNOFF, running_gateway
from tests.test_approvals import APPROVERS, HOLD, policy
from tests.test_grants import approve, delete, press, slack_button
from tests.test_replicas import replica_config
from tests.test_slack import (
    all_text,
    ephemerals_for,
    fake,  # noqa: F401 (the fake Slack fixture)
    gateway,
    mcp_client,
    posted_request,
    wait_message,
)
from tests.test_slack import config as slack_config


def sha256(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)).hexdigest()


NO_PROD = {
    "name": "no prod deletes",
    "tools": "delete_thing",
    "when": [{"path": "name", "op": "regex", "value": "^prod"}],
    "action": "deny",
    "reason": "prod is off limits",
}


async def test_the_call_runs_with_exactly_the_edited_arguments_and_the_agent_is_told(
    tmp_path: Path, exec_log: Path, gwconf: Any
) -> None:
    with running_gateway(gwconf(policy(HOLD), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            call = asyncio.create_task(delete(client, "db1"))
            [pending] = await admin.pending()
            assert pending["editable"] and pending["edited"] is None
            edited = {"name": "db1-copy \u00e9", "force": True}
            status, body = await approve(gw.control_url, pending["id"], "alice", arguments=edited)
            assert (
                status == 200 and body["message"] == "Approved with edited arguments (changed: force, name)."
            )
            result = await call
        assert not result.is_error and result.content[0].text == "deleted db1-copy \u00e9"
        change = {"from": pending["argumentsHash"], "to": sha256(edited), "changed": ["force", "name"]}
        assert pending["argumentsHash"] == sha256({"name": "db1"})
        assert result.meta[DECISION]["edited"] == change
        note = result.content[-1].text
        assert "edited the arguments before approving" in note and "Changed: force, name" in note
        assert [e["args"] for e in executions(exec_log, "delete_thing")] == [edited]

        shown = await admin.get(pending["id"])
        assert shown["edited"] == {**change, "arguments": edited} and shown["arguments"] == {"name": "db1"}
        [record] = await admin.audit_for(
            lambda r: r["tool"] == "delete_thing" and r["decision"] == "require_approval"
        )
        assert record["editedHash"] == sha256(edited) and record["outcome"] == "ok"
        assert pending["argumentsHash"] in record["reason"] and sha256(edited) in record["reason"]
        assert record["arguments"] == edited


async def test_a_refused_edit_decides_nothing_and_runs_nothing(
    tmp_path: Path, exec_log: Path, sqlite_gwconf: Any
) -> None:
    with running_gateway(sqlite_gwconf(policy(NO_PROD, HOLD), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            call = asyncio.create_task(delete(client, "db1"))
            [pending] = await admin.pending()
            refusals = {
                "schema (type)": ({"name": 5}, "input schema: name: 5 is not of type 'string'"),
                "schema (required)": ({"force": True}, "'name' is a required property"),
                "policy": ({"name": "prod-db"}, "the policy denies the edited call (rule 'no prod deletes'"),
            }
            for why, (edit, message) in refusals.items():
                status, body = await approve(gw.control_url, pending["id"], "alice", arguments=edit)
                assert status == 400 and message in body["message"], (why, body)
                assert (
                    body["message"].startswith("Edit refused: ") and "Nothing was decided" in body["message"]
                )
            assert (await approve(gw.control_url, pending["id"], "alice", arguments=[1]))[0] == 400

            # The CLI refuses the same way; a file that is not JSON never reaches the gateway.
            def cli(*args: str) -> subprocess.CompletedProcess[str]:
                env = {**os.environ, "SIGNOFF_APPROVER_TOKEN": person_token("bob")}
                command = [*SIGNOFF, "approvals", "approve", pending["id"], "--config", str(gw.config_path)]
                return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, env=env)

            (tmp_path / "bad.json").write_text("{name: db2}")
            out = await asyncio.to_thread(cli, "--arguments", str(tmp_path / "bad.json"))
            assert out.returncode == 2 and "not valid JSON" in out.stderr
            (tmp_path / "prod.json").write_text(json.dumps({"name": "prod-1"}))
            out = await asyncio.to_thread(cli, "--arguments", str(tmp_path / "prod.json"))
            assert out.returncode == 1 and "prod is off limits" in out.stdout

            assert (await admin.get(pending["id"]))["status"] == "pending" and not call.done()
            assert executions(exec_log) == []

            (tmp_path / "ok.json").write_text(json.dumps({"name": "db1-archive"}))
            out = await asyncio.to_thread(cli, "--arguments", str(tmp_path / "ok.json"))
            assert out.returncode == 0 and "Approved with edited arguments (changed: name)" in out.stdout, out
            result = await call
        assert result.content[0].text == "deleted db1-archive"
        assert result.meta[DECISION]["edited"]["changed"] == ["name"]
    assert [e["args"] for e in executions(exec_log, "delete_thing")] == [
        {"name": "db1-archive", "force": False}
    ]


@pytest.mark.postgres
async def test_an_edit_decided_on_another_replica_runs_byte_for_byte_where_the_call_waits(
    tmp_path: Path, exec_log: Path, pg: Any
) -> None:
    db = pg.new_database()
    with (
        running_gateway(replica_config(exec_log, db, "a"), tmp_path, name="a") as a,
        running_gateway(replica_config(exec_log, db, "b"), tmp_path, name="b") as b,
    ):
        async with Client(a.mcp_url, mode="legacy") as client:
            call = asyncio.create_task(delete(client, "db1"))
            [pending] = await Admin(b.control_url).pending()
            # Unicode, a line separator and quotes survive the trip through the database.
            edited = {"name": 'z\u2028"q" \u00e9', "force": False}
            assert (await approve(b.control_url, pending["id"], "carol", arguments=edited))[0] == 200
            result = await call
        assert not result.is_error and result.meta[DECISION]["edited"]["to"] == sha256(edited)
    assert [e["args"] for e in executions(exec_log, "delete_thing")] == [edited]


@pytest.mark.usefixtures("no_proxy")
async def test_edit_and_approve_in_slack(fake: FakeSlack, tmp_path: Path, exec_log: Path) -> None:  # noqa: F811
    cfg = slack_config(fake, exec_log)
    cfg["policy"]["rules"].insert(0, NO_PROD)
    async with gateway(cfg, tmp_path) as gw, mcp_client(gw.mcp_url) as client:
        call = asyncio.create_task(delete(client, "db-1"))
        channel, ts, approval_id = await posted_request(fake)
        edit = slack_button(fake.message(channel, ts), "Edit and approve")
        assert edit["action_id"] == blocks.EDIT_APPROVE

        await press(gw.control_url, "U_MALLORY", edit, channel, ts)  # not an approver: no modal
        [refused] = await ephemerals_for(fake, "U_MALLORY")
        assert "Only this request's approvers" in refused["text"] and fake.calls_to("views.open") == []

        await press(gw.control_url, "U_ALICE", edit, channel, ts)
        [opened] = await fake.wait_for("views.open")
        view = opened.params["view"]
        assert view["callback_id"] == blocks.EDIT_VIEW and view["private_metadata"] == approval_id
        [field] = [b for b in view["blocks"] if b.get("block_id") == blocks.EDIT_BLOCK]
        assert json.loads(field["element"]["initial_value"]) == {"name": "db-1"}

        async def submit(text: str) -> dict[str, Any]:
            payload = view_submission_payload(
                user="U_ALICE",
                callback_id=blocks.EDIT_VIEW,
                private_metadata=approval_id,
                values={blocks.EDIT_BLOCK: {blocks.EDIT_ACTION: text}},
            )
            status, body = await post_signed(gw.control_url + "/slack/events", payload, SIGNING_SECRET)
            assert status == 200
            return json.loads(body) if body else {}

        for text, why in (
            ("{not json", "not valid JSON"),
            ('{"name": ["db-1"]}', "input schema: name: ['db-1'] is not of type 'string'"),
            ('{"name": "prod-main"}', "rule 'no prod deletes': prod is off limits"),
        ):
            answer = await submit(text)
            assert answer["response_action"] == "errors" and why in answer["errors"][blocks.EDIT_BLOCK]
        assert not call.done() and executions(exec_log) == []

        assert await submit('{"name": "db-1-old", "force": true}') == {}
        result = await asyncio.wait_for(call, 10)
        assert result.content[0].text == "deleted db-1-old"
        final = await wait_message(fake, channel, ts, "Edited before approval")
        assert "Approved* by <@U_ALICE> with edited arguments" in all_text(final)
        assert sha256({"name": "db-1"}) in all_text(final)
        assert sha256({"name": "db-1-old", "force": True}) in all_text(final)
    assert [e["args"] for e in executions(exec_log, "delete_thing")] == [{"name": "db-1-old", "force": True}]


@pytest.mark.browser
async def test_the_page_edits_and_approves(
    tmp_path: Path,
    exec_log: Path,
    sqlite_gwconf: Any,
    page: Page,  # noqa: F811
) -> None:
    async def confirm(dialog: Dialog) -> None:
        await dialog.accept()

    page.on("dialog", confirm)
    with running_gateway(sqlite_gwconf(policy(HOLD), approvers=APPROVERS), tmp_path) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            call = asyncio.create_task(delete(client, "db1"))
            await Admin(gw.control_url).pending()
            await page.goto(f"{gw.control_url}/approvals#signin={person_token('bob')}")
            card = page.locator("#pending article.card")
            await card.get_by_role("button", name="Edit arguments").click()
            editor = card.get_by_label("edited arguments for delete_thing")
            assert json.loads(await editor.input_value()) == {"name": "db1"}

            await editor.fill('{"name": 7}')
            await card.get_by_role("button", name="Approve edited arguments").click()
            await expect(page.locator("#banner")).to_contain_text(
                "Edit refused: the edited arguments do not fit"
            )
            assert not call.done() and executions(exec_log) == []

            await editor.fill('{"name": "db1-b"}')
            await card.get_by_role("button", name="Approve edited arguments").click()
            await expect(page.locator("#banner")).to_contain_text(
                "Approved with edited arguments (changed: name)"
            )
            result = await call
        assert result.content[0].text == "deleted db1-b"
        row = page.locator("#decided tr").filter(has_text="executed")
        await expect(row).to_contain_text(f"edited: sha256 {sha256({'name': 'db1'})[:12]}")
        await expect(row).to_contain_text("(changed name)")
    assert [e["args"] for e in executions(exec_log, "delete_thing")] == [{"name": "db1-b", "force": False}]


async def test_pending_mode_runs_the_edited_call_once_then_the_grant_covers_the_rest(
    tmp_path: Path, exec_log: Path, sqlite_gwconf: Any
) -> None:
    rule = {
        **HOLD,
        "approval": {
            "approvers": "oncall",
            "mode": "pending",
            "grant": {"max": "1h", "same": ["name"], "offer": ["30m"]},
        },
    }
    with running_gateway(sqlite_gwconf(policy(rule), approvers=APPROVERS), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            asked = await delete(client, "db1")
            assert asked.is_error and asked.meta[DECISION]["reason"] == "approval_pending"
            edit = {"name": "db1", "force": True}
            extra = {"for": "30m", "arguments": edit}
            status, body = await approve(gw.control_url, asked.meta[DECISION]["approvalId"], "alice", **extra)
            assert status == 200 and "changed: force" in body["message"] and "grant gr_" in body["message"]
            again = await delete(client, "db1")  # the call-again runs the approved, edited call
            assert again.meta[DECISION]["edited"]["changed"] == ["force"]
            later = await delete(client, "db1")  # then the grant covers calls with the same name
            assert not later.is_error and DECISION not in (later.meta or {})
            assert (
                len(await admin.audit_for(lambda r: r["grantId"] is not None and r["outcome"] == "ok")) == 1
            )
    ran = [e["args"] for e in executions(exec_log, "delete_thing")]
    assert ran == [{"name": "db1", "force": True}, {"name": "db1", "force": False}]
