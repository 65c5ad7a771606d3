"""Sliding-window rate limits: the limiter interface, an in-memory limiter, and the per-call helpers.

A limit allows ``max`` calls in any ``window`` seconds. ``acquire`` both checks and counts, so a call
that passes has already taken its slot; if the upstream then fails, ``release`` gives the slot back
(PolicyLayer does the same: a failed call consumes no quota). A database-backed limiter shared by
several replicas implements the same protocol.
"""

from __future__ import annotations

import builtins
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from proxy.identity import Identity
from proxy.policy_spec import RateLimit

_MIN_RETRY = 0.001  # retry_after is always > 0, even when float rounding says the slot is free now


class RateLimiter(Protocol):
    async def acquire(self, key: str, max: int, window: float, now: float | None = None) -> float | None:
        """Take a slot: None when allowed (and counted), else the seconds until a slot frees."""
        ...

    async def release(self, key: str) -> None:
        """Give back the most recent slot taken under ``key``."""
        ...


class MemoryRateLimiter:
    """One deque of call times per key; expired times are dropped, idle keys swept now and then."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stamps: dict[str, deque[float]] = {}
        self._windows: dict[str, float] = {}
        self._sweep_at = 1024

    async def acquire(self, key: str, max: int, window: float, now: float | None = None) -> float | None:
        """Take a slot: None when allowed (and counted), else the seconds until a slot frees."""
        now = self._clock() if now is None else now
        stamps = self._stamps.get(key)
        if stamps is None:
            stamps = self._stamps[key] = deque()
            self._maybe_sweep(now)
        self._windows[key] = window
        cutoff = now - window
        while stamps and stamps[0] <= cutoff:
            stamps.popleft()
        if max < 1:
            return window  # a limit of zero never admits a call
        if len(stamps) >= max:
            # The call fits once the oldest of the last `max` stamps leaves the window.
            return builtins.max(stamps[-max] + window - now, _MIN_RETRY)  # `max` is the parameter here
        stamps.append(now)
        return None

    async def release(self, key: str) -> None:
        """Give back the most recent slot taken under ``key``."""
        stamps = self._stamps.get(key)
        if stamps:
            stamps.pop()

    def _maybe_sweep(self, now: float) -> None:
        # Sweeping when the key count doubles keeps memory bounded at O(1) amortised cost per call.
        if len(self._stamps) < self._sweep_at:
            return
        for key in list(self._stamps):
            stamps = self._stamps[key]
            if not stamps or stamps[-1] <= now - self._windows.get(key, 0.0):
                del self._stamps[key]
                self._windows.pop(key, None)
        self._sweep_at = max(1024, 2 * len(self._stamps))


def limit_key(limit: RateLimit, identity: Identity, session_id: str | None) -> str:
    """The counter a call is charged to: the limit's key plus the identity, the session, or nothing."""
    if limit.per == "global":
        return f"{limit.key}|global"
    if limit.per == "session" and session_id:
        return f"{limit.key}|session={session_id}"
    # per identity, and per session for a front without sessions (stdio serves one identity)
    return f"{limit.key}|identity={identity.name}"


async def check_limits(
    limiter: RateLimiter,
    limits: Sequence[RateLimit],
    identity: Identity,
    session_id: str | None,
    now: float | None = None,
) -> tuple[RateLimit, float] | None:
    """Acquire every limit in order; on the first refusal give back the ones taken and say which."""
    taken: list[str] = []
    for limit in limits:
        key = limit_key(limit, identity, session_id)
        retry_after = await limiter.acquire(key, limit.max, limit.window, now)
        if retry_after is not None:
            for acquired in reversed(taken):
                await limiter.release(acquired)
            return limit, retry_after
        taken.append(key)
    return None


async def release_limits(
    limiter: RateLimiter, limits: Sequence[RateLimit], identity: Identity, session_id: str | None
) -> None:
    """Give back the slots a call took (its upstream failed, so it should not count)."""
    for limit in reversed(limits):
        await limiter.release(limit_key(limit, identity, session_id))
