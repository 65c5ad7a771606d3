"""The audit log: one record per tools/call, written in batches off the call path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from typing import Any

from proxy.auditrows import Row, row_rejected
from proxy.metrics import Metrics
from proxy.records import utcnow
from proxy.redact import redact
from proxy.store import Store


def _storable(value: Any) -> Any:
    """What a database can store: no NUL characters or lone surrogates, no NaN or infinite numbers."""
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "")
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"; UTF-8 does not)
                value = value.encode(errors="backslashreplace").decode()
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def _unstorable(rec: dict[str, Any], e: BaseException) -> dict[str, Any]:
    """The record without its arguments, saying why they were not stored."""
    return {**rec, "arguments": {"_unstorable": str(e)[:500]}}


# Argument strings longer than this are cut in audit records (the full call is the upstream's business).
MAX_AUDIT_TEXT = 4096
# Seconds of work (redaction, a row's parameters) after which the writer lets the calls waiting on
# the loop go first: each block of it is added to the latency of some call that waits meanwhile.
YIELD_AFTER = 0.0002

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
        # Records redacted, each with its row, in order: prepared a few at a time between calls.
        self._ready: deque[tuple[dict[str, Any], Row]] = deque()
        self._preparing = False
        # Records already redacted, each with its row, from a write that failed: the next one goes first.
        self._failed: list[tuple[dict[str, Any], Row]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def record(self, **fields: Any) -> None:
        """Queue a record (the `audit` table's columns); never blocks.

        Plain dicts, not ORM objects: building a SQLModel row costs more than the rest of an allowed
        call. The record is redacted and made a row in the loop's next turn, after the call's reply:
        a few microseconds after each call rather than a millisecond for a whole batch at once, which
        some call would wait for. (A millisecond later instead, it lands in a sequential client's
        next call: 100 KB calls took 0.5 ms longer in `make bench`.)
        """
        fields.setdefault("at", utcnow())
        self._buffer.append(fields)
        if not self._preparing:
            with contextlib.suppress(RuntimeError):  # no loop running: the next flush prepares it
                asyncio.get_running_loop().call_soon(self._prepare_some)
                self._preparing = True
        if len(self._buffer) + len(self._ready) >= self.batch:
            self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._buffer) + len(self._ready) + len(self._failed)

    @property
    def unprepared(self) -> int:
        """Records not yet redacted and made rows."""
        return len(self._buffer)

    def _prepare_some(self) -> None:
        """Prepare queued records for `YIELD_AFTER` s at most; the rest in a later turn of the loop."""
        started = time.perf_counter()
        try:
            while self._buffer:
                self._prepare_next()
                if time.perf_counter() - started > YIELD_AFTER:
                    asyncio.get_running_loop().call_soon(self._prepare_some)
                    return
        except BaseException:
            self._preparing = False
            raise
        self._preparing = False

    def _prepare_next(self) -> None:
        rec = self._buffer.popleft()
        rec["arguments"] = redact(rec.get("arguments") or {}, MAX_AUDIT_TEXT)
        rec = _storable(rec)
        self._ready.append((rec, self._row(rec)))

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
            while self._buffer or self._ready or self._failed:
                # What is not prepared yet (a burst faster than the loop's spare turns) is, here.
                slice_started = time.perf_counter()
                while self._buffer:
                    self._prepare_next()
                    if time.perf_counter() - slice_started > YIELD_AFTER:
                        await asyncio.sleep(0)
                        slice_started = time.perf_counter()
                # A batch that failed before is already redacted; retry it first, in order.
                batch, self._failed = self._failed, []
                while self._ready and len(batch) < self.batch:
                    batch.append(self._ready.popleft())
                try:
                    await self.store.insert_audit([row for _, row in batch])
                except Exception as e:
                    if row_rejected(e):
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

    def _row(self, rec: dict[str, Any]) -> Row:
        """The record as the insert's row; one whose arguments cannot be stored is kept without them."""
        try:
            return self.store.audit_params(rec)
        except (TypeError, ValueError) as e:
            return self.store.audit_params(_unstorable(rec, e))

    async def _write_one_by_one(
        self, batch: list[tuple[dict[str, Any], Row]]
    ) -> list[tuple[dict[str, Any], Row]]:
        """Write rows singly, storing a rejected row without its arguments; returns what an outage left."""
        for n, (rec, row) in enumerate(batch):
            try:
                try:
                    await self.store.insert_audit([row])
                except Exception as e:
                    if not row_rejected(e):
                        raise
                    await self.store.insert_audit([self.store.audit_params(_unstorable(rec, e))])
            except Exception as e:
                if row_rejected(e):
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
