"""The approvals web page, driven in headless Chromium with Playwright (see tests/chromium.py for which).

Real parts only: a gateway process with the echo fixture upstream, held calls from the MCP SDK
client, and the page served by the gateway's control port.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import pytest_asyncio
from mcp import Client
from playwright.async_api import Browser, Dialog, Page, expect

from tests.browser import fresh_page, launched
from tests.conftest import PEOPLE, executions, person_token, stdio_echo
from tests.procs import Gateway, free_port, running_gateway

# One Chromium for the whole file (a page and context of its own per test): launching it per test
# cost a couple of seconds of CPU each. Its tests therefore share the file's event loop.
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

TOKEN = "page-test-admin-token"
META = "dev.signoff/decision"


def config(exec_log: Path) -> dict[str, Any]:
    return {
        "upstreams": {"echo": stdio_echo(exec_log)},
        "control": {"host": "127.0.0.1", "port": free_port(), "admin_token": TOKEN},
        "approvals": {"progress_interval": "1s"},
        "people": PEOPLE,
        "approvers": {"oncall": {"people": ["alice", "bob"]}},
        "policy": {
            "default": "allow",
            "rules": [
                {
                    "name": "on-call approves deletes",
                    "tools": "delete_thing",
                    "action": "require_approval",
                    "approval": {"approvers": "oncall", "timeout": "2m"},
                }
            ],
        },
    }


@pytest.fixture
def gateway(tmp_path: Path, exec_log: Path) -> Any:
    with running_gateway(config(exec_log), tmp_path) as gw:
        yield gw


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launched() as b:
        yield b


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, tmp_path: Path) -> AsyncIterator[Page]:
    async with fresh_page(browser, tmp_path) as p:
        yield p


def api(gw: Gateway, path: str) -> Any:
    request = urllib.request.Request(gw.control_url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.load(r)


async def wait_pending(gw: Gateway, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        pending = (await asyncio.to_thread(api, gw, "/api/approvals?status=pending"))["approvals"]
        if len(pending) >= count:
            return pending
        assert asyncio.get_running_loop().time() < deadline, f"only {len(pending)} pending approvals"
        await asyncio.sleep(0.1)


def held_call(client: Client, name: str) -> asyncio.Task[types.CallToolResult]:
    async def progress(p: float, total: float | None, message: str | None) -> None:
        return None  # passing a callback asks the gateway for "waiting for approval" progress

    return asyncio.create_task(client.call_tool("delete_thing", {"name": name}, progress_callback=progress))


def card(page: Page, name: str) -> Any:
    """The pending-approval card whose arguments name `name`."""
    return page.locator("#pending article.card").filter(has_text=f'"name": "{name}"')


async def open_page(page: Page, gw: Gateway, person: str = "alice") -> None:
    """Open the page through the person's sign-in link (their own token in the fragment)."""
    await page.goto(f"{gw.control_url}/approvals#signin={person_token(person)}")
    await expect(page.locator("#whoami")).to_have_text(f"Signed in as {person}")


async def test_approve_one_deny_the_other(gateway: Gateway, page: Page, exec_log: Path) -> None:
    dialogs: list[str] = []

    async def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    page.on("dialog", on_dialog)
    async with Client(gateway.mcp_url, mode="legacy") as client:
        alpha, beta = held_call(client, "alpha"), held_call(client, "beta")
        await wait_pending(gateway, 2)

        await open_page(page, gateway)
        assert "#signin=" not in page.url  # the page drops the token from the address bar
        await expect(page.locator("#pending article.card")).to_have_count(2)
        await expect(card(page, "alpha")).to_contain_text("risk: destructive")
        await expect(card(page, "alpha")).to_contain_text("rule: on-call approves deletes")

        # Type the denial reason first: deciding the other card must not wipe it (the page keeps cards).
        beta_card = card(page, "beta")
        reason = beta_card.get_by_placeholder("reason (required to deny")
        await reason.fill("not during the release freeze")
        await page.wait_for_timeout(1200)  # a refresh (every second) keeps the focus in the reason box
        await expect(reason).to_be_focused()

        await card(page, "alpha").get_by_role("button", name="Approve").click()
        await expect(page.locator("#banner")).to_have_text("Approved.")
        result = await asyncio.wait_for(alpha, 10)
        assert not result.is_error and result.content[0].text == "deleted alpha"
        assert len(dialogs) == 1 and "delete_thing is destructive" in dialogs[0] and '"alpha"' in dialogs[0]

        await expect(page.locator("#pending article.card")).to_have_count(1)  # alpha's card is gone
        await expect(reason).to_have_value("not during the release freeze")
        await beta_card.get_by_role("button", name="Deny").click()
        await expect(page.locator("#banner")).to_have_text("Denied.")
        result = await asyncio.wait_for(beta, 10)
        assert result.is_error
        info = result.meta[META]
        assert info["reason"] == "denied" and info["decidedBy"] == "alice"
        assert info["humanReason"] == "not during the release freeze"
        assert "Denied by alice: not during the release freeze" in result.content[0].text
        assert len(dialogs) == 1  # denying asks no confirmation

    assert [e["args"]["name"] for e in executions(exec_log, "delete_thing")] == ["alpha"]

    await expect(page.locator("#pending")).to_have_text("Nothing is waiting.")
    decided = page.locator("#decided tr:not(.empty)")
    await expect(decided).to_have_count(2)
    executed = decided.filter(has_text="executed")
    await expect(executed).to_contain_text("alice")
    await expect(executed).to_contain_text("ok")
    denied = decided.filter(has_text="denied")
    await expect(denied).to_contain_text("alice")
    await expect(denied).to_contain_text("not during the release freeze")
    audit = page.locator("#audit tr").filter(has_text="delete_thing")
    await expect(audit).to_have_count(2)
    await expect(audit.filter(has_text="require_approval")).to_have_count(2)
    await expect(audit.filter(has_text="ok")).to_have_count(1)
    await expect(audit.filter(has_text="denied")).to_have_count(1)


async def test_sign_in_with_a_wrong_token_then_ones_own(gateway: Gateway, page: Page) -> None:
    await page.goto(f"{gateway.control_url}/approvals#signin=not-the-token")
    prompt = page.locator("#login")
    await expect(prompt).to_be_visible()
    await expect(prompt).to_contain_text("neither a person's token nor the admin token")
    await expect(page.locator("#app")).to_be_hidden()

    await page.get_by_label("your approver token").fill(person_token("bob"))
    await page.get_by_label("your approver token").press("Enter")
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("#whoami")).to_have_text("Signed in as bob")
    await expect(prompt).to_be_hidden()
    await expect(page.locator("#pending")).to_have_text("Nothing is waiting.")
    # The session rides an HttpOnly cookie: no script on the page can read it.
    assert "signoff_session" not in await page.evaluate("document.cookie")
    await page.get_by_role("button", name="Sign out").click()
    await expect(prompt).to_be_visible()
    await page.reload()
    await expect(prompt).to_be_visible()  # signed out on the server too


async def test_a_non_approver_is_refused_and_nothing_is_decided(
    gateway: Gateway, page: Page, exec_log: Path
) -> None:
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    async with Client(gateway.mcp_url, mode="legacy") as client:
        call = held_call(client, "gamma")
        [pending] = await wait_pending(gateway, 1)

        await open_page(page, gateway, "dave")  # a person, but not in the oncall group
        approve = card(page, "gamma").get_by_role("button", name="Approve")
        await approve.click()
        banner = page.locator("#banner")
        await expect(banner).to_contain_text("You (dave) are not an approver for this request")
        await expect(banner).to_have_class("show err")

        # Nothing was decided: still pending, nothing ran, the call still waits; the refusal is audited.
        assert (await asyncio.to_thread(api, gateway, f"/api/approvals/{pending['id']}"))[
            "status"
        ] == "pending"
        assert not call.done()
        assert executions(exec_log, "delete_thing") == []
        await expect(page.locator("#audit tr").filter(has_text="refused_click")).to_have_count(1)
        await expect(card(page, "gamma")).to_be_visible()

        # The real on-call engineer signs in on the same browser and decides.
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.locator("#login")).to_be_visible()
        await open_page(page, gateway, "bob")
        await card(page, "gamma").get_by_role("button", name="Approve").click()
        await expect(banner).to_contain_text("Approved")
        result = await asyncio.wait_for(call, 10)
        assert not result.is_error and result.content[0].text == "deleted gamma"
        await expect(banner).to_have_text("Approved by bob: delete_thing ran successfully.")
    assert [e["args"]["name"] for e in executions(exec_log, "delete_thing")] == ["gamma"]


async def test_a_dismissed_confirmation_decides_nothing_and_says_so(
    gateway: Gateway, page: Page, exec_log: Path
) -> None:
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))
    async with Client(gateway.mcp_url, mode="legacy") as client:
        call = held_call(client, "delta")
        [pending] = await wait_pending(gateway, 1)
        await open_page(page, gateway)
        await card(page, "delta").get_by_role("button", name="Approve").click()
        await expect(page.locator("#banner")).to_contain_text("Not approved: you cancelled the confirmation")
        status = (await asyncio.to_thread(api, gateway, f"/api/approvals/{pending['id']}"))["status"]
        assert status == "pending" and not call.done()
        call.cancel()
    assert executions(exec_log, "delete_thing") == []


async def test_the_admin_token_views_without_buttons(gateway: Gateway, page: Page) -> None:
    async with Client(gateway.mcp_url, mode="legacy") as client:
        call = held_call(client, "epsilon")
        await wait_pending(gateway, 1)
        await page.goto(f"{gateway.control_url}/approvals#signin={TOKEN}")
        await expect(page.locator("#viewonly")).to_be_visible()
        await expect(card(page, "epsilon")).to_be_visible()
        await expect(card(page, "epsilon").get_by_role("button", name="Approve")).to_have_count(0)
        call.cancel()


async def test_the_page_fits_a_phone_and_shows_every_argument_with_its_hash(
    gateway: Gateway, page: Page
) -> None:
    await page.set_viewport_size({"width": 390, "height": 844})
    long_name = "x" * 400 + " DROP TABLE users; " + "y" * 400
    async with Client(gateway.mcp_url, mode="legacy") as client:
        call = held_call(client, long_name)
        [pending] = await wait_pending(gateway, 1)
        await open_page(page, gateway)
        shown = page.locator("#pending article.card pre")
        await expect(shown).to_contain_text("DROP TABLE users;")  # nothing cut on the page
        await expect(page.locator("#pending .hash")).to_contain_text(pending["argumentsHash"])
        await page.wait_for_timeout(300)  # one layout pass after rendering
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a 390px phone"
        call.cancel()


@pytest.mark.node
async def test_single_sign_on_through_a_real_openid_provider_then_approve(
    tmp_path: Path, exec_log: Path, page: Page
) -> None:
    from tests.oidc import running_oidc_provider

    control_port = free_port()
    base = f"http://127.0.0.1:{control_port}"
    with running_oidc_provider(tmp_path, [f"{base}/auth/oidc/callback"]) as idp:
        cfg = config(exec_log)
        cfg["control"]["port"] = control_port
        cfg["oidc"] = {"issuer": idp.issuer, "client_id": idp.client_id, "client_secret_env": "OIDC_SECRET"}
        with running_gateway(cfg, tmp_path, env={"OIDC_SECRET": idp.client_secret}) as gw:
            async with Client(gw.mcp_url, mode="legacy") as client:
                page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
                call = held_call(client, "zeta")
                await wait_pending(gw, 1)
                await page.goto(f"{gw.control_url}/approvals")
                await page.get_by_role("link", name="Sign in with single sign-on").click()
                # The provider's own login page (oidc-provider's development interaction).
                await page.locator('input[name="login"]').fill("alice")
                await page.locator('input[name="password"]').fill("any")
                await page.locator('button[type="submit"]').click()
                await expect(page.locator("#whoami")).to_have_text("Signed in as alice")
                assert page.url == f"{gw.control_url}/approvals"
                await card(page, "zeta").get_by_role("button", name="Approve").click()
                result = await asyncio.wait_for(call, 10)
                assert not result.is_error and result.content[0].text == "deleted zeta"
                decided = await asyncio.to_thread(api, gw, "/api/approvals?status=all")
                assert decided["approvals"][0]["decidedBy"] == "alice"
    assert [e["args"]["name"] for e in executions(exec_log, "delete_thing")] == ["zeta"]


async def test_a_link_to_one_request_highlights_it(gateway: Gateway, page: Page) -> None:
    async with Client(gateway.mcp_url, mode="legacy") as client:
        first, second = held_call(client, "eta"), held_call(client, "theta")
        pending = await wait_pending(gateway, 2)
        wanted = next(a for a in pending if a["arguments"]["name"] == "eta")
        await page.goto(
            f"{gateway.control_url}/approvals?approval={wanted['id']}#signin={person_token('alice')}"
        )
        await expect(card(page, "eta")).to_have_class(re.compile(r"\blinked\b"))
        await expect(card(page, "theta")).not_to_have_class(re.compile(r"\blinked\b"))
        first.cancel()
        second.cancel()
