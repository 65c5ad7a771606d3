"""`make demo`: start signoff in front of the demo jobs server, run the scripted agent, stop.

    python demo/run.py                     # you press Approve (or Deny) on the printed page URL
    python demo/run.py --auto-approve 2    # unattended: "alice" approves through the API after 2 s
    python demo/run.py --timeout 10s       # a shorter approval timeout, to watch a request expire

The gateway runs as a child process with the config built from demo/signoff.yaml; its config,
database and log go to a fresh temporary folder (or --state-dir), whose path is printed.
With SLACK_BOT_TOKEN, SLACK_APP_TOKEN and SLACK_CHANNEL set, approval requests go to Slack
(SLACK_APPROVERS, comma-separated Slack user IDs, says who may approve there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from agent import run_agent, say

from proxy.duration import parse_duration

DEMO = Path(__file__).resolve().parent
ROOT = DEMO.parent
ENDINGS = {
    "approved": "the cancel was approved by a human and ran",
    "denied": "the cancel was denied by a human and did not run",
    "expired": "nobody decided in time, so the cancel was denied and did not run",
}
SLACK_VARS = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_CHANNEL")


# -- the config --------------------------------------------------------------------------------------


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def any_free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def approval_timeout(policy: dict[str, Any]) -> str | None:
    for rule in policy.get("rules", []):
        if rule.get("action") == "require_approval":
            return str((rule.get("approval") or {}).get("timeout", "10m"))
    return None


def build_config(
    state: Path, timeout: str | None, any_ports: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """demo/signoff.yaml made runnable from anywhere; returns (config, notes for the banner)."""
    config = yaml.safe_load((DEMO / "signoff.yaml").read_text())
    notes: list[str] = []
    jobs = config["upstreams"]["jobs"]
    jobs["command"] = sys.executable  # the Python running this script has `mcp` installed
    jobs["cwd"] = str(DEMO)
    for side in ("listen", "control"):
        host, port = config[side]["host"], config[side]["port"]
        if any_ports:
            config[side]["port"] = any_free_port(host)
        elif not port_free(host, port):
            config[side]["port"] = any_free_port(host)
            notes.append(f"port {port} is taken: the {side} port is {config[side]['port']} instead")
    config["control"]["admin_token"] = secrets.token_urlsafe(18)
    config["database_url"] = f"sqlite+aiosqlite:///{state / 'signoff-demo.db'}"

    policy_file = DEMO / config["policy"]
    if timeout is None:
        config["policy"] = str(policy_file)  # the file itself, so edits reload while the demo runs
    else:
        policy = yaml.safe_load(policy_file.read_text())
        for rule in policy.get("rules", []):
            if rule.get("action") == "require_approval":
                rule.setdefault("approval", {})["timeout"] = timeout
        (state / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
        config["policy"] = str(state / "policy.yaml")
        notes.append(f"--timeout {timeout}: the policy is a copy of demo/policy.yaml with that timeout")

    if all(os.environ.get(v) for v in SLACK_VARS):
        # References, not values: the tokens never land in the file; the gateway reads its environment.
        config["slack"] = {
            "bot_token": "${SLACK_BOT_TOKEN}",
            "app_token": "${SLACK_APP_TOKEN}",
            "channel": "${SLACK_CHANNEL}",
        }
        slack_users = [u.strip() for u in os.environ.get("SLACK_APPROVERS", "").split(",") if u.strip()]
        config["approvers"]["oncall"]["users"] += slack_users
        if not slack_users:
            notes.append(
                "SLACK_APPROVERS (Slack user IDs) is not set: nobody can approve in Slack, only on the page"
            )
    return config, notes


# -- the gateway process -----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: get SIGTERM if this script dies without stopping the gateway (Linux only)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class GatewayProcess:
    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches this script, which stops the gateway in order
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

    def wait_ready(self, control_url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"the gateway exited with status {self.popen.returncode}")
            try:
                with urllib.request.urlopen(f"{control_url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:  # 503: an upstream is not up yet
                last = e.read().decode(errors="replace")
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise RuntimeError(f"the gateway was not ready after {timeout:.0f}s ({last})")

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM: the gateway withdraws held calls and flushes the audit log, then exits."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        return self.popen.returncode


# -- auto-approve ------------------------------------------------------------------------------------


def api(control_url: str, token: str, path: str, body: dict[str, Any] | None = None) -> Any:
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


async def auto_approve(control_url: str, token: str, delay: float, user: str = "alice") -> None:
    """Approve each pending request `delay` seconds after it appears, as an on-call human would."""
    seen: dict[str, float] = {}
    while True:
        pending = await asyncio.to_thread(api, control_url, token, "/api/approvals?status=pending")
        now = time.monotonic()
        for a in pending.get("approvals", []):
            first = seen.setdefault(a["id"], now)
            if now - first >= delay:
                answer = await asyncio.to_thread(
                    api,
                    control_url,
                    token,
                    f"/api/approvals/{a['id']}/decide",
                    {"decision": "approve", "user": user, "reason": "auto-approved by demo/run.py"},
                )
                say(f"     [auto-approve] {user} approved {a['tool']} ({a['id']}): {answer.get('message')}")
                seen[a["id"]] = float("inf")
        await asyncio.sleep(0.2)


async def play(mcp_url: str, control_url: str, token: str, approve_after: float | None) -> str:
    approver = None
    if approve_after is not None:
        approver = asyncio.create_task(auto_approve(control_url, token, approve_after))
    try:
        return await run_agent(mcp_url, control_url, token)
    finally:
        if approver is not None:
            approver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await approver


# -- main --------------------------------------------------------------------------------------------


def shown(path: Path) -> str:
    """A path relative to the current directory when it is under it (demo/policy.yaml), else absolute."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def banner(config: dict[str, Any], timeout: str | None, notes: list[str], args: argparse.Namespace) -> None:
    listen, control = config["listen"], config["control"]
    page = f"http://{control['host']}:{control['port']}/approvals#token={control['admin_token']}"
    users = " or ".join(config["approvers"]["oncall"]["users"][:2])
    say("=" * 78)
    say("signoff demo: an agent, a gateway, and a human who signs off")
    say("=" * 78)
    say(f"  agent connects to   http://{listen['host']}:{listen['port']}/mcp")
    live = "" if args.timeout else "  (edit it: it reloads live)"
    say(f"  policy              {shown(Path(config['policy']))}{live}")
    say(f"  gateway log         {shown(args.state_dir / 'gateway.log')}")
    for note in notes:
        say(f"  note: {note}")
    say()
    if "slack" in config:
        say(f"  Approval requests go to Slack ({os.environ['SLACK_CHANNEL']}): press Approve there.")
        say("  The approvals page works too:")
    else:
        say("  When cancel-job waits, open this page and press Approve (or Deny):")
    say()
    say(f"    {page}")
    say()
    say(f'  Type {users} in "Deciding as" (the on-call approvers).')
    if timeout:
        say(f"  Nobody decides within {timeout}: the call is denied.")
    if args.auto_approve is not None:
        say(f"  --auto-approve: alice approves through the API {args.auto_approve:g}s after the request.")
    say("=" * 78)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the signoff demo (what `make demo` runs).")
    parser.add_argument(
        "--auto-approve",
        type=float,
        metavar="SECONDS",
        help="approve through the API (as alice) SECONDS after a request appears: runs unattended",
    )
    parser.add_argument(
        "--timeout", metavar="DURATION", help='approval timeout, e.g. "30s" or "2m" (default: the policy\'s)'
    )
    parser.add_argument(
        "--state-dir", type=Path, help="where the config, database and log go (default: a new temp dir)"
    )
    parser.add_argument(
        "--any-ports", action="store_true", help="use free ports rather than 8765/8766 (for tests and CI)"
    )
    args = parser.parse_args(argv)
    if args.timeout is not None:
        try:
            if parse_duration(args.timeout) <= 0:
                raise ValueError("the timeout must be greater than zero")
        except ValueError as e:
            parser.error(f"--timeout: {e}")
    args.state_dir = (args.state_dir or Path(tempfile.mkdtemp(prefix="signoff-demo-"))).resolve()
    args.state_dir.mkdir(parents=True, exist_ok=True)

    config, notes = build_config(args.state_dir, args.timeout, args.any_ports)
    timeout = args.timeout or approval_timeout(yaml.safe_load((DEMO / "policy.yaml").read_text()))
    config_path = args.state_dir / "signoff.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    control = config["control"]
    control_url = f"http://{control['host']}:{control['port']}"
    mcp_url = f"http://{config['listen']['host']}:{config['listen']['port']}/mcp"

    # SIGTERM (e.g. from a test runner) takes the same clean path as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    say("Starting the gateway in front of the demo jobs server ...")
    gateway = GatewayProcess(config_path, args.state_dir / "gateway.log")
    status = 0
    try:
        started = time.monotonic()
        gateway.wait_ready(control_url)
        say(f"Gateway ready in {time.monotonic() - started:.1f}s (pid {gateway.popen.pid}).")
        banner(config, timeout, notes, args)
        outcome = asyncio.run(play(mcp_url, control_url, control["admin_token"], args.auto_approve))
        say()
        say(f"Done: {ENDINGS.get(outcome, f'the cancel ended as {outcome}')}.")
    except KeyboardInterrupt:
        say()
        say("Interrupted.")
        status = 130
    except Exception as e:
        say()
        say(f"The demo failed: {e}")
        say(f"--- last lines of {gateway.log_path} ---")
        say(gateway.log_tail())
        status = 1
    finally:
        say("Stopping the gateway ...")
        code = gateway.stop()
        say(f"Gateway stopped (exit status {code}). Its log: {gateway.log_path}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
