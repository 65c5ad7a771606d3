"""Click-to-resume latency against the fake Slack: from POSTing a signed Approve to the MCP result.

A real gateway process (HTTP mode, SQLite) in front of the echo fixture, a real MCP client, and the
fake Slack Web API from tests/fakeslack.py in this process. Each round: the client calls
`delete_thing`, waits for the request to be posted, then the clock starts when the signed click is
sent and stops when the tool result arrives. Socket Mode is measured the same way (the envelope
is pushed over the fake's websocket).

Run `python bench/slack_latency.py [rounds]`, or call `run()` (returns the figures as a dict).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from mcp import Client  # noqa: E402

from bot import blocks  # noqa: E402
from tests.conftest import stdio_echo  # noqa: E402
from tests.fakeslack import (  # noqa: E402
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    FakeSlack,
    block_action_payload,
    post_signed,
)
from tests.procs import start_gateway  # noqa: E402


def _config(fake: FakeSlack, exec_log: Path, mode: str) -> dict[str, Any]:
    auth = {"signing_secret": SIGNING_SECRET} if mode == "http" else {"app_token": APP_TOKEN}
    return {
        "upstreams": {"echo": stdio_echo(exec_log)},
        "policy": {
            "default": "allow",
            "rules": [
                {
                    "name": "deletes need approval",
                    "tools": "delete_thing",
                    "action": "require_approval",
                    "approval": {"timeout": "60s", "approvers": "oncall"},
                }
            ],
        },
        "approvers": {"oncall": {"users": ["U_ALICE"]}},
        "slack": {"bot_token": BOT_TOKEN, "channel": "C0123", "api_url": fake.api_url, "mode": mode, **auth},
        "audit": {"enabled": True},
    }


async def _posted(fake: FakeSlack, index: int) -> tuple[str, str, str]:
    """The index-th request message: (channel, ts, approval id from its Approve button)."""

    def requests() -> list[tuple[str, str]]:
        return [key for key, m in fake.messages.items() if "thread_ts" not in m]

    channel, ts = await fake.wait_until(lambda: r[index] if len(r := requests()) > index else None, 30)
    first = fake.message_history[(channel, ts)][0]
    buttons = [e for b in first["blocks"] for e in b.get("elements", [])]
    return channel, ts, next(e["value"] for e in buttons if e.get("action_id") == blocks.APPROVE)


async def _rounds(mode: str, rounds: int, workdir: Path) -> list[float]:
    async with FakeSlack() as fake:
        config = _config(fake, workdir / "exec.jsonl", mode)
        gw = await asyncio.to_thread(start_gateway, config, workdir, name=mode)
        try:
            samples: list[float] = []
            async with Client(gw.mcp_url, mode="legacy") as client:
                for i in range(rounds + 1):  # the first round warms up imports and connections
                    call = asyncio.create_task(client.call_tool("delete_thing", {"name": f"thing-{i}"}))
                    channel, ts, approval_id = await _posted(fake, i)
                    payload = block_action_payload(
                        user="U_ALICE",
                        action_id=blocks.APPROVE,
                        value=approval_id,
                        channel=channel,
                        message_ts=ts,
                    )
                    started = time.perf_counter()
                    if mode == "http":
                        await post_signed(gw.control_url + "/slack/events", payload, SIGNING_SECRET)
                    else:
                        await fake.socket_send("interactive", payload)
                    result = await call
                    elapsed = time.perf_counter() - started
                    if result.is_error:
                        raise RuntimeError(f"round {i} failed: {result.content}")
                    if i:
                        samples.append(elapsed)
            return samples
        finally:
            await asyncio.to_thread(gw.stop)


def _summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "rounds": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "min_ms": round(ms[0], 1),
        "max_ms": round(ms[-1], 1),
    }


async def _run(rounds: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="slack-latency-") as tmp:
        return {mode: _summary(await _rounds(mode, rounds, Path(tmp))) for mode in ("http", "socket")}


def run(rounds: int = 10) -> dict[str, dict[str, float]]:
    """Median/min/max click-to-resume latency in ms, for HTTP mode and Socket Mode."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):  # slack_sdk ignores NO_PROXY
        os.environ.pop(name, None)
    return asyncio.run(_run(rounds))


if __name__ == "__main__":
    figures = run(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
    for mode, f in figures.items():
        print(
            f"click-to-resume ({mode:6}): median {f['median_ms']:.1f} ms "
            f"(min {f['min_ms']:.1f}, max {f['max_ms']:.1f}, {f['rounds']:.0f} rounds)"
        )
