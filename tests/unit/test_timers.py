"""Timed work by key (a request's expiry, its escalation): runs once, at its time, unless replaced."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from proxy.records import utcnow
from proxy.timers import Timers


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
    timers, ran = Timers(), Ran()
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
    timers, ran = Timers(), Ran()
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
    timers, ran = Timers(), Ran()
    timers.at("a", utcnow(), ran.job, "a")
    timers.stop()
    timers.at("b", utcnow(), ran.job, "b")
    assert not timers.pending("a") and not timers.pending("b")
    await asyncio.sleep(0)  # one loop turn: a job due now would have started
    await asyncio.sleep(0)
    assert ran.calls == []


async def test_a_failing_job_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    timers, ran = Timers(), Ran()

    async def fails() -> None:
        raise RuntimeError("the store is down")

    with caplog.at_level(logging.ERROR, logger="signoff.timers"):
        timers.at("bad", utcnow(), fails)
        timers.at("good", utcnow() + timedelta(seconds=0.1), ran.job, "good")
        await ran.next()
    assert ran.calls == ["good"]
    assert any(r.exc_info and "the store is down" in str(r.exc_info[1]) for r in caplog.records)
