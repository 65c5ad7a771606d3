"""A waiting call's own stream on the lean path: what it writes, keeps for a resume, and pings."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.edge import callstream
from proxy.edge.callstream import KEEP_EVENTS, PING, CallStream, CallStreams
from proxy.edge.replay import parse_event_id


class Wire:
    """The body chunks an ASGI `send` got."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.changed = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        self.chunks.append(message["body"])
        self.changed.set()

    async def wait_for(self, chunk: bytes) -> None:
        async with asyncio.timeout(5):
            while chunk not in self.chunks:
                self.changed.clear()
                await self.changed.wait()


def progress(n: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": "t", "progress": n},
    }


async def test_events_are_framed_as_the_sdk_frames_them_with_ids_a_resume_can_name() -> None:
    stream, wire = CallStream("s1", 7, "agent"), Wire()
    stream.carried_by(wire.send)
    await stream.event(None)  # priming
    await stream.event(progress(1))
    priming, first = wire.chunks
    assert priming.endswith(b"\r\ndata: \r\n\r\n") and priming.startswith(b"id: ")
    assert first.startswith(b"id: ") and b"\r\nevent: message\r\ndata: {" in first
    eid = first.split(b"\r\n", 1)[0][4:].decode()
    assert parse_event_id(eid) == (stream.token, 2, "7")  # the request id names the stream
    stream.finish()


async def test_a_resume_gets_what_came_after_its_last_event_and_only_the_last_few() -> None:
    stream = CallStream("s1", "r", "agent")  # nobody reading: events are only kept
    for n in range(KEEP_EVENTS + 5):
        await stream.event(progress(n))
    kept = stream.after(0)
    assert len(kept) == KEEP_EVENTS and kept[-1][0] == stream.seq
    assert [n for n, _ in stream.after(stream.seq - 2)] == [stream.seq - 1, stream.seq]


async def test_a_closed_response_stops_carrying_the_stream_and_a_new_one_takes_over() -> None:
    stream, old, new = CallStream("s1", 1, "agent"), Wire(), Wire()
    stream.carried_by(old.send)
    stream.detach(new.send)  # not the one carrying it: nothing changes
    await stream.event(progress(1))
    stream.detach(old.send)
    await stream.event(progress(2))
    stream.carried_by(new.send)
    await stream.event(progress(3))
    assert len(old.chunks) == 1 and len(new.chunks) == 1 and b'"progress":3' in new.chunks[0]
    stream.finish()


async def test_an_idle_stream_is_pinged_and_a_busy_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callstream, "PING_EVERY", 0.2)
    idle, busy, idle_wire, busy_wire = CallStream("s", 1, "a"), CallStream("s", 2, "a"), Wire(), Wire()
    idle.carried_by(idle_wire.send)
    busy.carried_by(busy_wire.send)

    async def keep_busy() -> None:
        for n in range(12):
            await busy.event(progress(n))
            await asyncio.sleep(0.05)

    await asyncio.gather(idle_wire.wait_for(PING), keep_busy())
    assert PING not in busy_wire.chunks
    idle.finish()
    busy.finish()


async def test_the_answer_wakes_a_resumed_response_and_a_session_end_cancels_its_calls() -> None:
    streams = CallStreams(linger=60)
    stream = streams.open("s1", 3, "agent")
    waiting = asyncio.create_task(stream.wait_finished())
    streams.answered(stream)
    await asyncio.wait_for(waiting, 5)
    assert streams.get("s1", "3") is stream  # kept for a client that missed the answer

    held = streams.open("s2", 4, "agent")
    held.task = asyncio.create_task(asyncio.sleep(60))
    streams.session_closed("s2")
    with pytest.raises(asyncio.CancelledError):
        await held.task
    assert held.cancel_requested and not held.cancelled_by_client
    assert streams.get("s2", "4") is None
