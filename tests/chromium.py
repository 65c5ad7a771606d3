"""Which Chromium the page tests drive: the system's when installed, else Playwright's own build.

CI machines cannot reach Playwright's download host, so they install Debian's `chromium` package
(/usr/bin/chromium); an ordinary machine without it gets Playwright's headless build from
`python -m playwright install --only-shell chromium`, which `make test`'s preflight runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SYSTEM_CHROMIUM = Path("/usr/bin/chromium")
INSTALL = ["-m", "playwright", "install", "--only-shell", "chromium"]  # after the venv's python
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def system_chromium() -> Path | None:
    """The system's Chromium, if installed."""
    return SYSTEM_CHROMIUM if SYSTEM_CHROMIUM.exists() else None


def playwright_builds() -> list[Path]:
    """Chromium builds Playwright downloaded (any version; the launch says whether one fits)."""
    default = Path.home() / ".cache" / "ms-playwright"
    root = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or default)
    return sorted(root.glob("chromium_headless_shell-*")) + sorted(root.glob("chromium-*"))


def describe() -> str:
    """Which Chromium the tests will launch, in words."""
    system = system_chromium()
    return str(system) if system else "Playwright's own Chromium build"


def launch_options() -> dict[str, Any]:
    """Keyword arguments for Playwright's `chromium.launch`: one choice for every browser test."""
    options: dict[str, Any] = {"args": ARGS, "headless": True}
    system = system_chromium()
    if system is not None:
        options["executable_path"] = str(system)
    return options
