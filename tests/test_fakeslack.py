"""Self-tests for tests/fakeslack.py: the fake must behave like Slack for the real clients we use.

Every client here is the real one: ``slack_sdk.web.async_client.AsyncWebClient``, a
``slack_bolt.async_app.AsyncApp`` served over real HTTP on 127.0.0.1, and bolt's aiohttp Socket
Mode handler.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import builtin_async_handlers
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakeslack import (
    APP_TOKEN,
    BOT_ID,
    BOT_TOKEN,
    BOT_USER_ID,
    SIGNING_SECRET,
    TEAM_ID,
    FakeSlack,
    block_action_payload,
    form_body,
    post_signed,
    sign,
    view_submission_payload,
)

BLOCKS = [
    {"type": "section", "block_id": "summary", "text": {"type": "mrkdwn", "text": "*cancel_job*"}},
    {
        "type": "actions",
        "block_id": "decision",
        "elements": [
            {"type": "button", "action_id": "approve", "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": "deny", "text": {"type": "plain_text", "text": "Deny"}},
        ],
    },
]


pytestmark = pytest.mark.usefixtures("no_proxy")


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as f:
        yield f


@pytest.fixture
def client(fake: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url)


# ------------------------------------------------------------------------------------------------
# Web API through the real AsyncWebClient
# ------------------------------------------------------------------------------------------------


async def test_api_url_binds_loopback_with_trailing_slash(fake: FakeSlack) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api/", fake.api_url)
    assert fake.port not in (None, 0)


async def test_auth_test_valid_and_invalid_tokens(fake: FakeSlack, client: AsyncWebClient) -> None:
    resp = await client.auth_test()
    assert resp["ok"] is True
    assert (resp["team_id"], resp["user_id"], resp["bot_id"]) == (TEAM_ID, BOT_USER_ID, BOT_ID)
    assert "chat:write" in resp.headers["x-oauth-scopes"]
    assert fake.calls_to("auth.test")[0].token == BOT_TOKEN

    for bad, error in [
        ("xoxp-user", "invalid_auth"),
        ("nonsense", "invalid_auth"),
        (APP_TOKEN, "not_allowed_token_type"),
    ]:
        with pytest.raises(SlackApiError) as exc:
            await AsyncWebClient(token=bad, base_url=fake.api_url).auth_test()
        assert exc.value.response["error"] == error
    with pytest.raises(SlackApiError) as exc:
        await AsyncWebClient(base_url=fake.api_url).auth_test()
    assert exc.value.response["error"] == "not_authed"


async def test_post_message_with_blocks_then_update(fake: FakeSlack, client: AsyncWebClient) -> None:
    first = await client.chat_postMessage(channel="C0APPROVALS", text="approve?", blocks=BLOCKS)
    second = await client.chat_postMessage(channel="C0APPROVALS", text="reply", thread_ts=first["ts"])
    assert first["ts"] == "1700000000.000100"
    assert float(second["ts"]) > float(first["ts"])
    assert first["channel"] == "C0APPROVALS"
    assert first["message"]["blocks"] == BLOCKS
    assert fake.message("C0APPROVALS", second["ts"])["thread_ts"] == first["ts"]

    [call, _] = fake.calls_to("chat.postMessage")
    assert call.params["blocks"] == BLOCKS  # slack_sdk sends JSON; blocks arrive as a list
    assert call.token == BOT_TOKEN

    updated = await client.chat_update(channel="C0APPROVALS", ts=first["ts"], text="approved", blocks=[])
    assert updated["message"]["text"] == "approved"
    stored = fake.message("C0APPROVALS", first["ts"])
    assert (stored["text"], stored["blocks"]) == ("approved", [])
    assert [v["text"] for v in fake.message_history[("C0APPROVALS", first["ts"])]] == ["approve?", "approved"]

    with pytest.raises(SlackApiError) as exc:
        await client.chat_update(channel="C0APPROVALS", ts="1.000000", text="x")
    assert exc.value.response.status_code == 200
    assert exc.value.response["error"] == "message_not_found"
    with pytest.raises(SlackApiError) as exc:
        await client.chat_postMessage(channel="", text="x")
    assert exc.value.response["error"] == "channel_not_found"


async def test_form_bodies_and_token_field_are_parsed(fake: FakeSlack) -> None:
    form = {"token": BOT_TOKEN, "channel": "C1", "text": "t", "blocks": json.dumps(BLOCKS)}
    async with (
        aiohttp.ClientSession() as http,
        http.post(fake.api_url + "chat.postMessage", data=form) as resp,
    ):
        assert (await resp.json())["ok"] is True
    [call] = fake.calls_to("chat.postMessage")
    assert call.token == BOT_TOKEN
    assert "token" not in call.params
    assert call.params["blocks"] == BLOCKS


async def test_ephemeral_and_views(fake: FakeSlack, client: AsyncWebClient) -> None:
    eph = await client.chat_postEphemeral(channel="C1", user="U_BOB", text="Not an approver.")
    assert re.fullmatch(r"\d+\.\d{6}", eph["message_ts"])
    assert fake.ephemerals[0]["user"] == "U_BOB"

    view = {
        "type": "modal",
        "callback_id": "deny_reason",
        "private_metadata": "req-1",
        "title": {"type": "plain_text", "text": "Deny"},
        "blocks": [],
    }
    opened = await client.views_open(trigger_id="111.222.abc", view=view)
    view_id = opened["view"]["id"]
    assert fake.views[view_id]["callback_id"] == "deny_reason"
    assert fake.calls_to("views.open")[0].params["trigger_id"] == "111.222.abc"

    updated = await client.views_update(view_id=view_id, view={**view, "private_metadata": "req-2"})
    assert updated["view"]["private_metadata"] == "req-2"
    with pytest.raises(SlackApiError) as exc:
        await client.views_update(view_id=view_id, hash="stale", view=view)
    assert exc.value.response["error"] == "hash_conflict"
    with pytest.raises(SlackApiError) as exc:
        await client.views_open(trigger_id="", view=view)
    assert exc.value.response["error"] == "invalid_arguments"


async def test_directory_lookups(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.users["U_ALICE"] = {"real_name": "Alice", "is_admin": True}
    fake.usergroups["S_APPROVERS"] = ["U_ALICE", "U_CAROL"]

    alice = (await client.users_info(user="U_ALICE"))["user"]
    assert (alice["id"], alice["real_name"], alice["is_admin"]) == ("U_ALICE", "Alice", True)
    assert (await client.users_info(user="U_ZED"))["user"]["id"] == "U_ZED"
    assert fake.calls_to("users.info")[0].params == {"user": "U_ALICE"}  # a GET with a query string

    assert (await client.usergroups_users_list(usergroup="S_APPROVERS"))["users"] == ["U_ALICE", "U_CAROL"]
    with pytest.raises(SlackApiError) as exc:
        await client.usergroups_users_list(usergroup="S_NOPE")
    assert exc.value.response["error"] == "no_such_subteam"

    assert (await client.conversations_info(channel="C1"))["channel"]["id"] == "C1"
    with pytest.raises(SlackApiError) as exc:
        await client.api_call("chat.fly")
    assert exc.value.response["error"] == "unknown_method"


# ------------------------------------------------------------------------------------------------
# Fault injection
# ------------------------------------------------------------------------------------------------


async def test_rate_limit_surfaces_without_retry_handler(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.rate_limit_next("chat.postMessage", retry_after=7)
    with pytest.raises(SlackApiError) as exc:
        await client.chat_postMessage(channel="C1", text="x")
    assert exc.value.response.status_code == 429
    assert exc.value.response["error"] == "ratelimited"
    assert exc.value.response.headers["Retry-After"] == "7"
    assert fake.messages == {}
    await client.chat_postMessage(channel="C1", text="x")  # the fault was one-shot
    assert len(fake.messages) == 1


async def test_rate_limit_is_retried_by_slack_sdk_handler(
    fake: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The handler sleeps int(Retry-After) + random.random() seconds; pin the jitter to keep this fast.
    monkeypatch.setattr(builtin_async_handlers.random, "random", lambda: 0.0)
    client = AsyncWebClient(
        token=BOT_TOKEN,
        base_url=fake.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    fake.rate_limit_next("chat.postMessage", retry_after=0)
    resp = await client.chat_postMessage(channel="C1", text="x")
    assert resp["ok"] is True
    assert len(fake.calls_to("chat.postMessage")) == 2
    assert len(fake.messages) == 1

    fake.rate_limit_next("chat.postMessage", retry_after=0, times=2)  # more than max_retry_count
    with pytest.raises(SlackApiError) as exc:
        await client.chat_postMessage(channel="C1", text="x")
    assert exc.value.response.status_code == 429


async def test_fail_next_500_and_error_next(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.fail_next("chat.update", status=500)
    with pytest.raises(SlackApiError) as exc:
        await client.chat_update(channel="C1", ts="1.0", text="x")
    assert exc.value.response.status_code == 500

    fake.fail_next("auth.test", status=503, body="<html>upstream</html>")
    with pytest.raises(SlackApiError) as exc:
        await client.auth_test()
    assert exc.value.response.status_code == 503

    fake.error_next("chat.postMessage", "channel_not_found")
    with pytest.raises(SlackApiError) as exc:
        await client.chat_postMessage(channel="C1", text="x")
    assert (exc.value.response.status_code, exc.value.response["error"]) == (200, "channel_not_found")
    assert (await client.chat_postMessage(channel="C1", text="x"))["ok"] is True


async def test_delay_makes_the_client_time_out(fake: FakeSlack) -> None:
    fake.delay("chat.postMessage", 1.5, times=1)
    slow_client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url, timeout=0.1)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await slow_client.chat_postMessage(channel="C1", text="x")
    assert time.monotonic() - started < 1.5  # it gave up before the fake answered
    await fake.wait_for("chat.postMessage")
    # Like Slack, the server still finishes the work after the client gave up.
    await fake.wait_until(lambda: fake.messages or None, timeout=5, what="the delayed post")


# ------------------------------------------------------------------------------------------------
# Signing and payload builders
# ------------------------------------------------------------------------------------------------


def test_sign_matches_slack_sdk_verifier() -> None:
    payload = block_action_payload(user="U1", action_id="approve", value="r1", channel="C1", message_ts="1.2")
    body = form_body(payload)
    headers = sign(body, SIGNING_SECRET)
    verifier = SignatureVerifier(SIGNING_SECRET)
    assert verifier.is_valid_request(body, headers)
    assert not verifier.is_valid_request(body, sign(body, "wrong-secret"))
    assert not verifier.is_valid_request(body, sign(body, SIGNING_SECRET, int(time.time()) - 301))
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_view_submission_values_shorthand() -> None:
    payload = view_submission_payload(
        user="U1", callback_id="deny_reason", private_metadata="r1", values={"reason": {"value": "risky"}}
    )
    assert payload["view"]["state"]["values"] == {
        "reason": {"value": {"type": "plain_text_input", "value": "risky"}}
    }
    assert (payload["type"], payload["view"]["type"], payload["user"]["id"]) == (
        "view_submission",
        "modal",
        "U1",
    )


async def test_response_url_records_and_replaces_original(fake: FakeSlack, client: AsyncWebClient) -> None:
    posted = await client.chat_postMessage(channel="C1", text="approve?", blocks=BLOCKS)
    url = fake.response_url("r1", channel="C1", ts=posted["ts"])
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={"text": "no", "response_type": "ephemeral"}) as resp:
            assert resp.status == 200
        async with http.post(url, json={"text": "approved", "replace_original": True}) as resp:
            assert resp.status == 200
    assert [r.body["text"] for r in await fake.wait_for_response("r1", n=2)] == ["no", "approved"]
    assert fake.message("C1", posted["ts"])["text"] == "approved"


# ------------------------------------------------------------------------------------------------
# slack_bolt over real HTTP (AppRunner/TCPSite, not app.start())
# ------------------------------------------------------------------------------------------------


@dataclass
class Bolt:
    app: AsyncApp
    url: str
    approved: list[str] = field(default_factory=list)
    submitted: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def bolt(fake: FakeSlack) -> AsyncIterator[Bolt]:
    app = AsyncApp(
        client=AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url), signing_secret=SIGNING_SECRET
    )
    runner = web.AppRunner(app.web_app(path="/slack/events"), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state = Bolt(app=app, url=f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events")

    @app.action("approve")
    async def on_approve(ack, body, action, client, respond) -> None:
        await ack()
        state.approved.append(action["value"])
        await client.chat_update(
            channel=body["channel"]["id"], ts=body["message"]["ts"], text="approved", blocks=[]
        )
        await respond(text="Thanks", response_type="ephemeral", replace_original=False)

    @app.view("deny_reason")
    async def on_deny(ack, view) -> None:
        reason = view["state"]["values"]["reason"]["value"]["value"] or ""
        if len(reason) < 3:
            await ack(response_action="errors", errors={"reason": "Please give a reason."})
            return
        await ack()
        state.submitted.append(view)

    yield state
    await runner.cleanup()


async def test_bolt_accepts_signed_block_action(fake: FakeSlack, client: AsyncWebClient, bolt: Bolt) -> None:
    posted = await client.chat_postMessage(channel="C1", text="approve?", blocks=BLOCKS)
    payload = block_action_payload(
        user="U_ALICE",
        action_id="approve",
        value="req-1",
        channel="C1",
        message_ts=posted["ts"],
        response_url=fake.response_url("req-1"),
        block_id="decision",
    )
    status, _ = await post_signed(bolt.url, payload, SIGNING_SECRET)
    assert status == 200
    [update] = await fake.wait_for("chat.update")  # the listener runs after ack
    assert update.params["ts"] == posted["ts"]
    assert bolt.approved == ["req-1"]
    assert fake.message("C1", posted["ts"])["blocks"] == []
    [response] = await fake.wait_for_response("req-1")
    assert response.body["text"] == "Thanks"
    assert len(fake.calls_to("auth.test")) == 1  # bolt's lazy single-team authorization hit the fake


async def test_bolt_rejects_forged_and_stale_signatures(fake: FakeSlack, bolt: Bolt) -> None:
    payload = block_action_payload(user="U1", action_id="approve", value="r", channel="C1", message_ts="1.0")
    assert (await post_signed(bolt.url, payload, "not-the-secret"))[0] == 401
    assert (await post_signed(bolt.url, payload, SIGNING_SECRET, int(time.time()) - 301))[0] == 401
    body = form_body(payload)
    tampered = body.replace("approve", "approvX")
    async with (
        aiohttp.ClientSession() as http,
        http.post(bolt.url, data=tampered, headers=sign(body, SIGNING_SECRET)) as resp,
    ):
        assert resp.status == 401
    assert bolt.approved == []
    assert fake.calls_to("chat.update") == []


async def test_bolt_view_submission_errors_then_success(bolt: Bolt) -> None:
    def submit(reason: str) -> dict[str, Any]:
        return view_submission_payload(
            user="U1", callback_id="deny_reason", private_metadata="r1", values={"reason": {"value": reason}}
        )

    status, text = await post_signed(bolt.url, submit("no"), SIGNING_SECRET)
    assert (status, json.loads(text)["response_action"]) == (200, "errors")
    status, text = await post_signed(bolt.url, submit("too risky"), SIGNING_SECRET)
    assert (status, text) == (200, "")
    assert bolt.submitted[0]["private_metadata"] == "r1"


# ------------------------------------------------------------------------------------------------
# Socket Mode with bolt's aiohttp handler
# ------------------------------------------------------------------------------------------------


def _socket_app(fake: FakeSlack, seen: list[str]) -> AsyncApp:
    app = AsyncApp(client=AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url))

    @app.action("approve")
    async def on_approve(ack, action) -> None:
        await ack()
        seen.append(action["value"])

    return app


async def test_socket_mode_envelope_is_handled_and_acked(fake: FakeSlack) -> None:
    seen: list[str] = []
    handler = AsyncSocketModeHandler(_socket_app(fake, seen), app_token=APP_TOKEN)
    try:
        await handler.connect_async()
        assert await fake.wait_for_socket() == 1
        [opened] = fake.calls_to("apps.connections.open")
        assert opened.token == APP_TOKEN

        payload = block_action_payload(
            user="U1", action_id="approve", value="req-9", channel="C1", message_ts="1.0"
        )
        eid = await fake.socket_send("interactive", payload)
        assert await fake.wait_for_ack(eid) == {"envelope_id": eid}
        assert seen == ["req-9"]
        assert fake.envelopes[eid]["accepts_response_payload"] is True
    finally:
        await handler.close_async()


async def test_socket_mode_reconnects_after_server_disconnect(fake: FakeSlack) -> None:
    seen: list[str] = []
    handler = AsyncSocketModeHandler(_socket_app(fake, seen), app_token=APP_TOKEN)
    try:
        await handler.connect_async()
        await fake.wait_for_socket()
        assert await fake.disconnect_sockets() == 1
        assert fake.socket_connections == 0
        await fake.wait_for_socket()  # bolt's client calls apps.connections.open again and reconnects
        assert len(fake.calls_to("apps.connections.open")) == 2
        assert fake.socket_connect_count == 2

        payload = block_action_payload(
            user="U1", action_id="approve", value="after", channel="C1", message_ts="1.0"
        )
        await fake.wait_for_ack(await fake.socket_send("interactive", payload))
        assert seen == ["after"]
    finally:
        await handler.close_async()


async def test_socket_mode_reconnects_on_slack_disconnect_message(fake: FakeSlack) -> None:
    handler = AsyncSocketModeHandler(_socket_app(fake, []), app_token=APP_TOKEN)
    try:
        await handler.connect_async()
        await fake.wait_for_socket()
        await fake.send_disconnect("refresh_requested")  # the socket stays open; the client moves
        await fake.wait_for("apps.connections.open", n=2)
        await fake.wait_until(lambda: fake.socket_connect_count == 2 or None, what="the new connection")
        # The client closes the old connection itself once the new one is up.
        await fake.wait_until(lambda: fake.socket_connections == 1 or None, what="one live connection")
    finally:
        await handler.close_async()


async def test_socket_mode_delivers_each_envelope_to_one_connection(fake: FakeSlack) -> None:
    seen_a: list[str] = []
    seen_b: list[str] = []
    handler_a = AsyncSocketModeHandler(_socket_app(fake, seen_a), app_token=APP_TOKEN)
    handler_b = AsyncSocketModeHandler(_socket_app(fake, seen_b), app_token=APP_TOKEN)
    try:
        await handler_a.connect_async()
        await fake.wait_for_socket(1)
        await handler_b.connect_async()
        await fake.wait_for_socket(2)

        def click(value: str) -> dict[str, Any]:
            return block_action_payload(
                user="U1", action_id="approve", value=value, channel="C1", message_ts="1.0"
            )

        eids = [await fake.socket_send("interactive", click(v)) for v in ("one", "two")]  # round-robin
        eids.append(await fake.socket_send("interactive", click("three"), connection=1))
        for eid in eids:
            await fake.wait_for_ack(eid)
        assert (seen_a, seen_b) == (["one"], ["two", "three"])
        assert [c.acks for c in fake.sockets] == [eids[:1], eids[1:]]
    finally:
        await handler_a.close_async()
        await handler_b.close_async()
