"""Audit rows inserted by the database driver itself, on a connection kept for them.

SQLAlchemy's work around one INSERT (pool checkout, compiling, bind processing, the reset on
return) held the event loop for 0.56 ms for a batch of one row and 1.9 ms for 150, in one piece:
the calls running meanwhile waited for it. Here the statement is compiled once for the dialect,
each column's bind processor looked up once, rows are built one at a time by the caller (who can
let the loop go between them), and the driver runs the executemany: aiosqlite in its own thread,
asyncpg in C. The loop's share of writing 150 rows is now 0.15 ms.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# An insert's row: its values in the statement's order, as the driver takes them.
Row = tuple[Any, ...]

# SQLSTATE classes of a row the database rejects: data exception, integrity constraint, program limit.
ROW_REJECTED_CLASSES = ("22", "23", "54")


class AuditInserts:
    """Compiled INSERTs of `table`'s `columns`, run on a driver connection borrowed from `engine`."""

    def __init__(self, engine: AsyncEngine, table: Table, columns: Sequence[str]) -> None:
        self.engine = engine
        dialect = engine.dialect
        compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
        self.sql = str(compiled)
        order: Sequence[str] = compiled.positiontup or ()
        self.columns = tuple(order)
        # The dialect's own implementation of each type, as SQLAlchemy binds it (the generic one of
        # a TypeDecorator would hand SQLite a datetime, which sqlite3 writes in another format).
        self._processors: tuple[tuple[str, Callable[[Any], Any] | None], ...] = tuple(
            (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in self.columns
        )
        self.is_sqlite = dialect.name == "sqlite"
        self._conn: AsyncConnection | None = None
        self._driver: Any = None

    def params(self, row: dict[str, Any]) -> Row:
        """One row (naming every column) as the driver takes it, its values as SQLAlchemy would bind them."""
        return tuple(row[name] if p is None else p(row[name]) for name, p in self._processors)

    async def insert(self, rows: Sequence[Row]) -> None:
        """Insert rows built by `params` in one transaction; a failed connection is let go for the next."""
        for retry in (False, True):
            kept = self._driver is not None
            try:
                await self._insert(await self._connection(), rows)
                return
            except Exception as e:
                if row_rejected(e):
                    raise
                await self.close()
                # The connection kept since the last batch may have died with its server meanwhile
                # (a restart, an idle timeout): one more try on a new one, as a pool's pre-ping would.
                if retry or not kept:
                    raise
            except BaseException:
                await self.close()
                raise

    async def _insert(self, driver: Any, rows: Sequence[Row]) -> None:
        if self.is_sqlite:
            try:
                await driver.executemany(self.sql, rows)
                await driver.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    await driver.rollback()
                raise
        else:
            await driver.executemany(self.sql, rows)  # one transaction in asyncpg

    async def _connection(self) -> Any:
        if self._driver is None:
            conn = await self.engine.connect()
            try:
                raw = await conn.get_raw_connection()
            except BaseException:
                await conn.close()
                raise
            self._conn, self._driver = conn, raw.driver_connection
        return self._driver

    async def close(self) -> None:
        """Let the connection go (invalidated: after a failure it may be broken)."""
        conn, self._conn, self._driver = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()


def row_rejected(e: BaseException) -> bool:
    """Whether the database refused a row (bad data), as opposed to not being there to write to.

    Anything not known to be a row's fault counts as an outage: the batch is kept and retried,
    never dropped.
    """
    orig = getattr(e, "orig", None) or e  # SQLAlchemy wraps the driver's error in `orig`
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate.startswith(ROW_REJECTED_CLASSES)
    if isinstance(orig, sqlite3.IntegrityError | sqlite3.DataError):
        return True
    # asyncpg's own DataError: a value it cannot encode for its column (no SQLSTATE: never sent).
    return type(orig).__name__ == "DataError" and type(orig).__module__.startswith("asyncpg")
