"""The audit writer keeps records through a database that refuses connections, and drops only bad rows."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from proxy.audit import AuditLog
from proxy.metrics import Metrics
from proxy.store import Store

pytestmark = pytest.mark.postgres


def call(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "call_id": f"c{n}",
        "identity": "agent",
        "tool": "echo",
        "decision": "allow",
        "outcome": "ok",
        **extra,
    }


async def written(store: Store) -> list[str]:
    return [r.call_id for r in await store.audit()]


async def test_records_written_while_the_database_refuses_connections_arrive_when_it_accepts_again(
    pg,
) -> None:
    # A server refusing new connections (here: the database closed to them, as while it starts up or
    # shuts down) answers with an error that is neither OperationalError nor InterfaceError to
    # SQLAlchemy. Taken for a bad row, it used to drop every record written meanwhile.
    url = await asyncio.to_thread(pg.new_database)
    name = url.rsplit("/", 1)[1]
    store = Store(url)
    await store.open()
    audit = AuditLog(store, Metrics(), interval=3600)
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
        await store.close()


async def test_a_row_the_database_rejects_is_kept_without_its_arguments_and_the_rest_are_written(pg) -> None:
    url = await asyncio.to_thread(pg.new_database)
    store = Store(url)
    await store.open()
    audit = AuditLog(store, Metrics(), interval=3600)
    try:
        # A tool name too long for its btree index (program limit exceeded, SQLSTATE 54000): the row
        # cannot be stored even without its arguments, and must not hold up the others.
        audit.record(**call(1))
        audit.record(**call(2, tool=os.urandom(20_000).hex()))
        audit.record(**call(3))
        await audit.flush()
        assert audit.healthy and audit.backlog == 0
        assert await written(store) == ["c1", "c3"]
    finally:
        await store.close()
