"""The per-session SSE event store: replay after a reconnect, bounded memory, ids that name their stream."""

from __future__ import annotations

from typing import Any

from mcp.server.streamable_http import EventMessage
from mcp_types import JSONRPCNotification, JSONRPCResponse

from proxy.edge.replay import SessionEvents, event_id, stream_of


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress(n: int) -> JSONRPCNotification:
    return JSONRPCNotification(
        jsonrpc="2.0", method="notifications/progress", params={"progressToken": "t", "progress": n}
    )


def answer(request_id: int) -> JSONRPCResponse:
    return JSONRPCResponse(jsonrpc="2.0", id=request_id, result={"content": []})


async def replay(store: SessionEvents, last_event_id: str) -> tuple[str | None, list[Any]]:
    sent: list[EventMessage] = []

    async def collect(event: EventMessage) -> None:
        sent.append(event)

    stream = await store.replay_events_after(last_event_id, collect)
    return stream, [e.message for e in sent]


async def test_a_reconnect_gets_what_it_missed_then_the_stream_goes_on() -> None:
    store = SessionEvents(linger=10)
    primed = await store.store_event("7", None)
    seen = await store.store_event("7", progress(1))
    await store.store_event("7", progress(2))
    await store.store_event("7", progress(3))
    assert await replay(store, seen) == ("7", [progress(2), progress(3)])
    assert await replay(store, primed) == ("7", [progress(1), progress(2), progress(3)])


async def test_a_finished_stream_replays_its_answer_and_ends() -> None:
    store = SessionEvents(linger=10)
    seen = await store.store_event("7", None)
    await store.store_event("7", progress(1))
    await store.store_event("7", answer(7))
    # None: nothing more will come, so the resumed response can end after the replay.
    assert await replay(store, seen) == (None, [progress(1), answer(7)])


async def test_streams_do_not_mix() -> None:
    store = SessionEvents(linger=10)
    seen = await store.store_event("1", None)
    await store.store_event("2", None)
    await store.store_event("2", progress(20))
    await store.store_event("1", progress(10))
    assert await replay(store, seen) == ("1", [progress(10)])


async def test_ids_not_ours_or_of_an_older_stream_replay_nothing() -> None:
    store = SessionEvents(linger=10)
    old = await store.store_event("5", None)
    await store.store_event("5", answer(5))
    await store.store_event("5", None)  # the id is used again: a new stream
    await store.store_event("5", progress(1))
    assert await replay(store, old) == (None, [])
    for bogus in ("", "abc", "x.1", "x.y.z", "x.1.!!!", event_id("nosuch", 1, "5")):
        assert await replay(store, bogus) == (None, []), bogus


async def test_a_stream_keeps_only_its_newest_events() -> None:
    store = SessionEvents(linger=10, max_events=3)
    primed = await store.store_event("9", None)
    for n in range(1, 6):
        await store.store_event("9", progress(n))
    # The oldest went; a client whose last event went with them gets everything still kept.
    assert await replay(store, primed) == ("9", [progress(3), progress(4), progress(5)])


async def test_finished_streams_are_forgotten_after_the_linger_and_unfinished_ones_kept() -> None:
    clock = Clock()
    store = SessionEvents(linger=10, clock=clock)
    done = await store.store_event("1", None)
    await store.store_event("1", answer(1))
    waiting = await store.store_event("2", None)
    clock.now += 9
    await store.store_event("3", None)
    assert store.streams_kept == 3
    assert (await replay(store, done))[1] == [answer(1)]
    clock.now += 2
    await store.store_event("3", progress(1))  # any write prunes
    assert store.streams_kept == 2
    assert await replay(store, done) == (None, [])
    assert await replay(store, waiting) == ("2", [])


async def test_an_empty_store_is_still_a_store() -> None:
    # The SDK enables resumability with `if event_store:`; an empty store must not read as "none".
    assert SessionEvents(linger=1)


def test_event_ids_name_their_stream_whatever_the_request_id() -> None:
    for stream in ("7", "_GET_stream", "a.b.c", "line\nbreak", "ünï", ""):
        eid = event_id("tok", 3, stream)
        assert "\n" not in eid and "\r" not in eid
        assert stream_of(eid) == stream
    assert stream_of("not-an-event-id") is None
