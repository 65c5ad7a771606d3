"""The audit writer: every record written once, in order, redacted; kept through a database that refuses
connections, and only a row the database rejects is stored without its arguments."""

from __future__ import annotations

import asyncio
import math
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.audit import AuditLog
from proxy.metrics import Metrics
from proxy.store import Store


def call(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "call_id": f"c{n}",
        "identity": "agent",
        "tool": "echo",
        "decision": "allow",
        "outcome": "ok",
        **extra,
    }


async def prepared(audit: AuditLog) -> None:
    """Until the writer has prepared every record in the background (it does so a moment after each)."""
    deadline = time.monotonic() + 5
    while True:
        if not audit.unprepared:
            return
        assert time.monotonic() < deadline, f"{audit.unprepared} records still unprepared"
        await asyncio.sleep(0.001)


@dataclass
class Writer:
    """An audit writer (flushed by hand) on a fresh database of the test PostgreSQL server."""

    store: Store
    audit: AuditLog
    database: str


@pytest.fixture
async def pg_writer(pg: Any) -> AsyncIterator[Writer]:
    url = await asyncio.to_thread(pg.new_database)
    store = Store(url)
    await store.open()
    try:
        yield Writer(store, AuditLog(store, Metrics(), interval=3600), url.rsplit("/", 1)[1])
    finally:
        await store.close()


async def written(store: Store) -> list[str]:
    return [r.call_id for r in await store.audit(limit=10_000)]  # oldest first


async def test_records_are_written_once_and_in_order_however_they_were_prepared(db_url: str) -> None:
    # Records are made rows a few at a time between calls, and whatever is left at a flush; a
    # flush may come in the middle of either, and a batch is smaller than what is queued.
    store = Store(db_url)
    await store.open()
    audit = AuditLog(store, Metrics(), interval=3600, batch=64)
    try:
        n = 0
        for burst in (1, 7, 300, 2, 150):
            for _ in range(burst):
                n += 1
                audit.record(**call(n, arguments={"text": f"call {n}", "api_key": f"sk-live-{n:08d}"}))
            if burst % 2:
                await prepared(audit)  # in the background, between calls
            else:
                await audit.flush()  # some still unprepared: the flush prepares them
        await audit.flush()
        assert audit.backlog == 0 and audit.healthy
        assert await written(store) == [f"c{i}" for i in range(1, n + 1)]
        last = await store.audit(limit=1)
        assert last[0].arguments == {"text": f"call {n}", "api_key": "[REDACTED]"}
    finally:
        await store.close()


async def test_every_value_an_agent_can_send_is_stored_and_read_back(db_url: str) -> None:
    # What JSON allows and a database's text does not (NUL, a lone surrogate, NaN) is stored as
    # near as it can be; everything else exactly, whatever the script.
    store = Store(db_url)
    await store.open()
    audit = AuditLog(store, Metrics(), interval=3600)
    arguments = {
        "text": "naïve café 日本語 \U0001f680",
        "nul": "a\x00b",
        "lone": "x\ud800y",
        "nan": math.nan,
        "nested": [{"n": 2**53, "f": 0.1, "t": True, "none": None}],
    }
    try:
        audit.record(
            **call(1, tool="tōol", client_name="clïent \U0001f916", reason="why\ud83d", arguments=arguments)
        )
        await audit.flush()
        assert audit.healthy and audit.backlog == 0
        [rec] = await store.audit()
        assert rec.tool == "tōol" and rec.client_name == "clïent \U0001f916" and rec.reason == "why\\ud83d"
        assert rec.arguments == {
            "text": "naïve café 日本語 \U0001f680",
            "nul": "ab",
            "lone": "x\\ud800y",
            "nan": "nan",
            "nested": [{"n": 2**53, "f": 0.1, "t": True, "none": None}],
        }
    finally:
        await store.close()


async def test_a_stopped_writer_leaves_nothing_queued(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}")
    await store.open()
    audit = AuditLog(store, Metrics(), interval=3600)
    audit.start()
    try:
        for i in range(1000):
            audit.record(**call(i))
        await audit.stop()
        assert audit.backlog == 0
        assert len(await written(store)) == 1000
    finally:
        await store.close()


async def test_times_are_stored_as_every_other_time_in_the_file(tmp_path: Path) -> None:
    # Written at the driver, the time must still be SQLAlchemy's text for SQLite, or `since` and
    # `until` would compare two formats of text.
    path = tmp_path / "audit.db"
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.open()
    audit = AuditLog(store, Metrics(), interval=3600)
    try:
        audit.record(**call(1))
        await audit.flush()
        [rec] = await store.audit()
        assert [r.call_id for r in await store.audit(since=rec.at, until=rec.at)] == ["c1"]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        [(stored,)] = db.execute("SELECT at FROM audit").fetchall()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", stored), stored


@pytest.mark.postgres
async def test_records_written_while_the_database_refuses_connections_arrive_when_it_accepts_again(
    pg: Any, pg_writer: Writer
) -> None:
    # A server refusing new connections (here: the database closed to them, as while it starts up or
    # shuts down) answers with an error that is neither OperationalError nor InterfaceError to
    # SQLAlchemy. Taken for a bad row, it used to drop every record written meanwhile.
    store, audit, name = pg_writer.store, pg_writer.audit, pg_writer.database
    try:
        audit.record(**call(1))
        await audit.flush()
        assert await written(store) == ["c1"] and audit.healthy

        await asyncio.to_thread(pg.psql, f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        await store.close()  # its open connections (the audit writer's too) would still be let in
        audit.record(**call(2))
        audit.record(**call(3))
        await audit.flush()
        assert not audit.healthy and audit.backlog == 2

        await asyncio.to_thread(pg.psql, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        audit.record(**call(4))
        await audit.flush()
        assert await written(store) == ["c1", "c2", "c3", "c4"]
        assert audit.healthy and audit.backlog == 0
    finally:
        await asyncio.to_thread(pg.psql, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")


@pytest.mark.postgres
async def test_a_row_the_database_rejects_is_kept_without_its_arguments_and_the_rest_are_written(
    pg_writer: Writer,
) -> None:
    # A tool name too long for its btree index (program limit exceeded, SQLSTATE 54000): the row
    # cannot be stored even without its arguments, and must not hold up the others.
    audit = pg_writer.audit
    audit.record(**call(1))
    audit.record(**call(2, tool=os.urandom(20_000).hex()))
    audit.record(**call(3))
    await audit.flush()
    assert audit.healthy and audit.backlog == 0
    assert await written(pg_writer.store) == ["c1", "c3"]


@pytest.mark.postgres
async def test_a_connection_the_server_dropped_between_batches_is_replaced_without_a_failed_write(
    pg: Any, pg_writer: Writer
) -> None:
    # The writer keeps one connection; a server restart or an idle timeout closes it while nothing
    # is being written. The next batch goes through on a new one: no record waits, no unhealthy log.
    audit = pg_writer.audit
    audit.record(**call(1))
    await audit.flush()
    await asyncio.to_thread(
        pg.psql,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{pg_writer.database}' AND pid <> pg_backend_pid()",
    )
    audit.record(**call(2))
    await audit.flush()
    assert audit.healthy and audit.backlog == 0
    assert await written(pg_writer.store) == ["c1", "c2"]
