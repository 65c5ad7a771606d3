"""Approval channels are plugins: several at once (the page and a webhook here), each with its own section."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from mcp import Client

from proxy.config import ConfigError, parse_config
from tests.conftest import Admin, executions, gateway_config
from tests.procs import free_port, running_gateway
from tests.test_approvals import APPROVERS, HOLD, policy

SECRET = "webhook-signing-secret-0123456789"


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records the events it is sent (a team's own webhook)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.signatures: list[str] = []
        self.status = 200
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.signatures.append(request.headers.get("X-Signoff-Signature", ""))
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert self.signatures[-1] == expected, "every body is signed with the shared secret"
        self.events.append(json.loads(body))
        return web.Response(status=self.status)

    async def wait_for(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        for _ in range(int(timeout / 0.05)):
            found = [e for e in self.events if e["event"] == event]
            if found:
                return found[-1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {event} event; got {[e['event'] for e in self.events]}")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", r.port).start()
    try:
        yield r
    finally:
        await runner.cleanup()


async def test_a_webhook_channel_hears_of_every_request_next_to_the_page(
    tmp_path: Path, exec_log: Path, receiver: Receiver
) -> None:
    config = gateway_config(exec_log, policy(HOLD), approvers=APPROVERS)
    config["channels"] = {
        "webhook": {"url": f"http://127.0.0.1:{receiver.port}/hook", "secret_env": "HOOK_SECRET"}
    }
    with running_gateway(config, tmp_path, env={"HOOK_SECRET": SECRET}) as gw:
        admin = Admin(gw.control_url)
        async with Client(gw.mcp_url, mode="legacy") as client:
            # Not a hex-looking value: the request's id (hex) once happened to contain "db1".
            call = asyncio.create_task(client.call_tool("delete_thing", {"name": "orders-prod"}))
            requested = await receiver.wait_for("approval.requested")
            [pending] = await admin.pending()  # the page has it too
            assert requested["approval"]["id"] == pending["id"]
            assert requested["approval"]["argumentsHash"] == pending["argumentsHash"]
            assert "orders-prod" not in json.dumps(requested)  # routing facts, never the arguments
            assert (await admin.decide(pending["id"], "approve", "alice"))[0] == 200
            await asyncio.wait_for(call, 10)
            decided = await receiver.wait_for("approval.decided")
            assert decided["approval"]["decidedBy"] == "alice"
            ran = await receiver.wait_for("approval.ran")
            assert ran["outcome"] == "ok"
    assert len(executions(exec_log, "delete_thing")) == 1


async def test_a_webhook_that_cannot_take_the_request_fails_the_call_closed(
    tmp_path: Path, exec_log: Path, receiver: Receiver
) -> None:
    receiver.status = 503
    config = gateway_config(exec_log, policy(HOLD), approvers=APPROVERS)
    config["channels"] = {
        "webhook": {"url": f"http://127.0.0.1:{receiver.port}/hook", "secret_env": "HOOK_SECRET"}
    }
    with running_gateway(config, tmp_path, env={"HOOK_SECRET": SECRET}) as gw:
        async with Client(gw.mcp_url, mode="legacy") as client:
            result = await client.call_tool("delete_thing", {"name": "db1"})
    assert result.is_error and result.meta["dev.signoff/decision"]["reason"] == "approval_unavailable"
    assert executions(exec_log, "delete_thing") == []


def test_each_channel_section_is_checked_by_its_plugin(exec_log: Path) -> None:
    base: dict[str, Any] = {"upstreams": {"echo": {"command": "x"}}}
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                **base,
                "slack": {"channel": "C1", "mode": "socket"},
                "channels": {"webhook": {"url": "ftp://x"}, "teams": {}},
            },
            env={},
        )
    errors = "\n".join(err.value.errors)
    assert "slack.bot_token: Field required" in errors
    assert "channels.webhook.url: must be an http:// or https:// URL" in errors
    assert "channels.teams: no approval channel plugin named 'teams' is installed" in errors
