"""Work due at a wall-clock time (a request's expiry, its escalation), one loop timer each, by key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from proxy.records import utcnow

log = logging.getLogger("signoff.timers")


class Timers:
    """`at(key, when, job, *args)` runs `await job(*args)` at `when`; setting a key again replaces it.

    A timer handle per pending request, not a scheduler's job object: ten thousand held calls each
    keep one. A timer lost with its process is the periodic sweep's to catch up on.
    """

    def __init__(self) -> None:
        self._handles: dict[str, asyncio.TimerHandle] = {}
        self._running: set[asyncio.Task[None]] = set()
        self.stopped = False

    def at(self, key: str, when: datetime, job: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run `job(*args)` at `when` (at once if that has passed), instead of what `key` had."""
        if self.stopped:
            return
        self.cancel(key)
        delay = max(0.0, (when - utcnow()).total_seconds())
        self._handles[key] = asyncio.get_running_loop().call_later(delay, self._fire, key, job, args)

    def cancel(self, key: str) -> None:
        """Forget what `key` was due to run (nothing if it had none, or it already ran)."""
        handle = self._handles.pop(key, None)
        if handle is not None:
            handle.cancel()

    def pending(self, key: str) -> bool:
        return key in self._handles

    def stop(self) -> None:
        """Cancel every timer; jobs already running finish on their own."""
        self.stopped = True
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    def _fire(self, key: str, job: Callable[..., Awaitable[None]], args: tuple[Any, ...]) -> None:
        self._handles.pop(key, None)
        task = asyncio.ensure_future(job(*args))
        self._running.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a timed job failed", exc_info=task.exception())
