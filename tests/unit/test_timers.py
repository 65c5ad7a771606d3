"""Timed work by key (a request's expiry, its escalation): runs once, at its time, unless replaced."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any

import pytest

from proxy.records import utcnow
from proxy.timers import TimerHeap, Timers, later

_running: set[asyncio.Task[None]] = set()


def spawn(job: Coroutine[Any, Any, None]) -> None:
    """What the broker's background does: run the job as a task, kept until it ends."""
    task = asyncio.ensure_future(job)
    _running.add(task)
    task.add_done_callback(_running.discard)


class Ran:
    """What the jobs were called with, and a way to wait for the next one."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.changed = asyncio.Event()

    async def job(self, what: str) -> None:
        self.calls.append(what)
        self.changed.set()

    async def next(self) -> None:
        async with asyncio.timeout(5):
            await self.changed.wait()
        self.changed.clear()


async def test_a_job_runs_once_at_its_time_and_one_past_due_at_once() -> None:
    timers, ran = Timers(spawn), Ran()
    timers.at("late", utcnow() - timedelta(minutes=5), ran.job, "late")
    timers.at("soon", utcnow() + timedelta(seconds=0.2), ran.job, "soon")
    timers.at("hour", utcnow() + timedelta(hours=1), ran.job, "hour")
    await ran.next()
    assert ran.calls == ["late"]
    assert timers.pending("soon") and timers.pending("hour") and not timers.pending("late")
    await ran.next()
    assert ran.calls == ["late", "soon"]
    assert not timers.pending("soon")
    timers.stop()


async def test_setting_a_key_again_replaces_it_and_cancel_forgets_it() -> None:
    timers, ran = Timers(spawn), Ran()
    timers.at("a", utcnow() + timedelta(seconds=0.1), ran.job, "first")
    timers.at("a", utcnow() + timedelta(seconds=0.2), ran.job, "second")
    timers.at("b", utcnow() + timedelta(seconds=0.1), ran.job, "b")
    timers.cancel("b")
    timers.cancel("never set")
    timers.at("marker", utcnow() + timedelta(seconds=0.4), ran.job, "marker")
    await ran.next()
    while ran.calls[-1] != "marker":
        await ran.next()
    assert ran.calls == ["second", "marker"]


async def test_stop_cancels_everything_and_refuses_more() -> None:
    timers, ran = Timers(spawn), Ran()
    timers.at("a", utcnow(), ran.job, "a")
    timers.stop()
    timers.at("b", utcnow(), ran.job, "b")
    assert not timers.pending("a") and not timers.pending("b")
    await asyncio.sleep(0)  # one loop turn: a job due now would have started
    await asyncio.sleep(0)
    assert ran.calls == []


async def test_a_failing_job_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    timers, ran = Timers(spawn), Ran()

    async def fails() -> None:
        raise RuntimeError("the store is down")

    with caplog.at_level(logging.ERROR, logger="signoff.timers"):
        timers.at("bad", utcnow(), fails)
        timers.at("good", utcnow() + timedelta(seconds=0.1), ran.job, "good")
        await ran.next()
    assert ran.calls == ["good"]
    assert any(r.exc_info and "the store is down" in str(r.exc_info[1]) for r in caplog.records)


# -- the heap under one loop timer -----------------------------------------------------------------


async def test_the_heap_runs_callbacks_in_time_order_under_one_loop_timer() -> None:
    heap = TimerHeap()
    order: list[str] = []
    finished = asyncio.Event()
    heap.call_later(0.15, order.append, "third")
    heap.call_later(0.05, order.append, "first")
    heap.call_later(0.10, order.append, "second")
    cancelled = heap.call_later(0.07, order.append, "cancelled")
    heap.call_later(0.2, finished.set)
    cancelled.cancel()
    assert len(heap) == 4
    async with asyncio.timeout(5):
        await finished.wait()
    assert order == ["first", "second", "third"]
    assert len(heap) == 0


async def test_a_cancelled_callback_never_runs_and_a_failing_one_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heap = TimerHeap()
    ran: list[str] = []
    finished = asyncio.Event()

    def boom() -> None:
        raise RuntimeError("a callback failed")

    second = heap.call_later(0.0105, ran.append, "second")  # due in the same run as its canceller
    heap.call_later(0.01, second.cancel)
    heap.call_later(0.01, boom)
    heap.call_later(0.03, finished.set)
    with caplog.at_level(logging.ERROR, logger="signoff.timers"):
        async with asyncio.timeout(5):
            await finished.wait()
    assert ran == []
    assert any(r.exc_info and "a callback failed" in str(r.exc_info[1]) for r in caplog.records)


async def test_cancelled_entries_are_dropped_once_they_are_most_of_the_heap() -> None:
    heap = TimerHeap()
    finished = asyncio.Event()
    timers = [heap.call_later(3600, finished.set) for _ in range(1000)]
    for timer in timers[:900]:
        timer.cancel()
    heap.call_later(0.01, lambda: None)  # a run of the heap, which compacts it
    heap.call_later(0.02, finished.set)
    async with asyncio.timeout(5):
        await finished.wait()
    assert len(heap._heap) == 100  # the 100 still pending; nothing of the 900 is kept
    assert heap.cancelled == 0


async def test_later_uses_one_heap_per_loop() -> None:
    fired = asyncio.Event()
    timer = later(0.01, fired.set)
    assert timer.heap is later(3600, lambda: None).heap
    async with asyncio.timeout(5):
        await fired.wait()


def test_a_closed_loop_is_let_go_with_its_heap() -> None:
    """The heap is kept per loop, weakly: a gateway started and stopped on a thread leaks nothing."""
    loop = asyncio.new_event_loop()

    async def arm() -> None:
        later(3600, lambda: None)

    loop.run_until_complete(arm())
    loop.close()
    gone = weakref.ref(loop)
    del loop
    gc.collect()
    assert gone() is None


def test_nothing_runs_before_its_time_on_uvloop() -> None:
    """uvloop rounds timer delays down to milliseconds: an expiry must still never come early."""
    import uvloop

    async def main() -> tuple[list[float], list[float]]:
        loop = asyncio.get_running_loop()
        early_by: list[float] = []
        jobs_early_by: list[float] = []
        finished = asyncio.Event()
        timers = Timers(spawn)

        def check(when: float) -> None:
            early_by.append(when - loop.time())

        async def job(when: datetime) -> None:
            jobs_early_by.append((when - utcnow()).total_seconds())
            if len(jobs_early_by) == 20:
                finished.set()

        for i in range(20):
            delay = 0.0003 + i * 0.0071  # not whole milliseconds
            later(delay, check, loop.time() + delay)
            when = utcnow() + timedelta(seconds=delay)
            timers.at(f"job{i}", when, job, when)
        async with asyncio.timeout(5):
            await finished.wait()
        return early_by, jobs_early_by

    early_by, jobs_early_by = uvloop.run(main())
    assert len(early_by) == 20 and max(early_by) <= 0
    assert max(jobs_early_by) <= 0
