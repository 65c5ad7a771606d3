"""Upstream faults during load: the upstream killed (and crashing itself), and the upstream hanging.

After each: the gateway serves again, in-flight calls got a clear error (never a hang), nothing ran
twice or without an approval, every answered call has exactly one audit record, and every approval
is in a final state.
"""

from __future__ import annotations

import os
import signal
import statistics
from pathlib import Path

import pytest

from tests.conftest import executions
from tests.procs import running_gateway
from tests.reliability.harness import (
    GATEWAY_ENV,
    TOKENS,
    Approver,
    Load,
    Mix,
    Run,
    all_approvals,
    assert_clean,
    children,
    gateway_errors,
    load_config,
    metric_total,
    serves_again,
    session,
    summary,
    upstreams_up,
    verify,
    wait_for_audit,
)

SESSIONS = 16
SECONDS = 12.0


@pytest.mark.timeout(150)
async def test_upstream_killed_and_crashing_during_load(tmp_path: Path, exec_log: Path, figures) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'kill.db'}"
    # While the upstream is down the gateway cannot tell an unknown tool from a known one; the
    # policy's default (deny) answers it then. Observed, reported, accepted here.
    # The SDK lists tools after a call of a tool it has not seen listed (to validate the result);
    # during the outage that listing fails ("unknown=listing_failed").
    tolerated = frozenset({"upstream_unavailable", "unknown=denied", "unknown=listing_failed"})
    with running_gateway(load_config(exec_log, db), tmp_path, env=GATEWAY_ENV, own_process=True) as gw:
        run = Run(Load(gw.mcp_url, SESSIONS, SECONDS, tolerated=tolerated), Approver(gw.control_url))
        killed: list[int] = []

        async def kill(run: Run) -> None:
            # Each fault hits a running upstream, so each must cost one restart: the one before may
            # still be mending (its restart waits a backoff that doubles), and its exited child may
            # not be reaped yet.
            await upstreams_up(gw.control_url)
            pids = children(gw.popen.pid)
            assert pids, "the stdio upstream is a child of the gateway"
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed.extend(pids)
            run.note(f"SIGKILL upstream {pids}")

        async def crash(run: Run) -> None:
            await upstreams_up(gw.control_url)
            async with session(gw.mcp_url, TOKENS["agent-b"]) as client:
                rec = await run.one_call(client, "crash", "crash-1", tolerated)
            run.note(f"crash tool: {rec.outcome} in {rec.answered - rec.started:.2f}s")

        await run.drive([(2.5, kill), (6.0, crash), (9.0, kill)])
        back = await serves_again(gw.mcp_url)
        answered = run.load.count(lambda r: r.answered is not None)
        audit = await wait_for_audit(db, answered)
        approvals = await all_approvals(db)
        restarts = metric_total(gw.control_url, "signoff_upstream_restarts")
        upstream_now = children(gw.popen.pid)
    errors, _ = gateway_errors(gw.output())
    report = verify(run.load.records, audit, exec_log, approvals)
    slowest_failure = max(
        (r.answered - r.started for r in run.load.records if r.outcome == "upstream_unavailable"), default=0
    )
    figures(
        summary(
            "upstream killed",
            report,
            run.elapsed,
            faults_injected="3 (SIGKILL, crash tool, SIGKILL)",
            upstream_restarts=int(restarts),
            slowest_upstream_unavailable_answer=f"{slowest_failure:.2f}s",
            serving_again_after=f"{back:.2f}s",
            events=run.events,
        )
    )
    assert_clean(report)
    assert run.load.session_errors == [] and run.approver.errors == []
    assert executions(exec_log, "crash"), "the crash tool ran (it is one of the three faults)"
    assert restarts >= 3 and upstream_now and not set(upstream_now) & set(killed)
    assert report.outcomes["upstream_unavailable"] >= 1  # the faults did hit calls in flight
    assert slowest_failure < 5.0, "a call on a dead upstream fails fast, it does not hang"
    assert errors == [], errors


@pytest.mark.timeout(150)
async def test_upstream_hanging_during_load(tmp_path: Path, exec_log: Path, figures) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'hang.db'}"
    config = load_config(exec_log, db)
    config["upstreams"]["echo"]["call_timeout"] = "1s"
    mix = Mix(sleep=8, sleep_seconds=30.0)
    tolerated = frozenset({"upstream_timeout"})
    with running_gateway(config, tmp_path, env=GATEWAY_ENV, own_process=True) as gw:
        run = Run(Load(gw.mcp_url, SESSIONS, SECONDS, mix=mix, tolerated=tolerated), Approver(gw.control_url))
        await run.drive()
        back = await serves_again(gw.mcp_url)
        audit = await wait_for_audit(db, run.load.count(lambda r: r.answered is not None))
        approvals = await all_approvals(db)
    errors, _ = gateway_errors(gw.output())
    report = verify(run.load.records, audit, exec_log, approvals)
    hung = [r for r in run.load.records if r.kind == "sleep"]
    waits = [r.answered - r.started for r in hung if r.answered is not None]
    echo = [r.answered - r.started for r in run.load.records if r.kind == "echo" and r.answered]
    figures(
        summary(
            "upstream hanging",
            report,
            run.elapsed,
            faults_injected=f"{len(hung)} calls hanging 30s behind a 1s call_timeout",
            hung_call_answered_after=f"median {statistics.median(waits):.2f}s, max {max(waits):.2f}s",
            echo_latency_meanwhile=f"median {statistics.median(echo) * 1000:.0f} ms, max {max(echo) * 1000:.0f} ms",
            serving_again_after=f"{back:.2f}s",
        )
    )
    assert_clean(report)
    assert run.load.session_errors == [] and run.approver.errors == []
    assert len(hung) >= 5 and all(r.outcome == "upstream_timeout" for r in hung)
    assert all(r.outcome != "upstream_timeout" for r in run.load.records if r.kind != "sleep")
    assert max(waits) < 5.0, "a hanging upstream call ends after call_timeout, with an error"
    assert errors == [], errors
