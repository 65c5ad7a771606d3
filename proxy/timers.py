"""Timers for work that waits a long time: a heap under one loop timer, and jobs due at wall-clock times.

A held call keeps a few timers for as long as it waits (its expiry, its progress reports, its
stream's pings). A loop's own timer handle costs about a kilobyte each under uvloop; an entry in one
heap per loop costs a tenth of that, which for ten thousand held calls is tens of megabytes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any

from proxy.records import utcnow

log = logging.getLogger("signoff.timers")


class Timer:
    """One callback due at a loop time; `cancel()` stops it if it has not run."""

    __slots__ = ("args", "callback", "cancelled", "heap", "seq", "when")

    def __init__(
        self, heap: TimerHeap, when: float, seq: int, callback: Callable[..., None], args: tuple[Any, ...]
    ) -> None:
        self.heap = heap
        self.when = when
        self.seq = seq
        self.callback = callback
        self.args = args
        self.cancelled = False

    def __lt__(self, other: Timer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback, self.args = _nothing, ()  # let go of what it would have run
            self.heap.cancelled += 1


class TimerHeap:
    """Callbacks due at loop times, in a heap, with a loop timer armed for the earliest."""

    def __init__(self) -> None:
        # Nothing here refers to the loop, not even the armed handle (a handle holds its loop): the
        # heap is the value of a mapping weakly keyed by its loop, which it must not keep alive.
        self._heap: list[Timer] = []
        self._seq = itertools.count()
        self._armed_at = float("inf")  # when the current loop timer fires (inf: none armed)
        self.cancelled = 0  # entries cancelled but still in the heap

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Timer:
        """Run `callback(*args)` in `delay` seconds (as `loop.call_later`, without a handle each)."""
        loop = asyncio.get_running_loop()
        timer = Timer(self, loop.time() + max(0.0, delay), next(self._seq), callback, args)
        heapq.heappush(self._heap, timer)
        if timer.when < self._armed_at:
            # An earlier timer than the armed one: arm another. The one it supersedes still fires
            # at its time and finds nothing of its own to do.
            self._armed_at = timer.when
            loop.call_at(timer.when + _LATE, self._run, timer.when)
        return timer

    def __len__(self) -> int:
        return sum(1 for timer in self._heap if not timer.cancelled)

    def _run(self, armed_for: float) -> None:
        current = armed_for == self._armed_at
        if current:
            self._armed_at = float("inf")
        loop = asyncio.get_running_loop()
        now = loop.time()
        due: list[Timer] = []
        while self._heap and (self._heap[0].cancelled or self._heap[0].when <= now):
            timer = heapq.heappop(self._heap)
            if timer.cancelled:
                self.cancelled -= 1
            else:
                due.append(timer)
        if self.cancelled > 64 and self.cancelled > len(self._heap) // 2:
            self._heap = [t for t in self._heap if not t.cancelled]  # decided requests' expiries
            heapq.heapify(self._heap)
            self.cancelled = 0
        if current and self._heap:
            self._armed_at = self._heap[0].when
            loop.call_at(self._armed_at + _LATE, self._run, self._armed_at)
        for timer in due:
            if timer.cancelled:  # an earlier callback in this batch cancelled it
                self.cancelled -= 1
                continue
            callback, args = timer.callback, timer.args
            timer.cancelled = True  # it ran: cancelling it now changes nothing
            timer.callback, timer.args = _nothing, ()
            try:
                callback(*args)
            except Exception:
                log.exception("a timer's callback failed")


# Loop timers are armed this much after what they wait for: uvloop rounds a delay down to whole
# milliseconds, and a request must not expire (nor a call time out) before its time.
_LATE = 0.001

_heaps: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TimerHeap] = weakref.WeakKeyDictionary()


def later(delay: float, callback: Callable[..., None], *args: Any) -> Timer:
    """`callback(*args)` in `delay` seconds, on the running loop's heap."""
    loop = asyncio.get_running_loop()
    heap = _heaps.get(loop)
    if heap is None:
        heap = _heaps[loop] = TimerHeap()
    return heap.call_later(delay, callback, *args)


def _nothing(*args: Any) -> None:
    pass


class Timers:
    """`at(key, when, job, *args)` runs `await job(*args)` at `when`; setting a key again replaces it.

    An entry in the loop's heap per pending request, not a scheduler's job object. A timer lost with
    its process is the periodic sweep's to catch up on.
    """

    def __init__(self, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self._handles: dict[str, Timer] = {}
        self.spawn = spawn  # runs a job in the owner's background tasks (which its stop waits for)
        self.stopped = False

    def at(self, key: str, when: datetime, job: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run `job(*args)` at `when` (at once if that has passed), instead of what `key` had."""
        if self.stopped:
            return
        self.cancel(key)
        delay = max(0.0, (when - utcnow()).total_seconds())
        self._handles[key] = later(delay, self._fire, key, when, job, args)

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

    def _fire(
        self, key: str, when: datetime, job: Callable[..., Awaitable[None]], args: tuple[Any, ...]
    ) -> None:
        left = (when - utcnow()).total_seconds()
        if left > 0:
            # The loop's clock (cached per turn of the loop) ran behind the wall clock when this was
            # set: not yet. A request must not expire before its time.
            self._handles[key] = later(left, self._fire, key, when, job, args)
            return
        self._handles.pop(key, None)
        self.spawn(_logged(job(*args)))


async def _logged(job: Awaitable[None]) -> None:
    try:
        await job
    except Exception:
        log.exception("a timed job failed")
