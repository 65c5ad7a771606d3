"""Rate limits shared by every replica, counted in the database (PostgreSQL)."""

from __future__ import annotations

import time

from proxy.store import Store


class DatabaseRateLimiter:
    """The `RateLimiter` protocol over the `rate_event` table, so a limit of N holds across replicas."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def acquire(self, key: str, max: int, window: float, now: float | None = None) -> float | None:
        # Wall-clock time: replicas on different machines must agree on it (keep their clocks in sync).
        return await self.store.rate_acquire(key, max, window, time.time() if now is None else now)

    async def release(self, key: str) -> None:
        await self.store.rate_release(key)


__all__ = ["DatabaseRateLimiter"]
