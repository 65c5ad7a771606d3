"""The gateway killed with SIGKILL during load and restarted on the same database.

Calls in flight die with the process (the clients see the connection drop); after the restart the
gateway serves again on the same address, held approvals of the dead process end withdrawn, nothing
approved before the kill runs after it, and every call answered more than the audit flush interval
before the kill has its audit record.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import executions
from tests.procs import free_port, start_gateway
from tests.reliability.harness import (
    GATEWAY_ENV,
    LOST,
    Approver,
    Load,
    Run,
    all_approvals,
    assert_clean,
    gateway_errors,
    load_config,
    serves_again,
    summary,
    verify,
    wait_for_audit,
)

SESSIONS = 16
SECONDS = 16.0
KILL_AT = 4.0
FLUSH = 0.2  # audit.flush_interval (the default)


@pytest.mark.timeout(180)
async def test_gateway_sigkilled_during_load_and_restarted_on_the_same_database(
    tmp_path: Path, exec_log: Path, figures
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'restart.db'}"
    config = load_config(exec_log, db, audit={"flush_interval": f"{FLUSH}s"})
    config["listen"] = {"host": "127.0.0.1", "port": free_port()}  # the same address after the restart
    first = start_gateway(config, tmp_path, env=GATEWAY_ENV, name="first", own_process=True)
    gateways = [first]
    try:
        run = Run(
            Load(first.mcp_url, SESSIONS, SECONDS, tolerated=frozenset({LOST})),
            Approver(first.control_url, tolerate_outage=True),
        )
        moments: dict[str, float] = {}

        async def kill(run: Run) -> None:
            # The point is calls cut mid-flight: on a loaded machine the load may still be ramping up
            # at KILL_AT, so wait (a few seconds at most) until some calls are waiting for answers.
            deadline = time.monotonic() + 5
            while sum(r.answered is None for r in run.load.records) < 3 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            first.stop(signal.SIGKILL)
            moments["kill"], moments["kill_wall"] = time.monotonic(), time.time()
            run.note("SIGKILL gateway")
            second = await asyncio.to_thread(
                start_gateway, config, tmp_path, env=GATEWAY_ENV, name="second", own_process=True
            )
            gateways.append(second)
            moments["back"] = time.monotonic()
            run.note("restarted")

        await run.drive([(KILL_AT, kill)])
        second = gateways[-1]
        back = await serves_again(second.mcp_url)
        second.stop(signal.SIGTERM)  # a clean shutdown flushes the audit log
        audit = await wait_for_audit(db, 0)
        approvals = await all_approvals(db)
        errors = gateway_errors(second.output())[0]
    finally:
        for gw in gateways:
            gw.stop(signal.SIGKILL)

    def must_be_audited(r) -> bool:
        # Answered long enough before the kill for a flush to have happened, or after the restart.
        return r.answered < moments["kill"] - FLUSH - 0.3 or r.started > moments["back"]

    # An approval approved in the instant before its holder died must end withdrawn, not `approved`
    # (test_contracts.py::test_an_approved_request_whose_holder_died_is_withdrawn); verify() counts
    # any non-final approval as a violation.
    stranded = [a for a in approvals if a.status == "approved"]
    report = verify(run.load.records, audit, exec_log, approvals, must_be_audited=must_be_audited)
    kill_at = datetime.fromtimestamp(moments["kill_wall"], UTC)
    created = {str(a.arguments.get("name")): a.created_at for a in approvals}
    ran_after_restart = [
        e["args"]["name"]
        for e in executions(exec_log, "delete_thing")
        if e["at"] > moments["kill_wall"] and _aware(created.get(e["args"]["name"])) < kill_at
    ]
    in_flight = sum(1 for r in run.load.records if r.outcome == LOST)
    audited_lost = sum(1 for r in run.load.records if r.answered and not must_be_audited(r))
    figures(
        summary(
            "gateway SIGKILL",
            report,
            run.elapsed,
            faults_injected="1 (SIGKILL, restart on the same SQLite file)",
            calls_cut_by_the_kill=in_flight,
            answered_within_the_flush_interval_before_the_kill=audited_lost,
            withdrawn_at_restart=sum(1 for a in approvals if a.status == "withdrawn"),
            stranded_approved=len(stranded),
            ran_after_restart_though_approved_before=len(ran_after_restart),
            restart_took=f"{moments['back'] - moments['kill']:.1f}s",
            serving_again_after=f"{back:.2f}s",
        )
    )
    assert_clean(report)
    assert run.load.session_errors == [] and run.approver.errors == []
    assert in_flight >= 1, "the kill cut calls in flight"
    assert ran_after_restart == []
    assert errors == [], errors


def _aware(value: datetime | None) -> datetime:
    if value is None:
        return datetime.max.replace(tzinfo=UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
