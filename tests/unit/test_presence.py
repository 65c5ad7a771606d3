"""Telling a client that left from one that is still (or again) listening for a request's answer."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.edge.replay import event_id
from proxy.presence import SCOPE_KEY, Presence, ResponseStream, WatchResponses

GRACE = 0.2


class Gone:
    """Records `on_gone` calls; `wait()` returns once one happened."""

    def __init__(self) -> None:
        self.calls = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.event.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.event.wait(), 5)


async def test_a_client_that_hangs_up_is_gone_after_the_grace() -> None:
    presence, gone, stream = Presence(GRACE), Gone(), ResponseStream()
    with presence.watching("s1", 7, "agent", stream, gone):
        loop = asyncio.get_running_loop()
        closed_at = loop.time()
        stream.close()
        assert gone.calls == 0  # not at once: it may come back
        await gone.wait()
        assert loop.time() - closed_at >= GRACE * 0.9
    assert gone.calls == 1


async def test_a_client_still_listening_is_never_gone() -> None:
    presence, gone = Presence(GRACE), Gone()
    with presence.watching("s1", 7, "agent", ResponseStream(), gone):
        await asyncio.sleep(GRACE * 3)
    assert gone.calls == 0


async def test_resuming_within_the_grace_keeps_the_request_and_a_later_hang_up_counts_again() -> None:
    presence, gone, first = Presence(GRACE), Gone(), ResponseStream()
    with presence.watching("s1", 7, "agent", first, gone):
        first.close()
        second = ResponseStream()
        assert presence.resume("s1", "7", "agent", second)
        await asyncio.sleep(GRACE * 3)
        assert gone.calls == 0
        second.close()
        await gone.wait()


async def test_only_the_same_identity_and_session_resume_a_request() -> None:
    presence, gone, stream = Presence(GRACE), Gone(), ResponseStream()
    with presence.watching("s1", 7, "agent", stream, gone):
        stream.close()
        assert not presence.resume("s1", "7", "mallory", ResponseStream())
        assert not presence.resume("s2", "7", "agent", ResponseStream())
        assert not presence.resume("s1", "8", "agent", ResponseStream())
        await gone.wait()
    assert not presence.resume("s1", "7", "agent", ResponseStream())  # no longer watched


async def test_an_answered_request_is_not_gone_when_its_stream_then_closes() -> None:
    presence, gone, stream = Presence(GRACE), Gone(), ResponseStream()
    with presence.watching("s1", 7, "agent", stream, gone):
        pass
    stream.close()
    await asyncio.sleep(GRACE * 3)
    assert gone.calls == 0


async def test_a_request_whose_stream_closed_before_it_was_watched_is_timed_from_then() -> None:
    presence, gone, stream = Presence(GRACE), Gone(), ResponseStream()
    stream.close()
    with presence.watching("s1", 7, "agent", stream, gone):
        await gone.wait()


# -- the ASGI middleware, with a stand-in app and server -------------------------------------------


class Identity:
    name = "agent"


def scope(method: str, headers: dict[bytes, bytes] | None = None) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "headers": list((headers or {}).items()),
        "signoff.identity": Identity(),
    }


async def test_the_middleware_closes_a_response_when_the_client_disconnects() -> None:
    """An SSE response listens for `http.disconnect` itself; the middleware sees it pass."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    streams: list[ResponseStream] = []
    hung_up = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        streams.append(scope[SCOPE_KEY])
        assert (await receive())["type"] == "http.request"
        assert (await receive())["type"] == "http.disconnect"  # what sse-starlette does
        assert streams[0].closed
        hung_up.set()

    await inbox.put({"type": "http.request", "body": b"{}", "more_body": False})
    await inbox.put({"type": "http.disconnect"})
    await WatchResponses(app, Presence(GRACE))(scope("POST"), inbox.get, None)
    assert hung_up.is_set() and streams[0].closed


async def test_in_json_mode_the_middleware_listens_for_the_hang_up_itself() -> None:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    closed = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # the body; then it only waits for its answer, as a JSON response does
        scope[SCOPE_KEY].when_closed(closed.set)
        await inbox.put({"type": "http.disconnect"})
        await asyncio.wait_for(closed.wait(), 5)

    await inbox.put({"type": "http.request", "body": b"{}", "more_body": False})
    await WatchResponses(app, Presence(GRACE), json_response=True)(scope("POST"), inbox.get, None)
    assert closed.is_set()


async def test_a_get_with_last_event_id_resumes_the_request_it_names() -> None:
    presence, gone, original = Presence(GRACE), Gone(), ResponseStream()
    with presence.watching("s1", 7, "agent", original, gone):
        original.close()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await asyncio.sleep(GRACE * 3)  # the resumed stream stays open past the grace

        headers = {b"mcp-session-id": b"s1", b"last-event-id": event_id("tok", 2, "7").encode()}
        await WatchResponses(app, presence)(scope("GET", headers), None, None)
        assert gone.calls == 0
        await gone.wait()  # the resumed response ended too: the grace starts again
