"""The Slack approval bot end to end: a real gateway process, a real MCP client, the fake Slack.

The fake Slack (tests/fakeslack.py) runs in this test's event loop, so the gateway is started and
stopped from a thread (`start_gateway` and `Proc.stop` block while they wait). Clicks are signed
exactly as Slack signs them and POSTed to the gateway's control port (HTTP mode), or pushed as
Socket Mode envelopes over the fake's websocket.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from bot import blocks
from bot.slack import SlackChannel, SlackStartError, SlackUnavailable, create_channel
from proxy.approvals import ClickResult
from proxy.records import Approval
from tests.conftest import executions, stdio_echo
from tests.fakeslack import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    block_action_payload,
    post_signed,
    view_submission_payload,
)
from tests.procs import ROOT, SIGNOFF, Gateway, free_port, spawn, start_gateway, write_config

META = "dev.signoff/decision"
CHANNEL = "C0123"
ADMIN = "test-admin-token"
AGENT_TOKEN = "agent-token-0123456789"


pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as f:
        f.usergroups["S_ONCALL"] = ["U_CAROL"]  # approver group `oncall` names this user group
        yield f


# -- helpers --------------------------------------------------------------------------------------


def config(
    fake: FakeSlack,
    exec_log: Path,
    *,
    mode: str = "http",
    timeout: str = "20s",
    quorum: int = 1,
    identities: dict[str, Any] | None = None,
    **slack: Any,
) -> dict[str, Any]:
    """A gateway in front of the echo fixture whose `delete_thing` needs approval by `oncall`."""
    auth = {"signing_secret": SIGNING_SECRET} if mode == "http" else {"app_token": APP_TOKEN}
    rule = {
        "name": "deletes need approval",
        "tools": "delete_thing",
        "action": "require_approval",
        "reason": "Deleting is permanent",
        "approval": {"timeout": timeout, "approvers": "oncall", "quorum": quorum},
    }
    return {
        "upstreams": {"echo": stdio_echo(exec_log)},
        "policy": {"default": "allow", "rules": [rule]},
        "approvers": {"oncall": {"users": ["U_ALICE", "U_BOB"], "usergroup": "S_ONCALL"}},
        "identities": identities or {},
        "slack": {
            "bot_token": BOT_TOKEN,
            "channel": CHANNEL,
            "api_url": fake.api_url,
            "mode": mode,
            **auth,
            **slack,
        },
        "approvals": {"progress_interval": "1s"},
        "control": {"host": "127.0.0.1", "port": free_port(), "admin_token": ADMIN},
    }


@asynccontextmanager
async def gateway(cfg: dict[str, Any], tmp_path: Path, **kw: Any) -> AsyncIterator[Gateway]:
    # In a thread: these block while the gateway talks to the fake, which lives in this loop.
    gw = await asyncio.to_thread(start_gateway, cfg, tmp_path, **kw)
    try:
        yield gw
    finally:
        await asyncio.to_thread(gw.stop)


@asynccontextmanager
async def mcp_client(url: str, token: str | None = None) -> AsyncIterator[Client]:
    if token is None:
        async with Client(url, mode="legacy") as client:
            yield client
        return
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0, read=60.0)
    )
    try:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            yield client
    finally:
        await http.aclose()


def top_level(fake: FakeSlack) -> list[tuple[str, str]]:
    """(channel, ts) of the request messages posted so far (thread replies left out)."""
    return [key for key, m in fake.messages.items() if "thread_ts" not in m]


async def posted_request(fake: FakeSlack, n: int = 1) -> tuple[str, str, str]:
    """Wait for the n-th request message; return (channel, ts, approval id)."""
    channel, ts = await fake.wait_until(
        lambda: top_level(fake)[n - 1] if len(top_level(fake)) >= n else None, 10, f"request #{n}"
    )
    first = fake.message_history[(channel, ts)][0]  # as posted, before any update
    return channel, ts, button_value(first, blocks.APPROVE)


def button_value(message: dict[str, Any], action_id: str) -> str:
    for block in message.get("blocks", []):
        for element in block.get("elements", []):
            if element.get("action_id") == action_id:
                return element["value"]
    raise AssertionError(f"no {action_id} button in {json.dumps(message)[:500]}")


def action_ids(message: dict[str, Any]) -> set[str]:
    return {e.get("action_id") for b in message.get("blocks", []) for e in b.get("elements", [])} - {None}


def all_text(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False)


async def click(
    gw: Gateway, user: str, action_id: str, approval_id: str, channel: str, ts: str, **kw: Any
) -> tuple[int, str]:
    payload = block_action_payload(
        user=user, action_id=action_id, value=approval_id, channel=channel, message_ts=ts, block_id="decision"
    )
    return await post_signed(gw.control_url + "/slack/events", payload, SIGNING_SECRET, **kw)


async def wait_message(fake: FakeSlack, channel: str, ts: str, contains: str) -> dict[str, Any]:
    """Wait until the stored message (after chat.update) mentions `contains`."""
    return await fake.wait_until(
        lambda: m if contains in all_text(m := fake.message(channel, ts)) else None,
        10,
        lambda: f"{contains!r} in the message; it is {all_text(fake.message(channel, ts))[:800]}",
    )


async def thread_replies(fake: FakeSlack, ts: str, n: int = 1) -> list[dict[str, Any]]:
    def replies() -> list[dict[str, Any]]:
        return [m for m in fake.messages.values() if m.get("thread_ts") == ts]

    return await fake.wait_until(lambda: r if len(r := replies()) >= n else None, 10, "a thread reply")


async def ephemerals_for(fake: FakeSlack, user: str, n: int = 1) -> list[dict[str, Any]]:
    def mine() -> list[dict[str, Any]]:
        return [e for e in fake.ephemerals if e["user"] == user]

    return await fake.wait_until(lambda: e if len(e := mine()) >= n else None, 10, f"ephemeral to {user}")


def audit(gw: Gateway) -> list[dict[str, Any]]:
    req = urllib.request.Request(gw.control_url + "/api/audit", headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        data = json.loads(r.read())
    return data["records"] if isinstance(data, dict) else data


def decision(result: Any) -> dict[str, Any]:
    return (result.meta or {}).get(META, {})


# -- the flows ------------------------------------------------------------------------------------


async def test_http_mode_refuses_forged_and_stale_clicks_then_approves(
    fake: FakeSlack, tmp_path: Path, exec_log: Path
) -> None:
    async with gateway(config(fake, exec_log), tmp_path) as gw, mcp_client(gw.mcp_url) as client:
        call = asyncio.create_task(client.call_tool("delete_thing", {"name": "db-1"}))
        channel, ts, approval_id = await posted_request(fake)
        assert channel == CHANNEL
        posted = fake.message(channel, ts)
        assert {blocks.APPROVE, blocks.DENY, blocks.DENY_WITH_REASON} <= action_ids(posted)
        assert "db-1" in all_text(posted) and "deletes need approval" in all_text(posted)

        # A forged signature and a stale (10 minutes old) timestamp: 401, nothing decided.
        payload = block_action_payload(
            user="U_ALICE", action_id=blocks.APPROVE, value=approval_id, channel=channel, message_ts=ts
        )
        url = gw.control_url + "/slack/events"
        assert (await post_signed(url, payload, "not-the-signing-secret"))[0] == 401
        assert (await post_signed(url, payload, SIGNING_SECRET, timestamp=int(time.time()) - 600))[0] == 401
        await asyncio.sleep(0.3)
        assert not call.done() and fake.calls_to("chat.update") == [] and fake.ephemerals == []

        status, _ = await click(gw, "U_ALICE", blocks.APPROVE, approval_id, channel, ts)
        assert status == 200
        result = await asyncio.wait_for(call, 10)
        assert not result.is_error and result.content[0].text == "deleted db-1"
        assert len(executions(exec_log, "delete_thing")) == 1

        final = await wait_message(fake, channel, ts, "Approved* by <@U_ALICE>")
        assert action_ids(final) == set()  # buttons gone
        [reply] = await thread_replies(fake, ts)
        assert "ran successfully" in all_text(reply) and "deleted db-1" in all_text(reply)

        # A second click after the decision changes nothing and says who decided.
        await click(gw, "U_BOB", blocks.APPROVE, approval_id, channel, ts)
        [late] = await ephemerals_for(fake, "U_BOB")
        assert late["text"].startswith("Already approved by <@U_ALICE>")
        assert len(executions(exec_log, "delete_thing")) == 1


async def test_approve_over_socket_mode(fake: FakeSlack, tmp_path: Path, exec_log: Path) -> None:
    cfg = config(fake, exec_log, mode="socket")
    async with gateway(cfg, tmp_path) as gw, mcp_client(gw.mcp_url) as client:
        assert fake.calls_to("apps.connections.open")[0].token == APP_TOKEN
        await fake.wait_for_socket(1)
        call = asyncio.create_task(client.call_tool("delete_thing", {"name": "sock"}))
        channel, ts, approval_id = await posted_request(fake)
        payload = block_action_payload(
            user="U_BOB", action_id=blocks.APPROVE, value=approval_id, channel=channel, message_ts=ts
        )
        envelope = await fake.socket_send("interactive", payload)
        await fake.wait_for_ack(envelope)
        result = await asyncio.wait_for(call, 10)
        assert not result.is_error and result.content[0].text == "deleted sock"
        await wait_message(fake, channel, ts, "Approved* by <@U_BOB>")
        # HTTP mode is off: no Slack route on the control port.
        status, _ = await post_signed(gw.control_url + "/slack/events", payload, SIGNING_SECRET)
        assert status in (404, 405)


async def test_deny_with_reason_through_the_modal(fake: FakeSlack, tmp_path: Path, exec_log: Path) -> None:
    async with gateway(config(fake, exec_log), tmp_path) as gw, mcp_client(gw.mcp_url) as client:
        name = "prod-" + "x" * 600 + "-end"  # too long for the message: cut, with "View all arguments"
        call = asyncio.create_task(client.call_tool("delete_thing", {"name": name}))
        channel, ts, approval_id = await posted_request(fake)
        assert name not in all_text(fake.message(channel, ts))
        await click(gw, "U_CAROL", blocks.VIEW_ARGUMENTS, approval_id, channel, ts)
        [full] = await fake.wait_for("views.open")
        assert name in all_text(full.params["view"])

        await click(gw, "U_BOB", blocks.DENY_WITH_REASON, approval_id, channel, ts)
        opened = (await fake.wait_for("views.open", 2))[1]
        assert opened.params["trigger_id"] and opened.params["view"]["private_metadata"] == approval_id
        assert opened.params["view"]["callback_id"] == blocks.DENY_REASON_VIEW

        def submit(reason: str) -> dict[str, Any]:
            return view_submission_payload(
                user="U_BOB",
                callback_id=blocks.DENY_REASON_VIEW,
                private_metadata=approval_id,
                values={blocks.REASON_BLOCK: {blocks.REASON_ACTION: reason}},
            )

        url = gw.control_url + "/slack/events"
        status, body = await post_signed(url, submit(" x "), SIGNING_SECRET)
        assert status == 200 and json.loads(body)["response_action"] == "errors"
        assert blocks.REASON_BLOCK in json.loads(body)["errors"]
        assert not call.done()

        status, _ = await post_signed(url, submit("not during the freeze <!channel>"), SIGNING_SECRET)
        assert status == 200
        result = await asyncio.wait_for(call, 10)
        assert result.is_error and decision(result)["reason"] == "denied"
        assert "not during the freeze" in result.content[0].text
        assert executions(exec_log, "delete_thing") == []
        final = await wait_message(fake, channel, ts, "Denied* by <@U_BOB>")
        assert "not during the freeze &lt;!channel&gt;" in all_text(final)
        assert action_ids(final) == set()
        assert not [m for m in fake.messages.values() if m.get("thread_ts") == ts]
        # A second submission (say, from a modal left open) is told, in the request's channel.
        await post_signed(url, submit("me too"), SIGNING_SECRET)
        [late] = await ephemerals_for(fake, "U_BOB")
        assert late["channel"] == channel and late["text"] == "Already denied by <@U_BOB>."


async def test_expiry_rewrites_the_message(fake: FakeSlack, tmp_path: Path, exec_log: Path) -> None:
    async with (
        gateway(config(fake, exec_log, timeout="2s"), tmp_path) as gw,
        mcp_client(gw.mcp_url) as client,
    ):
        started = time.monotonic()
        result = await client.call_tool("delete_thing", {"name": "late"})
        assert 1.5 < time.monotonic() - started < 10
        assert result.is_error and decision(result)["reason"] == "expired"
        channel, ts, approval_id = await posted_request(fake)
        final = await wait_message(fake, channel, ts, "Expired* after 2s — denied")
        assert action_ids(final) == set()
        await click(gw, "U_ALICE", blocks.APPROVE, approval_id, channel, ts)
        [late] = await ephemerals_for(fake, "U_ALICE")
        assert "expired" in late["text"]
        assert executions(exec_log, "delete_thing") == []


async def test_withdrawn_when_the_client_gives_up(fake: FakeSlack, tmp_path: Path, exec_log: Path) -> None:
    async with gateway(config(fake, exec_log), tmp_path) as gw, mcp_client(gw.mcp_url) as client:
        with pytest.raises(MCPError):
            # Long enough for the request to be posted first, even on a loaded machine.
            await client.session.call_tool("delete_thing", {"name": "gone"}, read_timeout_seconds=4.0)
        channel, ts, approval_id = await posted_request(fake)
        final = await wait_message(fake, channel, ts, "Withdrawn*")
        assert action_ids(final) == set() and "Nothing will run" in all_text(final)
        # A late approval never runs anything.
        await click(gw, "U_ALICE", blocks.APPROVE, approval_id, channel, ts)
        [late] = await ephemerals_for(fake, "U_ALICE")
        assert late["text"].startswith("Withdrawn")
        await asyncio.sleep(0.3)
        assert executions(exec_log, "delete_thing") == []


async def test_quorum_two_of_three(fake: FakeSlack, tmp_path: Path, exec_log: Path) -> None:
    async with (
        gateway(config(fake, exec_log, quorum=2), tmp_path) as gw,
        mcp_client(gw.mcp_url) as client,
    ):
        call = asyncio.create_task(client.call_tool("delete_thing", {"name": "q"}))
        channel, ts, approval_id = await posted_request(fake)
        await click(gw, "U_ALICE", blocks.APPROVE, approval_id, channel, ts)
        progress = await wait_message(fake, channel, ts, "1 of 2 approvals: <@U_ALICE>")
        assert blocks.APPROVE in action_ids(progress)  # still open
        await click(gw, "U_ALICE", blocks.APPROVE, approval_id, channel, ts)
        [again] = await ephemerals_for(fake, "U_ALICE")
        assert "already approved" in again["text"]
        assert not call.done()

        # Carol is an approver through the Slack user group S_ONCALL (resolved once at start, cached).
        await click(gw, "U_CAROL", blocks.APPROVE, approval_id, channel, ts)
        result = await asyncio.wait_for(call, 10)
        assert not result.is_error and len(executions(exec_log, "delete_thing")) == 1
        assert len(fake.calls_to("usergroups.users.list")) == 1
        final = await wait_message(fake, channel, ts, "Approved* by <@U_ALICE>, <@U_CAROL>")
        assert action_ids(final) == set()
        await click(gw, "U_BOB", blocks.APPROVE, approval_id, channel, ts)
        [late] = await ephemerals_for(fake, "U_BOB")
        assert late["text"] == "Already approved by <@U_ALICE>,<@U_CAROL> and run."
        assert len(executions(exec_log, "delete_thing")) == 1


async def test_non_approver_and_self_approval_change_nothing(
    fake: FakeSlack, tmp_path: Path, exec_log: Path
) -> None:
    identities = {"agent": {"token_env": "AGENT_TOKEN", "slack_user": "U_ALICE"}}
    cfg = config(fake, exec_log, identities=identities)
    async with (
        gateway(cfg, tmp_path, env={"AGENT_TOKEN": AGENT_TOKEN}) as gw,
        mcp_client(gw.mcp_url, AGENT_TOKEN) as client,
    ):
        call = asyncio.create_task(client.call_tool("delete_thing", {"name": "mine"}))
        channel, ts, approval_id = await posted_request(fake)
        assert "<@U_ALICE>" in all_text(fake.message(channel, ts))  # whom the agent acts for

        await click(gw, "U_MALLORY", blocks.APPROVE, approval_id, channel, ts)
        [refused] = await ephemerals_for(fake, "U_MALLORY")
        assert "not an approver" in refused["text"]
        await click(gw, "U_ALICE", blocks.APPROVE, approval_id, channel, ts)
        [own] = await ephemerals_for(fake, "U_ALICE")
        assert "on your behalf" in own["text"]
        await click(gw, "U_MALLORY", blocks.DENY, approval_id, channel, ts)
        await ephemerals_for(fake, "U_MALLORY", 2)
        await asyncio.sleep(0.3)
        assert not call.done() and fake.calls_to("chat.update") == []
        assert executions(exec_log, "delete_thing") == []

        await click(gw, "U_BOB", blocks.APPROVE, approval_id, channel, ts)
        assert not (await asyncio.wait_for(call, 10)).is_error
        await asyncio.sleep(0.5)  # the audit log is written in batches
        refusals = [r for r in await asyncio.to_thread(audit, gw) if r["decision"] == "refused_click"]
        assert {(r["approvers"], r["reason"]) for r in refusals} == {
            ("U_MALLORY", "not an approver"),
            ("U_ALICE", "self-approval"),
        }


async def test_slack_clicks_are_people_and_modals_are_checked_like_clicks(
    fake: FakeSlack, tmp_path: Path, exec_log: Path
) -> None:
    cfg = config(fake, exec_log) | {
        "people": {
            "alice": {"slack_user": "U_ALICE"},
            "bob": {"slack_user": "U_BOB"},
            "dave": {"slack_user": "U_DAVE"},
        },
        "approvers": {"oncall": {"people": ["alice", "bob"]}},
    }
    async with gateway(cfg, tmp_path) as gw, mcp_client(gw.mcp_url) as client:
        first = asyncio.create_task(client.call_tool("delete_thing", {"name": "x" * 600}))
        x_channel, x_ts, x_id = await posted_request(fake)
        second = asyncio.create_task(client.call_tool("delete_thing", {"name": "y" * 600}))
        _, _, y_id = await posted_request(fake, 2)

        # Someone who is not an approver cannot open a request's arguments…
        await click(gw, "U_DAVE", blocks.VIEW_ARGUMENTS, x_id, x_channel, x_ts)
        [refused] = await ephemerals_for(fake, "U_DAVE")
        assert "Only this request's approvers" in refused["text"]
        # …nor can an approver deny request Y from request X's message.
        await click(gw, "U_BOB", blocks.DENY_WITH_REASON, y_id, x_channel, x_ts)
        [wrong_message] = await ephemerals_for(fake, "U_BOB")
        assert "not posted in this message" in wrong_message["text"]
        await click(gw, "U_DAVE", blocks.APPROVE, x_id, x_channel, x_ts)
        await ephemerals_for(fake, "U_DAVE", 2)
        assert fake.calls_to("views.open") == [] and not first.done() and not second.done()
        assert executions(exec_log, "delete_thing") == []

        # An approver sees every byte of X, and approves it as themself.
        await click(gw, "U_ALICE", blocks.VIEW_ARGUMENTS, x_id, x_channel, x_ts)
        [full] = await fake.wait_for("views.open")
        assert "x" * 600 in all_text(full.params["view"])
        await click(gw, "U_ALICE", blocks.APPROVE, x_id, x_channel, x_ts)
        assert not (await asyncio.wait_for(first, 10)).is_error
        await wait_message(fake, x_channel, x_ts, "Approved* by <@U_ALICE>")
        second.cancel()
        await asyncio.sleep(0.5)  # the audit log is written in batches
        records = await asyncio.to_thread(audit, gw)
        approved = [r for r in records if r["approvalId"] == x_id and r["decision"] == "require_approval"]
        assert approved and approved[0]["approvers"] == "alice"
        refusals = {(r["approvers"], r["reason"]) for r in records if r["decision"] == "refused_click"}
        assert ("dave", "not an approver (view this request's arguments)") in refusals
    assert [e["args"]["name"] for e in executions(exec_log, "delete_thing")] == ["x" * 600]


async def test_slack_errors_are_retried_then_fail_closed(
    fake: FakeSlack, tmp_path: Path, exec_log: Path
) -> None:
    cfg = config(fake, exec_log, post_timeout="2s")
    async with gateway(cfg, tmp_path) as gw, mcp_client(gw.mcp_url) as client:
        # 500, then OK: retried, and the call goes on to be approved.
        fake.fail_next("chat.postMessage", 500)
        call = asyncio.create_task(client.call_tool("delete_thing", {"name": "a"}))
        channel, ts, approval_id = await posted_request(fake, 1)
        assert len(fake.calls_to("chat.postMessage")) == 2
        await click(gw, "U_ALICE", blocks.APPROVE, approval_id, channel, ts)
        assert not (await asyncio.wait_for(call, 10)).is_error
        await thread_replies(fake, ts)

        # 429 with Retry-After: 1: the retry waits at least that long.
        fake.rate_limit_next("chat.postMessage", retry_after=1)
        before = len(fake.calls_to("chat.postMessage"))
        call = asyncio.create_task(client.call_tool("delete_thing", {"name": "b"}))
        channel, ts, approval_id = await posted_request(fake, 2)
        limited, retried = fake.calls_to("chat.postMessage")[before : before + 2]
        assert retried.at - limited.at >= 0.95
        await click(gw, "U_ALICE", blocks.DENY, approval_id, channel, ts)
        assert decision(await asyncio.wait_for(call, 10))["reason"] == "denied"

        # Slack down for longer than the budget: the call fails closed and nothing runs.
        fake.fail_next("chat.postMessage", 503, times=1000, body="<html>upstream error</html>")
        started = time.monotonic()
        result = await client.call_tool("delete_thing", {"name": "c"})
        assert 1.4 < time.monotonic() - started < 8
        assert result.is_error and decision(result)["reason"] == "approval_unavailable"
        assert [e["args"]["name"] for e in executions(exec_log, "delete_thing")] == ["a"]


async def test_bad_bot_token_stops_the_gateway(fake: FakeSlack, tmp_path: Path, exec_log: Path) -> None:
    cfg = config(fake, exec_log)
    cfg["slack"]["bot_token"] = "xoxb-revoked-token"
    fake.revoked_tokens.add("xoxb-revoked-token")
    cfg["listen"] = {"host": "127.0.0.1", "port": free_port()}
    cfg["database_url"] = f"sqlite+aiosqlite:///{tmp_path / 'bad.db'}"
    path = write_config(cfg, tmp_path / "bad.yaml")
    proc = spawn([*SIGNOFF, "serve", "--config", str(path)], tmp_path / "bad.log", cwd=ROOT)
    try:
        code = await asyncio.to_thread(proc.popen.wait, 30)
    finally:
        await asyncio.to_thread(proc.stop)
    output = proc.output()
    assert code == 1, output
    assert "cannot start" in output and "auth.test: token_revoked" in output
    assert BOT_TOKEN not in output and "xoxb-revoked-token" not in output


# -- the channel in-process (no gateway): retries and the post/update race ----------------------


def channel_in_process(api_url: str, **slack: Any) -> SlackChannel:
    from aiohttp import web

    from bot.slack_config import SlackConfig
    from proxy.approvers import ApproverDirectory
    from proxy.channels import ChannelHost
    from proxy.metrics import Metrics
    from proxy.people import People

    async def decide(*_: Any) -> ClickResult:
        raise AssertionError("no clicks here")

    host = ChannelHost(
        decide=decide,
        directory=ApproverDirectory({}),
        people=People([], {}),
        control_app=web.Application(),
        store=None,  # type: ignore[arg-type]
        metrics=Metrics(),
        audit_event=lambda *_: None,
    )
    cfg = SlackConfig(
        bot_token=BOT_TOKEN,
        channel=CHANNEL,
        mode="http",
        signing_secret=SIGNING_SECRET,
        api_url=api_url,
        **slack,
    )
    return create_channel(cfg, host)


def pending(**fields: Any) -> Approval:
    now = datetime.now(UTC)
    return Approval(
        id="apr_inprocess",
        identity="ci",
        tool="echo.delete_thing",
        upstream="echo",
        arguments={"name": "x"},
        args_hash="0",
        risk="destructive",
        created_at=now,
        expires_at=now + timedelta(minutes=1),
        **fields,
    )


async def test_connection_errors_are_retried_within_the_budget() -> None:
    channel = channel_in_process(f"http://127.0.0.1:{free_port()}/api/", post_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(SlackUnavailable, match=r"chat.postMessage failed after \d+ attempt\(s\) within 1.5s"):
        await channel.post(pending())
    assert 1.0 < time.monotonic() - started < 3
    with pytest.raises(SlackStartError, match="cannot reach Slack"):
        await channel.start()


async def test_an_update_racing_the_post_waits_for_its_message(fake: FakeSlack) -> None:
    channel = channel_in_process(fake.api_url)
    approval = pending()
    fake.delay("chat.postMessage", 0.5, times=1)
    posting = asyncio.create_task(channel.post(approval))
    await fake.wait_for("chat.postMessage")
    # Decided before `post` returned (so before the broker stored channel/ts): the update still lands.
    decided = replace(approval, status="denied", decided_by="U_BOB", decided_at=datetime.now(UTC))
    await channel.update(decided, [])
    channel_id, ts = await posting
    assert "Denied* by <@U_BOB>" in all_text(fake.message(channel_id, ts))
