"""Cross-replica wake-up on PostgreSQL: LISTEN for decisions made by other replicas.

The replica that records a decision sends `pg_notify('signoff_decided', id)` in the same transaction
(see `Store.transition`), so the notification arrives only once the decision is committed. A
notification sent while we were disconnected is lost, so after every (re)connect we re-check
every call we hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("signoff.notify")

CHANNEL = "signoff_decided"


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """`postgresql+asyncpg://…` → `postgresql://…` for a plain asyncpg connection."""
    return "postgresql://" + sqlalchemy_url.split("://", 1)[1]


class PgListener:
    """One dedicated connection (outside the SQLAlchemy pool) listening for decisions."""

    def __init__(
        self,
        url: str,
        on_decided: Callable[[str], Awaitable[None]],
        on_reconnect: Callable[[], Awaitable[None]],
    ) -> None:
        self.dsn = asyncpg_dsn(url)
        self.on_decided = on_decided
        self.on_reconnect = on_reconnect
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        task = asyncio.create_task(self.on_decided(payload))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            conn = None
            try:
                import asyncpg  # here: only a PostgreSQL deployment needs it (~10 MB resident)

                conn = await asyncpg.connect(self.dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                self.connected.set()
                delay = 0.2
                await self.on_reconnect()  # decisions made while we were not listening
                while not lost.is_set():
                    # asyncpg reports a dead server only on use; a cheap query every few seconds finds it.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5)
                    if not lost.is_set():
                        await conn.fetchval("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", e, delay)
            finally:
                self.connected.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
