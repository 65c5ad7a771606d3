"""Sliding-window limits: the in-memory limiter, counter keys, and charging a call's limits."""

from __future__ import annotations

import pytest

from proxy.identity import Identity
from proxy.policy_spec import RateLimit
from proxy.ratelimit import MemoryRateLimiter, check_limits, limit_key, release_limits

ALICE = Identity("alice")
BOB = Identity("bob")


async def test_max_plus_one_is_refused_with_the_right_retry_after() -> None:
    limiter = MemoryRateLimiter()
    for t in (0.0, 1.0, 2.0):
        assert await limiter.acquire("k", 3, 10.0, now=t) is None
    assert await limiter.acquire("k", 3, 10.0, now=5.0) == pytest.approx(5.0)  # the t=0 call leaves at 10
    # a refused call takes no slot
    assert await limiter.acquire("k", 3, 10.0, now=9.5) == pytest.approx(0.5)


async def test_window_slides() -> None:
    limiter = MemoryRateLimiter()
    for t in (0.0, 1.0, 2.0):
        assert await limiter.acquire("k", 3, 10.0, now=t) is None
    assert await limiter.acquire("k", 3, 10.0, now=10.0) is None  # t=0 left the window
    assert await limiter.acquire("k", 3, 10.0, now=10.5) == pytest.approx(0.5)  # t=1 leaves at 11
    assert await limiter.acquire("k", 3, 10.0, now=11.0) is None
    # after a full quiet window everything is available again
    for _ in range(3):
        assert await limiter.acquire("k", 3, 10.0, now=100.0) is None


async def test_retry_after_is_always_positive() -> None:
    limiter = MemoryRateLimiter()
    assert await limiter.acquire("k", 1, 0.1, now=0.3) is None
    retry = await limiter.acquire("k", 1, 0.1, now=0.3 + 0.1 - 1e-12)
    assert retry is not None and retry > 0


async def test_lowering_max_on_a_busy_key_still_answers_correctly() -> None:
    limiter = MemoryRateLimiter()
    for t in range(5):
        assert await limiter.acquire("k", 5, 10.0, now=float(t)) is None
    # the policy was reloaded with max 2: the call fits when only one stamp is left (t=3 expires at 13)
    assert await limiter.acquire("k", 2, 10.0, now=5.0) == pytest.approx(8.0)


async def test_release_gives_back_the_most_recent_slot() -> None:
    limiter = MemoryRateLimiter()
    assert await limiter.acquire("k", 2, 10.0, now=0.0) is None
    assert await limiter.acquire("k", 2, 10.0, now=1.0) is None
    assert await limiter.acquire("k", 2, 10.0, now=2.0) is not None
    await limiter.release("k")
    assert await limiter.acquire("k", 2, 10.0, now=2.0) is None
    await limiter.release("never-used")  # harmless


async def test_default_clock_is_used_when_now_is_omitted() -> None:
    ticks = iter([100.0, 100.5, 101.0])
    limiter = MemoryRateLimiter(clock=lambda: next(ticks))
    assert await limiter.acquire("k", 1, 60.0) is None
    assert await limiter.acquire("k", 1, 60.0) == pytest.approx(59.5)


async def test_idle_keys_are_swept() -> None:
    limiter = MemoryRateLimiter()
    for i in range(5000):
        await limiter.acquire(f"session-{i}", 1, 1.0, now=float(i))
    # only keys whose last call is still inside its window survive a sweep
    assert len(limiter._stamps) < 2100


def test_limit_keys_per_identity_session_and_global() -> None:
    def limit(per: str) -> RateLimit:
        return RateLimit(max=1, window=1.0, per=per, key="starts")  # type: ignore[arg-type]

    assert limit_key(limit("identity"), ALICE, "s1") == "starts|identity=alice"
    assert limit_key(limit("session"), ALICE, "s1") == "starts|session=s1"
    assert limit_key(limit("session"), ALICE, None) == "starts|identity=alice"  # stdio: one session
    assert limit_key(limit("global"), ALICE, "s1") == limit_key(limit("global"), BOB, "s2") == "starts|global"


async def test_per_identity_session_and_global_counting() -> None:
    limiter = MemoryRateLimiter()
    per_identity = RateLimit(max=1, window=60.0, per="identity", key="a")
    per_session = RateLimit(max=1, window=60.0, per="session", key="b")
    shared = RateLimit(max=2, window=60.0, per="global", key="c")

    assert await check_limits(limiter, [per_identity], ALICE, "s1", now=0.0) is None
    assert await check_limits(limiter, [per_identity], ALICE, "s2", now=0.0) == (per_identity, 60.0)
    assert await check_limits(limiter, [per_identity], BOB, "s3", now=0.0) is None

    assert await check_limits(limiter, [per_session], ALICE, "s1", now=0.0) is None
    assert await check_limits(limiter, [per_session], ALICE, "s2", now=0.0) is None
    assert await check_limits(limiter, [per_session], BOB, "s1", now=1.0) == (per_session, 59.0)

    assert await check_limits(limiter, [shared], ALICE, "s1", now=0.0) is None
    assert await check_limits(limiter, [shared], BOB, "s2", now=0.0) is None
    assert await check_limits(limiter, [shared], Identity("carol"), "s3", now=30.0) == (shared, 30.0)


async def test_a_refusal_gives_back_the_slots_already_taken() -> None:
    limiter = MemoryRateLimiter()
    roomy = RateLimit(max=1, window=60.0, per="global", key="roomy")
    full = RateLimit(max=1, window=60.0, per="global", key="full")
    assert await check_limits(limiter, [full], ALICE, None, now=0.0) is None

    assert await check_limits(limiter, [roomy, full], ALICE, None, now=1.0) == (full, 59.0)
    # roomy was released, so it is still free
    assert await check_limits(limiter, [roomy], ALICE, None, now=1.0) is None


async def test_release_limits_after_an_upstream_failure() -> None:
    limiter = MemoryRateLimiter()
    limits = [RateLimit(max=1, window=60.0, per="identity", key="a"), RateLimit(1, 60.0, "global", "b")]
    assert await check_limits(limiter, limits, ALICE, None, now=0.0) is None
    await release_limits(limiter, limits, ALICE, None)
    assert await check_limits(limiter, limits, ALICE, None, now=0.0) is None
    assert await check_limits(limiter, [], ALICE, None) is None


async def test_zero_max_never_admits() -> None:
    assert await MemoryRateLimiter().acquire("k", 0, 5.0, now=0.0) == 5.0
