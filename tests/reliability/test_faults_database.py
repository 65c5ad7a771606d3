"""Database faults during load: the SQLite file locked by another process; PostgreSQL stopped and restarted.

After each: the gateway serves again, no audit record of an answered call is lost (records are
retried until the database takes them), nothing ran twice or without an approval, and every
approval is in a final state.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.pg import remove, start_postgres
from tests.procs import running_gateway
from tests.reliability.harness import (
    GATEWAY_ENV,
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
SECONDS = 13.0
STOP_AT, START_AT = 2.5, 6.5
# What the database being down looks like in the gateway's log (expected while it is down).
DB_MARKERS = (
    "asyncpg",
    "sqlalchemy",
    "Connect call failed",
    "Connection refused",
    "Connection reset",
    "cannot write audit records",
    "database system is shutting down",
    "connection_lost()",  # asyncpg, when the server goes away mid-query
)

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


def lock_sqlite(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding a write transaction (BEGIN EXCLUSIVE) on the database for `seconds`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.timeout(150)
async def test_sqlite_file_locked_by_another_process_during_load(
    tmp_path: Path, exec_log: Path, figures
) -> None:
    path = tmp_path / "locked.db"
    db = f"sqlite+aiosqlite:///{path}"
    with running_gateway(load_config(exec_log, db), tmp_path, env=GATEWAY_ENV, own_process=True) as gw:
        run = Run(Load(gw.mcp_url, SESSIONS, SECONDS), Approver(gw.control_url))
        lockers: list[subprocess.Popen[str]] = []

        async def lock(run: Run) -> None:
            lockers.append(await asyncio.to_thread(lock_sqlite, path, 4.0))
            run.note("BEGIN EXCLUSIVE by another process")

        async def released(run: Run) -> None:
            await asyncio.to_thread(lockers[-1].wait, 30)
            run.note("COMMIT: released")

        await run.drive([(2.5, lock), (2.6, released)])
        back = await serves_again(gw.mcp_url)
        audit = await wait_for_audit(db, run.load.count(lambda r: r.answered is not None))
        approvals = await all_approvals(db)
    errors, _ = gateway_errors(gw.output())
    report = verify(run.load.records, audit, exec_log, approvals)
    during = [r for r in run.load.records if 2.5 <= r.started - run.started <= 6.5 and r.answered]
    figures(
        summary(
            "sqlite locked",
            report,
            run.elapsed,
            faults_injected="1 (write lock held 4 s by another process)",
            calls_answered_during_the_lock=len(during),
            serving_again_after=f"{back:.2f}s",
            events=run.events,
        )
    )
    assert_clean(report)
    assert run.load.session_errors == [] and run.approver.errors == []
    assert errors == [], errors


@pytest.mark.postgres
@pytest.mark.timeout(180)
async def test_postgres_stopped_and_restarted_during_load(tmp_path: Path, exec_log: Path, figures) -> None:
    pg = await asyncio.to_thread(start_postgres)  # our own cluster: stopping it affects no other test
    try:
        db = await asyncio.to_thread(pg.new_database)
        with running_gateway(load_config(exec_log, db), tmp_path, env=GATEWAY_ENV, own_process=True) as gw:
            # Calls that need the database (approval requests, the shared rate limit) fail closed while
            # it is down, with a reason; the scripted approver clicks again when a click gets a 500.
            outage = frozenset({"approval_unavailable", "store_unavailable"})
            run = Run(
                Load(gw.mcp_url, SESSIONS, SECONDS, tolerated=outage),
                Approver(gw.control_url, tolerate_outage=True),
            )

            async def stop(run: Run) -> None:
                await asyncio.to_thread(pg.stop)
                run.note("PostgreSQL stopped")

            async def start(run: Run) -> None:
                await asyncio.to_thread(pg.start)
                run.note("PostgreSQL started")

            await run.drive([(STOP_AT, stop), (START_AT, start)])
            back = await serves_again(gw.mcp_url)
            audit = await wait_for_audit(db, run.load.count(lambda r: r.answered is not None))
            approvals = await all_approvals(db)
        errors, _ = gateway_errors(gw.output())
    finally:
        await asyncio.to_thread(remove, pg)
    # ...and only while it is down (or just after, while the pool reconnects).
    during_outage: Counter[str] = Counter()
    for r in run.load.records:
        if r.outcome in ("approval_unavailable", "store_unavailable"):
            during_outage[f"{r.kind} {r.outcome}"] += 1
            if not STOP_AT - 0.5 <= r.started - run.started <= START_AT + 3.0:
                r.error = f"{r.outcome} outside the outage ({r.started - run.started:.1f}s)"
    db_errors = [e for e in errors if any(m in e for m in DB_MARKERS)]
    errors = [e for e in errors if e not in db_errors]
    report = verify(run.load.records, audit, exec_log, approvals)
    figures(
        summary(
            "postgres restarted",
            report,
            run.elapsed,
            faults_injected="1 (PostgreSQL stopped for 4 s)",
            failed_closed_during_the_outage=dict(during_outage),
            database_errors_logged=len(db_errors),
            serving_again_after=f"{back:.2f}s",
            events=run.events,
        )
    )
    assert_clean(report)
    assert run.load.session_errors == [] and run.approver.errors == []
    assert errors == [], errors
