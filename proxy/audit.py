"""The audit log: one record per tools/call, written in batches off the call path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from typing import Any

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from proxy.metrics import Metrics
from proxy.records import utcnow
from proxy.redact import redact
from proxy.store import Store


def _storable(value: Any) -> Any:
    """What PostgreSQL can store as JSON: no NUL characters, no NaN or infinite numbers."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


# SQLSTATE classes of a row the database rejects: data exception, integrity constraint, program limit.
ROW_REJECTED_CLASSES = ("22", "23", "54")


def _is_outage(e: BaseException) -> bool:
    """Anything but a row the database rejects: keep the batch and retry it later.

    Decided by what the row error is, not what an outage looks like: a server starting up or shutting
    down answers with errors SQLAlchemy maps to neither OperationalError nor InterfaceError, and taking
    those for a bad row dropped the records written meanwhile.
    """
    if not isinstance(e, DBAPIError) or e.connection_invalidated:
        return True
    if isinstance(e, IntegrityError | DataError):
        return False
    sqlstate = getattr(e.orig, "sqlstate", None) or ""
    return not sqlstate.startswith(ROW_REJECTED_CLASSES)


# Argument strings longer than this are cut in audit records (the full call is the upstream's business).
MAX_AUDIT_TEXT = 4096
YIELD_AFTER = 0.002  # seconds of redaction work before the writer lets other tasks run

log = logging.getLogger("signoff.audit")


class AuditLog:
    """Buffers records and writes them every `interval` seconds (or `batch` records); flushes on stop.

    A failed write keeps the batch and retries it, so a database outage delays records but does
    not lose them; `healthy` turns False meanwhile (calls fail closed on it if so configured).
    """

    def __init__(self, store: Store, metrics: Metrics, interval: float = 0.2, batch: int = 500) -> None:
        self.store = store
        self.metrics = metrics
        self.interval = interval
        self.batch = batch
        self.healthy = True
        self._buffer: deque[dict[str, Any]] = deque()
        self._failed: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def record(self, **fields: Any) -> None:
        """Queue a record (the `audit` table's columns); never blocks.

        Plain dicts, not ORM objects: building a SQLModel row costs more than the rest of an allowed
        call. Arguments are redacted when written, off the call path.
        """
        fields.setdefault("at", utcnow())
        self._buffer.append(fields)
        if len(self._buffer) >= self.batch:
            self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._buffer) + len(self._failed)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued so far (in batches)."""
        async with self._lock:
            while self._buffer or self._failed:
                # A batch that failed before is already redacted; retry it first, in order.
                batch, self._failed = self._failed, []
                slice_started = time.perf_counter()
                while self._buffer and len(batch) < self.batch:
                    rec = self._buffer.popleft()
                    rec["arguments"] = redact(rec.get("arguments") or {}, MAX_AUDIT_TEXT)
                    batch.append(_storable(rec))
                    if time.perf_counter() - slice_started > YIELD_AFTER:
                        # Redacting large arguments takes ~0.5 ms per 100 KB: let the calls waiting
                        # on the loop go first instead of stalling them for a whole batch.
                        await asyncio.sleep(0)
                        slice_started = time.perf_counter()
                try:
                    await self.store.write_audit(batch)
                except Exception as e:
                    if not _is_outage(e):
                        # The database refuses something in the batch, not the connection: write the
                        # rows one by one so one bad record cannot hold up (or lose) the others.
                        log.error(
                            "audit batch refused (%s); writing its %d records one by one", e, len(batch)
                        )
                        batch = await self._write_one_by_one(batch)
                    if batch:
                        self._failed = batch
                        if self.healthy:
                            log.error("cannot write audit records (%d waiting): %s", self.backlog, e)
                        self.healthy = False
                        self.metrics.audit_dropped.inc()
                        return
                if not self.healthy:
                    log.warning("audit log writable again")
                self.healthy = True

    async def _write_one_by_one(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write rows singly, storing a rejected row without its arguments; returns what an outage left."""
        for n, rec in enumerate(batch):
            try:
                try:
                    await self.store.write_audit([rec])
                except DBAPIError as e:
                    if _is_outage(e):
                        raise
                    await self.store.write_audit([{**rec, "arguments": {"_unstorable": str(e)[:500]}}])
            except Exception as e:
                if not _is_outage(e):
                    log.error("audit record for call %s could not be written: %s", rec.get("call_id"), e)
                    continue
                return batch[n:]
        return []

    async def stop(self) -> None:
        """Stop the writer and flush what is left (retrying briefly if the database is busy)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _ in range(20):
            await self.flush()
            if not self.backlog:
                return
            await asyncio.sleep(0.25)
        log.error("audit: %d records could not be written before shutdown", self.backlog)
