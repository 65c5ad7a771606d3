"""The Slack channel under faults and abuse, against the fake Slack (tests/fakeslack.py), HTTP mode.

- Load while Slack answers 500, 429 (Retry-After) and too slowly: held calls are either posted
  (after retries) and decided by signed clicks, or fail closed with `approval_unavailable`; nothing
  runs without a decision, every call is audited once, every approval ends final.
- A replayed click (the same signed body twice) changes nothing the second time.
- A click whose payload comes from another channel (or team) than the request's message is refused.
- Hostile argument strings rendered into the request message stay inert text within Slack's limits.

The fake lives in this test's event loop, so the gateway is started and stopped from a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot import blocks
from tests.conftest import Admin, executions
from tests.fakeslack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    block_action_payload,
    form_body,
    post_signed,
    sign,
    view_submission_payload,
)
from tests.procs import start_gateway
from tests.reliability.harness import (
    DENY_REASON,
    GATEWAY_ENV,
    INJECTION,
    TOKENS,
    Approver,
    Load,
    Mix,
    Run,
    all_approvals,
    assert_clean,
    gateway_errors,
    load_config,
    session,
    summary,
    verify,
    wait_for_audit,
)

CHANNEL = "C0123"
SLACK_APPROVERS = {"oncall": {"users": ["U_ALICE", "U_BOB"]}}


pytestmark = pytest.mark.usefixtures("no_proxy")


def slack_config(fake: FakeSlack, exec_log: Path, database_url: str, **slack: Any) -> dict[str, Any]:
    config = load_config(exec_log, database_url, approvers=SLACK_APPROVERS)
    config["slack"] = {
        "bot_token": BOT_TOKEN,
        "channel": CHANNEL,
        "api_url": fake.api_url,
        "mode": "http",
        "signing_secret": SIGNING_SECRET,
        **slack,
    }
    return config


@contextlib.asynccontextmanager
async def gateway(config: dict[str, Any], tmp_path: Path, **kw: Any) -> Any:
    gw = await asyncio.to_thread(start_gateway, config, tmp_path, env=GATEWAY_ENV, **kw)
    try:
        yield gw
    finally:
        await asyncio.to_thread(gw.stop)


def requests_posted(fake: FakeSlack) -> list[tuple[str, str]]:
    """(channel, ts) of the request messages (thread replies left out), oldest first."""
    return [key for key, m in fake.messages.items() if "thread_ts" not in m]


def approval_id_of(message: dict[str, Any]) -> str | None:
    for block in message.get("blocks", []):
        for element in block.get("elements", []):
            if element.get("action_id") == blocks.APPROVE:
                return element["value"]
    return None


class SlackApprover(Approver):
    """The scripted approver, clicking in Slack: signed block_actions and modal submissions."""

    def __init__(self, gw: Any, fake: FakeSlack) -> None:
        super().__init__(gw.control_url, tolerate_outage=True)
        self.url = gw.control_url + "/slack/events"
        self.fake = fake

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for channel, ts in requests_posted(self.fake):
                first = self.fake.message_history[(channel, ts)][0]
                approval_id = approval_id_of(first)
                if approval_id is None or approval_id in self.seen:
                    continue
                found = re.search(r"\b(approve|deny|race|expire)-s\d+-\d+", json.dumps(first))
                fate = found.group(1) if found else "?"
                self.seen[approval_id] = fate
                if fate in ("approve", "deny", "race"):
                    task = asyncio.create_task(self._slack_decide(approval_id, fate, channel, ts))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _approve(self, approval_id: str, user: str, channel: str, ts: str) -> int:
        payload = block_action_payload(
            user=user, action_id=blocks.APPROVE, value=approval_id, channel=channel, message_ts=ts
        )
        status, _ = await post_signed(self.url, payload, SIGNING_SECRET)
        self.clicks[f"approve {status}"] += 1
        return status

    async def _deny(self, approval_id: str, user: str) -> int:
        payload = view_submission_payload(
            user=user,
            callback_id=blocks.DENY_REASON_VIEW,
            private_metadata=approval_id,
            values={blocks.REASON_BLOCK: {blocks.REASON_ACTION: DENY_REASON}},
        )
        status, _ = await post_signed(self.url, payload, SIGNING_SECRET)
        self.clicks[f"deny {status}"] += 1
        return status

    async def _decided(self, approval_id: str, timeout: float = 10.0) -> None:
        import httpx2

        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {self.token}"}, timeout=10) as http:
            while asyncio.get_running_loop().time() < deadline:
                r = await http.get(f"{self.control_url}/api/approvals/{approval_id}")
                if r.json().get("status") != "pending":
                    return
                await asyncio.sleep(0.05)

    async def _slack_decide(self, approval_id: str, fate: str, channel: str, ts: str) -> None:
        if fate == "approve":
            # Bolt acks a click before it decides: wait for the decision before the late click.
            answers = [await self._approve(approval_id, "U_ALICE", channel, ts)]
            await self._decided(approval_id)
            answers.append(await self._deny(approval_id, "U_BOB"))
        elif fate == "deny":
            answers = [await self._deny(approval_id, "U_BOB")]
        else:
            answers = list(
                await asyncio.gather(
                    self._approve(approval_id, "U_ALICE", channel, ts), self._deny(approval_id, "U_BOB")
                )
            )
        if any(status != 200 for status in answers):
            self.errors.append(f"{fate} {approval_id}: Slack events answered {answers}")


@pytest.mark.timeout(180)
async def test_load_while_slack_fails_rate_limits_and_stalls(tmp_path: Path, exec_log: Path, figures) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'slack.db'}"
    async with FakeSlack() as fake:
        config = slack_config(fake, exec_log, db, post_timeout="2s")
        async with gateway(config, tmp_path) as gw:
            mix = Mix(echo=30, limited=5, deny=5, held=40, unknown=5)
            load = Load(gw.mcp_url, 10, 12.0, mix=mix, tolerated=frozenset({"approval_unavailable"}))
            run = Run(load, SlackApprover(gw, fake))
            injected: Counter[str] = Counter()
            posts_before: list[int] = []

            async def errors_500(run: Run) -> None:
                fake.fail_next("chat.postMessage", 500, times=4)
                injected["500"] += 4
                run.note("chat.postMessage: 4 x HTTP 500")

            async def rate_limited(run: Run) -> None:
                fake.rate_limit_next("chat.postMessage", retry_after=1, times=3)
                injected["429"] += 3
                run.note("chat.postMessage: 3 x 429 Retry-After 1")

            async def stalls(run: Run) -> None:
                fake.delay("chat.postMessage", 3.0, times=3)  # beyond post_timeout (2 s)
                injected["stall"] += 3
                run.note("chat.postMessage: 3 x 3 s stall")

            async def outage(run: Run) -> None:
                posts_before.append(len(fake.calls_to("chat.postMessage")))
                fake.fail_next("chat.postMessage", 503, times=1000, body="<html>upstream error</html>")
                run.note("chat.postMessage: 503 outage")

            async def recovered(run: Run) -> None:
                injected["503"] = len(fake.calls_to("chat.postMessage")) - posts_before[0]
                fake.clear_faults()
                run.note("Slack recovered")

            await run.drive(
                [(1.5, errors_500), (3.5, rate_limited), (5.5, stalls), (7.5, outage), (9.5, recovered)]
            )
            audit = await wait_for_audit(db, run.load.count(lambda r: r.answered is not None))
            approvals = await all_approvals(db)
        errors, _ = gateway_errors(gw.output())
    report = verify(run.load.records, audit, exec_log, approvals)
    unavailable = sum(1 for r in run.load.records if r.outcome == "approval_unavailable")
    figures(
        summary(
            "slack faults",
            report,
            run.elapsed,
            faults_injected=dict(injected),
            fail_closed_approval_unavailable=unavailable,
            requests_posted=len(requests_posted(fake)),
            slack_clicks=dict(run.approver.clicks),
            events=run.events,
        )
    )
    assert_clean(report)
    assert run.load.session_errors == [] and run.approver.errors == []
    assert unavailable >= 1, "the outage made some held calls fail closed"
    slack_errors = [e for e in errors if "signoff.slack" in e or "slack" in e.lower()]
    assert [e for e in errors if e not in slack_errors] == [], errors


async def test_a_replayed_click_changes_nothing(tmp_path: Path, exec_log: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'replay.db'}"
    async with FakeSlack() as fake, gateway(slack_config(fake, exec_log, db), tmp_path) as gw:
        async with session(gw.mcp_url, TOKENS["agent-a"]) as client:
            call = asyncio.create_task(client.call_tool("delete_thing", {"name": "approve-replay"}))
            channel, ts, approval_id = await _posted(fake)
            payload = block_action_payload(
                user="U_ALICE", action_id=blocks.APPROVE, value=approval_id, channel=channel, message_ts=ts
            )
            body = form_body(payload)
            headers = sign(body, SIGNING_SECRET)  # captured once, sent twice
            async with aiohttp.ClientSession() as http:
                for _ in range(2):
                    async with http.post(
                        gw.control_url + "/slack/events", data=body.encode(), headers=headers
                    ) as r:
                        assert r.status == 200
            result = await asyncio.wait_for(call, 10)
            assert not result.is_error
            late = await fake.wait_until(
                lambda: [e for e in fake.ephemerals if e["user"] == "U_ALICE"] or None, 10, "an ephemeral"
            )
        assert "already approved" in late[0]["text"].lower()
    assert len(executions(exec_log, "delete_thing")) == 1


@pytest.mark.parametrize("where", ["another channel", "another message", "another team"])
async def test_a_click_from_another_channel_or_team_is_refused(
    tmp_path: Path, exec_log: Path, where: str
) -> None:
    """A signed click whose payload comes from another channel or message (a shared or replayed copy of
    the request) or another workspace of the app decides nothing, even when it lands the moment the
    request is posted."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'channel.db'}"
    async with (
        FakeSlack() as fake,
        gateway(slack_config(fake, exec_log, db), tmp_path) as gw,
        session(gw.mcp_url, TOKENS["agent-a"]) as client,
    ):
        call = asyncio.create_task(client.call_tool("delete_thing", {"name": "approve-elsewhere"}))
        try:
            channel, ts, approval_id = await _posted(fake)
            if where == "another channel":
                payload = block_action_payload(
                    user="U_ALICE",
                    action_id=blocks.APPROVE,
                    value=approval_id,
                    channel="C0OTHER",
                    message_ts="1700009999.000100",
                )
            elif where == "another message":
                payload = block_action_payload(
                    user="U_ALICE",
                    action_id=blocks.APPROVE,
                    value=approval_id,
                    channel=channel,
                    message_ts="1700009999.000100",
                )
            else:
                payload = block_action_payload(
                    user="U_ALICE",
                    action_id=blocks.APPROVE,
                    value=approval_id,
                    channel=channel,
                    message_ts=ts,
                    team="T0OTHER",
                )
            status, _ = await post_signed(gw.control_url + "/slack/events", payload, SIGNING_SECRET)
            await asyncio.sleep(1.0)
            state = (await Admin(gw.control_url).get(approval_id))["status"]
        finally:
            call.cancel()
    assert status in (200, 401, 403)
    assert state == "pending"
    assert executions(exec_log, "delete_thing") == []


async def test_hostile_arguments_stay_inert_text_in_the_slack_message(tmp_path: Path, exec_log: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'render.db'}"
    arguments = {"name": "<!channel> <http://evil.example|click> <@U0ADMIN>", "force": False}
    arguments.update({f"k{i}": text for i, text in enumerate(INJECTION)})
    arguments.update({"<!here>": "key", "*bold* _it_ ~s~ `code` ```block```": "<https://x|y>"})
    async with (
        FakeSlack() as fake,
        gateway(slack_config(fake, exec_log, db), tmp_path) as gw,
        session(gw.mcp_url, TOKENS["agent-a"]) as client,
    ):
        call = asyncio.create_task(client.call_tool("delete_thing", arguments))
        try:
            channel, ts, approval_id = await _posted(fake)
            message = fake.message_history[(channel, ts)][0]
            assert (await Admin(gw.control_url).decide(approval_id, "deny", "U_BOB", "<!channel> no"))[
                0
            ] == 200
            assert (await asyncio.wait_for(call, 10)).is_error
            final = await fake.wait_until(
                lambda: m if "Denied" in json.dumps(m := fake.message(channel, ts)) else None,
                10,
                "the denial",
            )
        finally:
            call.cancel()
    for version in (message, final):
        texts = list(_texts(version))
        live = [
            t for t in texts if re.search(r"<!(channel|here|everyone)>|<https?://[^>]*\|[^>]*>|<@U0ADMIN>", t)
        ]
        assert live == [], live
        assert len(version.get("blocks", [])) <= blocks.MESSAGE_BLOCKS
        for block in version.get("blocks", []):
            if block["type"] == "section" and "text" in block:
                assert len(block["text"]["text"]) <= blocks.SECTION_TEXT
            for element in block.get("elements", []):
                assert len(element.get("value", "")) <= blocks.BUTTON_VALUE
                if "text" in element and isinstance(element["text"], str):
                    assert len(element["text"]) <= blocks.CONTEXT_TEXT
        assert len(version.get("text", "")) <= blocks.MESSAGE_TEXT
    assert executions(exec_log, "delete_thing") == []


def _texts(value: Any) -> Any:
    """Every string in a message that Slack renders as mrkdwn or plain text."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("text",) and isinstance(item, str):
                yield item
            else:
                yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


async def _posted(fake: FakeSlack) -> tuple[str, str, str]:
    channel, ts = await fake.wait_until(lambda: (requests_posted(fake) or [None])[0], 10, "a request message")
    approval_id = approval_id_of(fake.message_history[(channel, ts)][0])
    assert approval_id is not None
    return channel, ts, approval_id
