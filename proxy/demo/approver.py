"""The demo's unattended approver (`--auto-approve`): an on-call human pressing Approve, through the API."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

from proxy.demo.console import say


def api(control_url: str, token: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """GET (or POST `body` to) the gateway's control API; returns the JSON answer, errors included."""
    request = urllib.request.Request(
        control_url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 403/409 carry a JSON message too
        return json.loads(e.read() or b"{}")


def approve(
    control_url: str, person_token: str, approval_id: str, confirm_changed: bool = False
) -> dict[str, Any]:
    """Approve one request as the person whose own token this is (the admin token cannot decide)."""
    body: dict[str, Any] = {"decision": "approve"}
    if confirm_changed:  # "the job changed since you saw it; approve anyway?" — yes
        body["confirmChanged"] = True
    return api(control_url, person_token, f"/api/approvals/{approval_id}/decide", body)


async def auto_approve(
    control_url: str, token: str, delay: float, user: str, person_token: str, where: str = ""
) -> None:
    """Approve each pending request `delay` seconds after it appears, as `user` (an on-call human) would.

    `token` lists the requests (the admin token views); `person_token` is `user`'s own, to decide.
    """
    seen: dict[str, float] = {}
    while True:
        pending = await asyncio.to_thread(api, control_url, token, "/api/approvals?status=pending")
        now = time.monotonic()
        for a in pending.get("approvals", []):
            first = seen.setdefault(a["id"], now)
            if now - first >= delay:
                if a.get("context"):  # the job's live state, as signoff read it for the approvers
                    say(f"     [auto-approve] {user} sees {a['context']['summary']}")
                answer = await asyncio.to_thread(approve, control_url, person_token, a["id"])
                if answer.get("contextChanged") is not None:  # the job moved on: read, then confirm
                    say(f"     [auto-approve] {user} is told: {answer.get('message')}")
                    answer = await asyncio.to_thread(approve, control_url, person_token, a["id"], True)
                say(
                    f"     [auto-approve] {user} approved {a['tool']} ({a['id']}){where}: "
                    f"{answer.get('message')}"
                )
                seen[a["id"]] = float("inf")
        await asyncio.sleep(0.2)
