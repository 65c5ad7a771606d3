"""The rate-limit stage: count the call against its sliding windows; a failed call gives its slot back."""

from __future__ import annotations

import logging
import math
from typing import Any

from proxy.calls import ToolCall
from proxy.ratelimit import RateLimiter, check_limits, release_limits
from proxy.results import Refused, refusal
from proxy.stages import Next

log = logging.getLogger("signoff.pipeline")


class RateLimits:
    """Refuses a call over any of its rate limits, with the time after which a retry will work."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def __call__(self, call: ToolCall, next: Next) -> dict[str, Any]:
        limits = call.verdict.decision.rate_limits if call.verdict.enforced else ()
        if not limits:
            return await next(call)
        try:
            over = await check_limits(self.limiter, limits, call.identity, call.session_id)
        except Exception as e:  # the shared counters live in the database: fail closed
            log.error("rate-limit store unavailable: %s", e)
            raise Refused(
                refusal(
                    "store_unavailable",
                    "This call is rate-limited and the gateway cannot reach "
                    "its rate-limit store right now, so it did not run. Try again shortly.",
                    has_output_schema=call.has_output_schema,
                ),
                "store_unavailable",
            ) from None
        if over is not None:
            limit, retry_after = over
            call.record.decision = "rate_limited"
            call.record.rule = limit.rule or call.record.rule
            retry = math.ceil(retry_after * 10) / 10  # rounded up: retrying at this time works
            text = limit.reason or f"Rate limit reached: at most {limit.max} calls per {_span(limit.window)}"
            raise Refused(
                refusal(
                    "rate_limited",
                    f"{text}. Retry in {retry:g}s.",
                    has_output_schema=call.has_output_schema,
                    retryAfterSeconds=retry,
                    rule=limit.rule,
                ),
                "rate_limited",
            )
        try:
            result = await next(call)
        except Refused:
            raise  # refused later (a human said no): it counted as an attempt, as it always has
        except BaseException:
            await release_limits(self.limiter, limits, call.identity, call.session_id)
            raise
        if result.get("isError"):
            await release_limits(self.limiter, limits, call.identity, call.session_id)
        return result


def _span(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return unit if n == 1 else f"{n} {unit}s"
    return f"{seconds:g} seconds"
