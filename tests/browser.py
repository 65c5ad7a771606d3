"""Headless Chromium for the page tests: one per test here; `test_webpage.py` shares one per file.

Import the fixtures into a test module: `from tests.browser import browser, page`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright
from playwright.async_api import Error as PlaywrightError

from tests import chromium


@contextlib.asynccontextmanager
async def launched() -> AsyncIterator[Browser]:
    """Headless Chromium as `tests.chromium` chooses it (the system's, else Playwright's own build)."""
    async with async_playwright() as pw:
        try:
            browser = await pw.chromium.launch(**chromium.launch_options())
        except PlaywrightError as e:
            pytest.fail(
                f"cannot launch Chromium ({chromium.describe()}): {str(e).splitlines()[0]}\n"
                "install the system's `chromium` package, or run `make test` (its preflight fetches "
                "Playwright's build)",
                pytrace=False,
            )
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def fresh_page(browser: Browser, tmp_path: Path) -> AsyncIterator[Page]:
    """A page in a context of its own; a screenshot at the end; fails on any JavaScript error."""
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield page
    finally:
        await page.screenshot(path=str(tmp_path / "approvals-page.png"), full_page=True)
        await context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launched() as b:
        yield b


@pytest.fixture
async def page(browser: Browser, tmp_path: Path) -> AsyncIterator[Page]:
    async with fresh_page(browser, tmp_path) as p:
        yield p
