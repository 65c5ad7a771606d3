"""The stages a tool call passes through on its way to the upstream, one concern each.

Like mitmproxy's addons: each stage is an object with one job and an `async (call, next)` method
that may refuse the call (raise `Refused`), change what the call carries, wait (an approval), or
look at the result on the way back. `chain` composes them; the last link forwards to the upstream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from proxy.calls import ToolCall

Next = Callable[[ToolCall], Awaitable[dict[str, Any]]]


class Stage(Protocol):
    async def __call__(self, call: ToolCall, next: Next) -> dict[str, Any]:
        """Handle `call`, usually by passing it on with `await next(call)`."""
        ...


def chain(stages: Sequence[Stage], last: Next) -> Next:
    """The stages wrapped around `last`, the first one outermost."""
    handler = last
    for stage in reversed(stages):
        handler = _link(stage, handler)
    return handler


def _link(stage: Stage, next: Next) -> Next:
    # A plain function handing back the stage's coroutine: a coroutine wrapper here would add a
    # frame per stage to every call, and to every call held for approval while it waits.
    def run(call: ToolCall) -> Awaitable[dict[str, Any]]:
        return stage(call, next)

    return run
