"""The boundaries the code's layout promises: the SDK only at the edge, Slack only as a plugin."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDK = ("mcp", "mcp_types")


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_only_the_edge_and_the_demo_import_the_mcp_sdk() -> None:
    outside = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules("proxy") + modules("bot")
        if not path.is_relative_to(ROOT / "proxy" / "edge")
        and not path.is_relative_to(ROOT / "proxy" / "demo")
        for name in sorted(imported(path))
        if name.split(".")[0] in SDK
    ]
    assert outside == []


def test_the_gateway_never_imports_the_slack_plugin() -> None:
    # `bot` is loaded through entry points (proxy.channels); the core must run without it.
    found = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules("proxy")
        for name in sorted(imported(path))
        if name.split(".")[0] == "bot"
    ]
    assert found == []
