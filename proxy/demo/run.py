"""`signoff demo` (`make demo`): signoff in front of the demo jobs server, the scripted agent, then stop.

    signoff demo                      # you press Approve (or Deny) on the printed page URL
    signoff demo --auto-approve 2     # unattended: "alice" approves through the API after 2 s
    signoff demo --timeout 10s        # a shorter approval timeout, to watch a request expire
    signoff demo --replicas 2         # two gateways on one PostgreSQL (see replicas.py)

The gateway runs as a child process with the config built from this folder's signoff.yaml; its
config, database and log go to a fresh temporary folder (or --state-dir), whose path is printed.
With SLACK_BOT_TOKEN, SLACK_APP_TOKEN and SLACK_CHANNEL set, approval requests go to Slack
(SLACK_APPROVERS, comma-separated Slack user IDs, says who may approve there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from proxy.demo.approver import auto_approve
from proxy.demo.console import say
from proxy.demo.gateway import GatewayProcess, any_free_port, port_free
from proxy.demo.people import demo_people, sign_in_link
from proxy.duration import parse_duration

DEMO = Path(__file__).resolve().parent
ENDINGS = {
    "approved": "the cancel was approved by a human and ran",
    "denied": "the cancel was denied by a human and did not run",
    "expired": "nobody decided in time, so the cancel was denied and did not run",
}
SLACK_VARS = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_CHANNEL")


# -- the config --------------------------------------------------------------------------------------


def approval_timeout(policy: dict[str, Any]) -> str | None:
    for rule in policy.get("rules", []):
        if rule.get("action") == "require_approval":
            return str((rule.get("approval") or {}).get("timeout", "10m"))
    return None


def build_config(
    state: Path,
    timeout: str | None,
    any_ports: bool = False,
    port_offset: int = 0,
    people: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The demo's signoff.yaml made runnable from anywhere; returns (config, notes for the banner)."""
    config = yaml.safe_load((DEMO / "signoff.yaml").read_text())
    if people is not None:
        config["people"] = people
    notes: list[str] = []
    jobs = config["upstreams"]["jobs"]
    jobs["command"] = sys.executable  # the Python running this script has `mcp` installed
    jobs["cwd"] = str(DEMO)
    for side in ("listen", "control"):
        host, port = config[side]["host"], config[side]["port"] + port_offset
        config[side]["port"] = port
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
        notes.append(f"--timeout {timeout}: the policy is a copy of the demo's policy.yaml with that timeout")

    if all(os.environ.get(v) for v in SLACK_VARS):
        # References, not values: the tokens never land in the file; the gateway reads its environment.
        config["slack"] = {
            "bot_token": "${SLACK_BOT_TOKEN}",
            "app_token": "${SLACK_APP_TOKEN}",
            "channel": "${SLACK_CHANNEL}",
        }
        slack_users = [u.strip() for u in os.environ.get("SLACK_APPROVERS", "").split(",") if u.strip()]
        config["approvers"]["oncall"]["users"] = slack_users
        if not slack_users:
            notes.append(
                "SLACK_APPROVERS (Slack user IDs) is not set: nobody can approve in Slack, only on the page"
            )
    return config, notes


async def play(
    mcp_url: str, control_url: str, token: str, approve_after: float | None, alice_token: str
) -> str:
    """Run the scripted agent (and the auto-approver, if asked); returns how the cancel ended."""
    from proxy.demo.agent import run_agent  # imports the MCP client: only when the demo runs

    approver = None
    if approve_after is not None:
        approver = asyncio.create_task(auto_approve(control_url, token, approve_after, "alice", alice_token))
    try:
        return await run_agent(mcp_url, control_url, token)
    finally:
        if approver is not None:
            approver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await approver


# -- main --------------------------------------------------------------------------------------------


def shown(path: Path) -> str:
    """A path relative to the current directory when it is under it, else absolute."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def banner(
    config: dict[str, Any],
    timeout: str | None,
    notes: list[str],
    args: argparse.Namespace,
    tokens: dict[str, str],
    config_path: Path,
) -> None:
    listen, control = config["listen"], config["control"]
    page = f"http://{control['host']}:{control['port']}/approvals"
    say("=" * 78)
    say("signoff demo: an agent, a gateway, and a human who signs off")
    say("=" * 78)
    say(f"  agent connects to   http://{listen['host']}:{listen['port']}/mcp")
    live = "" if args.timeout else "  (edit it: it reloads live)"
    say(f"  policy              {shown(Path(config['policy']))}{live}")
    say(f"  gateway config      {shown(config_path)}  (generated for this run)")
    say(f"  gateway log         {shown(args.state_dir / 'gateway.log')}")
    for note in notes:
        say(f"  note: {note}")
    say()
    if "slack" in config:
        say(f"  Approval requests go to Slack ({os.environ['SLACK_CHANNEL']}): press Approve there.")
        say("  The approvals page works too:")
    else:
        say("  When cancel-job waits, open this page and press Approve (or Deny):")
    say("  Each on-call person has a sign-in link (it carries their own token, made for this run):")
    say()
    for name, token in tokens.items():
        say(f"    {name:<6} {sign_in_link(page, token)}")
    say()
    say("  Or from another terminal, as alice:")
    say(f"    export SIGNOFF_APPROVER_TOKEN={tokens['alice']}")
    say(f"    signoff approvals list --config {shown(config_path)}")
    say(f"    signoff approvals approve <ID> --config {shown(config_path)}")
    if timeout:
        say(f"  Nobody decides within {timeout}: the call is denied.")
    if args.auto_approve is not None:
        say(f"  --auto-approve: alice approves through the API {args.auto_approve:g}s after the request.")
    say("=" * 78)


def _timeout(value: str) -> str:
    """`--timeout`: a duration greater than zero."""
    try:
        if parse_duration(value) <= 0:
            raise ValueError("the timeout must be greater than zero")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _replicas(value: str) -> int:
    count = int(value)
    if not 1 <= count <= 9:
        raise argparse.ArgumentTypeError("between 1 and 9")
    return count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, on `signoff demo`'s parser."""
    parser.add_argument(
        "--auto-approve",
        type=float,
        metavar="SECONDS",
        help="approve through the API (as alice) SECONDS after a request appears: runs unattended",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        metavar="DURATION",
        help='approval timeout, e.g. "30s" or "2m" (default: the policy\'s)',
    )
    parser.add_argument(
        "--state-dir", type=Path, help="where the config, database and log go (default: a new temp dir)"
    )
    parser.add_argument(
        "--any-ports", action="store_true", help="use free ports rather than 8765/8766 (for tests and CI)"
    )
    parser.add_argument(
        "--replicas",
        type=_replicas,
        default=1,
        metavar="N",
        help="run N gateways on one PostgreSQL: a call held on one is decided through another",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed options; returns the exit status."""
    args.state_dir = (args.state_dir or Path(tempfile.mkdtemp(prefix="signoff-demo-"))).resolve()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    # SIGTERM (e.g. from a test runner) takes the same clean path as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    if args.replicas > 1:
        from proxy.demo.replicas import run_replicas

        return run_replicas(args)
    return run_one(args)


def run_one(args: argparse.Namespace) -> int:
    """One gateway on SQLite in front of the jobs server, and the scripted agent."""
    people, tokens = demo_people()
    config, notes = build_config(args.state_dir, args.timeout, args.any_ports, people=people)
    timeout = args.timeout or approval_timeout(yaml.safe_load((DEMO / "policy.yaml").read_text()))
    config_path = args.state_dir / "signoff.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    control = config["control"]
    control_url = f"http://{control['host']}:{control['port']}"
    mcp_url = f"http://{config['listen']['host']}:{config['listen']['port']}/mcp"

    say("Starting the gateway in front of the demo jobs server ...")
    gateway = GatewayProcess(config_path, args.state_dir / "gateway.log")
    status = 0
    try:
        started = time.monotonic()
        gateway.wait_ready(control_url)
        say(f"Gateway ready in {time.monotonic() - started:.1f}s (pid {gateway.popen.pid}).")
        banner(config, timeout, notes, args, tokens, config_path)
        outcome = asyncio.run(
            play(mcp_url, control_url, control["admin_token"], args.auto_approve, tokens["alice"])
        )
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


def main(argv: list[str] | None = None) -> int:
    """`python -m proxy.demo.run`: the same as `signoff demo`."""
    parser = argparse.ArgumentParser(description="Run the signoff demo (what `make demo` runs).")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
