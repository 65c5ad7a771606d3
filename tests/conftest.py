"""Shared fixtures: upstream servers as real processes, gateway configs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import PYTHON, ROOT, Proc, free_port, spawn, wait_port

ECHO_SERVER = str(ROOT / "tests" / "fixtures" / "echo_server.py")


def stdio_echo(exec_log: Path, **extra: Any) -> dict[str, Any]:
    """Config of the echo fixture as a stdio upstream that logs executions to `exec_log`."""
    return {"command": PYTHON, "args": [ECHO_SERVER], "env": {"EXEC_LOG": str(exec_log)}, **extra}


def executions(exec_log: Path, tool: str | None = None) -> list[dict[str, Any]]:
    """Tool executions the fixture recorded (across all its processes)."""
    if not exec_log.exists():
        return []
    rows = [json.loads(line) for line in exec_log.read_text().splitlines() if line.strip()]
    return [r for r in rows if tool is None or r["tool"] == tool]


@pytest.fixture
def exec_log(tmp_path: Path) -> Path:
    return tmp_path / "executions.jsonl"


@pytest.fixture
def http_echo(tmp_path: Path, exec_log: Path) -> Iterator[tuple[str, Proc]]:
    """The echo fixture served over Streamable HTTP; yields (url, process)."""
    port = free_port()
    proc = spawn(
        [PYTHON, ECHO_SERVER, "--http", str(port)],
        tmp_path / "http_echo.log",
        env={"EXEC_LOG": str(exec_log)},
    )
    try:
        wait_port(port, 30, proc.popen)
        yield f"http://127.0.0.1:{port}/mcp", proc
    finally:
        proc.stop()
