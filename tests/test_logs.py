"""`--log-format json`: a running gateway's stderr is JSON Lines, with secrets from its environment redacted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import stdio_echo
from tests.procs import ROOT, SIGNOFF, free_port, wait_http, write_config

SECRETS = {
    "UPSTREAM_PASSWORD": "hunter2-correct-horse-battery",
    "UPSTREAM_TOKEN": "sk-live0123456789abcdefghijklmnop",
}


def wait_for_line(path: Path, text: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, f"the gateway exited:\n{path.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in the log after {timeout}s:\n{path.read_text()}"
        time.sleep(0.05)


def test_serve_logs_one_redacted_json_object_per_line(tmp_path: Path, exec_log: Path) -> None:
    dead = free_port()  # nothing listens here: the HTTP upstream keeps failing, and says so in the log
    control = free_port()
    config = {
        "upstreams": {
            "echo": stdio_echo(exec_log),  # connects (a loaded machine may take more than 3 s)
            "web": {
                "url": f"http://alice:${{UPSTREAM_PASSWORD}}@127.0.0.1:{dead}/mcp",
                "headers": {"Authorization": "Bearer ${UPSTREAM_TOKEN}"},
                "connect_timeout": "3s",
            },
        },
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "control": {"host": "127.0.0.1", "port": control, "admin_token": "${UPSTREAM_TOKEN}"},
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
    }
    path = write_config(config, tmp_path / "signoff.yaml")
    stderr = tmp_path / "stderr.log"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [*SIGNOFF, "--log-format", "json", "serve", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, **SECRETS},
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{control}/healthz", 30, proc)
        wait_for_line(stderr, "upstream web is down", proc)
        wait_for_line(stderr, "upstream echo connected", proc)
        wait_for_line(stderr, "MCP front on", proc)  # startup is over: its log lines are all there
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)

    lines = stderr.read_text().splitlines()
    assert len(lines) >= 4, lines
    records = []
    for line in lines:
        record = json.loads(line)  # every line, not just most: a shipper drops what it cannot parse
        assert set(record) >= {"time", "level", "logger", "message"}, record
        records.append(record)
    for name, secret in SECRETS.items():
        assert secret not in stderr.read_text(), f"{name} leaked into the log"

    down = [r for r in records if r["message"].startswith("upstream web is down")]
    assert down and down[0]["level"] == "WARNING" and down[0]["logger"] == "signoff.upstream"
    assert f"http://alice:[REDACTED]@127.0.0.1:{dead}/mcp" in down[0]["message"]
    assert any(r["message"].startswith("upstream echo connected") for r in records)
