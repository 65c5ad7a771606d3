"""Context for the approver: the target's live state (read by signoff) and the last decisions on the tool.

Real parts: a gateway process in front of the demo jobs server (stdio), the MCP SDK client, the
approvals API as the page and the CLI use it, the fake Slack for the Slack side, and Chromium for
the page. The jobs server's `finish-job` plays a job's worker finishing it while a cancel waits.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from playwright.async_api import Dialog, Page, expect

from bot import blocks
from tests.browser import browser, page  # noqa: F401 - fixtures
from tests.conftest import ADMIN_TOKEN, PEOPLE, Admin, person_token
from tests.fakeslack import SIGNING_SECRET, FakeSlack, block_action_payload, post_signed
from tests.procs import PYTHON, ROOT, free_port, running_gateway
from tests.test_slack import all_text, click, ephemerals_for, gateway, posted_request, wait_message
from tests.test_webpage import open_page

JOBS = str(ROOT / "proxy" / "demo" / "jobs_server.py")
FIXTURE = str(ROOT / "tests" / "fixtures" / "changing_server.py")
ENDPOINT = "sdxl-4k7q2m"
PROBE = {
    "tool": "get-job",
    "arguments": {"job_id": "{job_id}"},
    "label": "{job_id}",
    "show": ["status", "submitted_at"],
    "timeout": "10s",  # the default 2.5 s is too short for a machine busy with other test processes
}


def cancel_rule(**approval: Any) -> dict[str, Any]:
    return {
        "name": "on-call approves cancels",
        "tools": "cancel-job",
        "action": "require_approval",
        "approval": {"approvers": "oncall", "timeout": "30s", "context": PROBE, **approval},
    }


def jobs_config(tmp_path: Path, *rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The demo jobs server behind a gateway whose cancels need approval, with a context probe."""
    return {
        "upstreams": {"jobs": {"command": PYTHON, "args": [JOBS]}},
        "control": {"host": "127.0.0.1", "port": free_port(), "admin_token": ADMIN_TOKEN},
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        "approvals": {"progress_interval": "0.5s"},
        "people": PEOPLE,
        "approvers": {"oncall": {"people": ["alice", "bob"]}},
        "policy": {"default": "allow", "rules": list(rules or [cancel_rule()])},
        **extra,
    }


async def decide(admin: Admin, approval_id: str, user: str, **body: Any) -> tuple[int, dict[str, Any]]:
    """A person's decision through the API, with extra body fields (`confirmChanged`)."""
    headers = {"Authorization": f"Bearer {person_token(user)}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        r = await http.post(f"{admin.base}/api/approvals/{approval_id}/decide", json=body)
        return r.status_code, r.json()


def cancel(client: Client, job: str) -> asyncio.Task[Any]:
    return asyncio.create_task(client.call_tool("cancel-job", {"endpoint_id": ENDPOINT, "job_id": job}))


async def pending_for(admin: Admin, job: str) -> dict[str, Any]:
    """The pending request that cancels `job`."""
    for _ in range(200):
        found = [a for a in await admin.pending() if a["arguments"].get("job_id") == job]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no pending request for {job}")


async def test_the_live_state_is_shown_and_a_change_at_the_click_asks_again(tmp_path: Path) -> None:
    with running_gateway(jobs_config(tmp_path), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            call = cancel(client, "job-7f3a")
            pending = await pending_for(admin, "job-7f3a")
            state = pending["context"]
            assert state["fields"]["status"] == "IN_PROGRESS" and state["error"] is None
            assert state["summary"].startswith("job-7f3a: status IN_PROGRESS, submitted_at 20")
            assert state["changed"] is None and state["arguments"] == {"job_id": "job-7f3a"}

            # The job finishes while the request waits; the approver's click reads it again.
            assert not (await client.call_tool("finish-job", {"job_id": "job-7f3a"})).is_error
            status, body = await decide(admin, pending["id"], "alice", decision="approve")
            assert (status, body["accepted"], body["status"]) == (409, False, "pending")
            assert body["contextChanged"]["changed"] == "status COMPLETED (was IN_PROGRESS)"
            assert body["message"].startswith(
                "job-7f3a changed since the request was shown: now status COMPLETED"
            )
            assert body["message"].endswith("Approve anyway?")
            shown = (await admin.get(pending["id"]))["context"]
            assert shown["fields"]["status"] == "COMPLETED" and shown["was"]["status"] == "IN_PROGRESS"

            # Nobody approves the changed request without saying so, not even another approver.
            status, body = await decide(admin, pending["id"], "bob", decision="approve")
            assert status == 409 and body["contextChanged"] and not call.done()
            status, body = await decide(admin, pending["id"], "bob", decision="approve", confirmChanged=True)
            assert (status, body["status"]) == (200, "approved")
            result = await asyncio.wait_for(call, 10)
            # It ran as approved; the jobs server refused: there was nothing left to cancel.
            assert result.is_error and result.content[0].text == "Error executing tool cancel-job"
            job = await client.call_tool("get-job", {"job_id": "job-7f3a"})
            assert json.loads(job.content[0].text)["status"] == "COMPLETED"

        probes = await admin.audit_for(lambda r: r["decision"] == "context_probe", n=4)
        assert len(probes) == 4  # before posting, and at each of the three approve clicks
        assert {(r["identity"], r["tool"], r["approvalId"], r["outcome"]) for r in probes} == {
            ("(signoff)", "get-job", pending["id"], "ok")
        }
        assert all(r["arguments"] == {"job_id": "job-7f3a"} for r in probes)


async def test_history_lists_the_last_decisions_on_the_tool(tmp_path: Path) -> None:
    with running_gateway(jobs_config(tmp_path), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            first = cancel(client, "job-7f3a")
            request = await pending_for(admin, "job-7f3a")
            assert request["history"] == []
            assert (await admin.decide(request["id"], "approve", "alice"))[0] == 200
            assert not (await asyncio.wait_for(first, 10)).is_error

            second = cancel(client, "job-91c2")
            request = await pending_for(admin, "job-91c2")
            [past] = request["history"]
            assert (past["status"], past["decidedBy"], past["outcome"]) == ("approved", "alice", "ok")
            await admin.decide(request["id"], "deny", "bob", "the queue drains by itself")
            assert (await asyncio.wait_for(second, 10)).is_error

            third = cancel(client, "job-c4e1")
            request = await pending_for(admin, "job-c4e1")
            newest, older = request["history"]
            assert (newest["status"], newest["decidedBy"], newest["reason"]) == (
                "denied",
                "bob",
                "the queue drains by itself",
            )
            assert (older["status"], older["outcome"]) == ("approved", "ok")
            assert request["id"] not in {d["id"] for d in request["history"]}
            await admin.decide(request["id"], "deny", "bob", "no")
            await asyncio.wait_for(third, 10)


async def test_a_failing_or_slow_probe_never_holds_the_request_back(tmp_path: Path) -> None:
    rules = [
        cancel_rule(),  # get-job of a job that does not exist: the jobs server answers with an error
        {
            "name": "lists need approval",
            "tools": "list-jobs",
            "action": "require_approval",
            # cancel-job is no read tool: signoff never runs it as a probe
            "approval": {"approvers": "oncall", "context": {"tool": "cancel-job", "show": ["status"]}},
        },
    ]
    with running_gateway(jobs_config(tmp_path, *rules), tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            call = cancel(client, "job-nope")
            request = await pending_for(admin, "job-nope")
            state = request["context"]
            assert state["fields"] is None
            assert state["summary"] == (
                "job-nope: state unknown (get-job answered with an error: Error executing tool get-job)"
            )
            assert (await admin.decide(request["id"], "approve", "alice"))[0] == 200  # unknown never blocks
            assert (await asyncio.wait_for(call, 10)).is_error  # there is no such job to cancel

            listing = asyncio.create_task(client.call_tool("list-jobs", {}))
            [request] = await admin.pending()
            assert (
                "cancel-job is not a read tool (destructive), so signoff does not run it"
                in (request["context"]["summary"])
            )
            await admin.decide(request["id"], "deny", "bob", "no")
            await asyncio.wait_for(listing, 10)
        # The refused probe reached nothing: the jobs still run.
        assert not any(
            r["tool"] == "cancel-job" and r["decision"] == "context_probe" and r["outcome"] == "ok"
            for r in await admin.audit()
        )


async def test_a_slow_probe_says_so_and_the_request_is_posted(tmp_path: Path) -> None:
    probe = {
        "tool": "get_status",
        "arguments": {"target": "{build}", "delay": 5},
        "show": ["state"],
        "timeout": "0.5s",
    }
    rule = {
        "name": "deploys need approval",
        "tools": "deploy",
        "action": "require_approval",
        "approval": {"approvers": "oncall", "context": probe},
    }
    config = jobs_config(tmp_path, rule)
    config["upstreams"] = {"fixture": {"command": PYTHON, "args": [FIXTURE]}}
    with running_gateway(config, tmp_path) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            call = asyncio.create_task(client.call_tool("deploy", {"build": "b1"}))
            [request] = await admin.pending(timeout=10)
            assert loop.time() - started < 4  # the 5 s read was not waited for
            assert (
                request["context"]["summary"]
                == "b1, 5: state unknown (get_status did not answer within 0.5s)"
            )
            await admin.decide(request["id"], "approve", "alice")
            assert not (await asyncio.wait_for(call, 10)).is_error


# -- Slack ------------------------------------------------------------------------------------------


def slack_config(fake: FakeSlack, tmp_path: Path) -> dict[str, Any]:
    config = jobs_config(tmp_path)
    config["approvers"] = {"oncall": {"users": ["U_ALICE", "U_BOB"]}}
    config.pop("people")
    config["slack"] = {
        "bot_token": "xoxb-test",
        "channel": "C0123",
        "api_url": fake.api_url,
        "mode": "http",
        "signing_secret": SIGNING_SECRET,
    }
    return config


@pytest.fixture
async def fake() -> Any:
    async with FakeSlack() as f:
        yield f


@pytest.mark.usefixtures("no_proxy")
async def test_slack_shows_the_state_and_asks_again_when_it_changed(fake: FakeSlack, tmp_path: Path) -> None:
    async with (
        gateway(slack_config(fake, tmp_path), tmp_path) as gw,
        Client(gw.mcp_url, mode="legacy") as client,
    ):
        # A probe that fails still lets the request be posted, saying why the state is unknown.
        first = cancel(client, "job-nope")
        channel, ts, approval_id = await posted_request(fake)
        posted = all_text(fake.message(channel, ts))
        assert (
            "*Live state unknown* (`get-job`): job-nope: state unknown (get-job answered with an error"
            in posted
        )
        assert "Last decisions on `cancel-job` for `anonymous`*: none yet." in posted
        await click(gw, "U_BOB", blocks.DENY, approval_id, channel, ts)
        await asyncio.wait_for(first, 10)

        call = cancel(client, "job-7f3a")
        channel, ts, approval_id = await posted_request(fake, 2)
        posted = all_text(fake.message(channel, ts))
        assert "*Live state* (read with `get-job`" in posted
        assert "job-7f3a: status IN_PROGRESS, submitted_at 20" in posted
        assert "denied by <@U_BOB>" in posted  # the history: the cancel before this one

        assert not (await client.call_tool("finish-job", {"job_id": "job-7f3a"})).is_error
        await click(gw, "U_ALICE", blocks.APPROVE, approval_id, channel, ts)
        [question] = await ephemerals_for(fake, "U_ALICE")
        assert "now status COMPLETED (was IN_PROGRESS). Approve anyway?" in all_text(question)
        buttons = [e for b in question["blocks"] if b["type"] == "actions" for e in b["elements"]]
        assert [(b["action_id"], b["value"]) for b in buttons] == [(blocks.APPROVE_ANYWAY, approval_id)]
        # Everyone sees the request's new state; nothing was approved.
        await wait_message(fake, channel, ts, "Changed since the request was shown")
        assert not call.done()

        # "Approve anyway" on the ephemeral question (its own message ts, only the clicker sees it).
        payload = block_action_payload(
            user="U_ALICE",
            action_id=blocks.APPROVE_ANYWAY,
            value=approval_id,
            channel=channel,
            message_ts=question["ts"],
            block_id="changed_decision",
        )
        payload["container"]["is_ephemeral"] = True
        assert (await post_signed(gw.control_url + "/slack/events", payload, SIGNING_SECRET))[0] == 200
        result = await asyncio.wait_for(call, 10)
        assert result.is_error and result.content[0].text == "Error executing tool cancel-job"
        await wait_message(fake, channel, ts, "Approved* by <@U_ALICE>")


# -- the page -----------------------------------------------------------------------------------------


@pytest.mark.browser
async def test_the_page_shows_the_state_and_confirms_a_change(tmp_path: Path, page: Page) -> None:  # noqa: F811
    with running_gateway(jobs_config(tmp_path), tmp_path) as gw:
        dialogs: list[str] = []

        async def on_dialog(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            await dialog.accept()

        page.on("dialog", on_dialog)
        async with Client(gw.mcp_url, mode="legacy") as client:
            call = cancel(client, "job-7f3a")
            await open_page(page, gw)
            card = page.locator("#pending article.card").filter(has_text="job-7f3a")
            await expect(card.locator(".state")).to_contain_text("Live state: job-7f3a: status IN_PROGRESS")
            await expect(card.locator(".history")).to_contain_text("No earlier decisions")

            assert not (await client.call_tool("finish-job", {"job_id": "job-7f3a"})).is_error
            await card.get_by_role("button", name="Approve").click()
            result = await asyncio.wait_for(call, 15)
        # Two questions: approving a destructive call, then approving although the job finished.
        assert len(dialogs) == 2 and "cancel-job is destructive" in dialogs[0]
        assert "now status COMPLETED (was IN_PROGRESS). Approve anyway?" in dialogs[1]
        assert result.is_error and result.content[0].text == "Error executing tool cancel-job"
        decided = json.loads(
            json.dumps(await Admin(gw.control_url).audit_for(lambda r: r["tool"] == "cancel-job"))
        )
        assert decided[0]["approvers"] == "alice"
