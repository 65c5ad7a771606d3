"""The limits stage: arguments must be plain JSON of a bounded size, or nothing runs."""

from __future__ import annotations

import math
from typing import Any

import orjson

from proxy.calls import ToolCall
from proxy.results import Refused, refusal
from proxy.stages import Next


class ArgumentLimits:
    """Refuses arguments over `max_bytes`, and values JSON cannot say exactly (NaN, huge integers)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    async def __call__(self, call: ToolCall, next: Next) -> dict[str, Any]:
        try:
            encoded = orjson.dumps(call.arguments)
        except TypeError:  # an integer beyond 64 bits, which orjson (and most upstreams) cannot carry
            encoded = b""
        problem = not_plain_json(call.arguments) if not encoded or b"null" in encoded else None
        if problem is not None:
            # Refused rather than passed on: NaN would reach the approver as null, and a huge integer
            # as a rounded float, so what ran would not be what they saw.
            raise Refused(
                refusal(
                    "invalid_arguments",
                    f"The arguments are not plain JSON: {problem}. Nothing ran.",
                    has_output_schema=call.has_output_schema,
                ),
                "invalid_arguments",
            )
        if len(encoded) > self.max_bytes:
            raise Refused(
                refusal(
                    "arguments_too_large",
                    f"The arguments are {len(encoded)} bytes; this gateway accepts at most {self.max_bytes}. "
                    "Nothing ran.",
                    has_output_schema=call.has_output_schema,
                    size=len(encoded),
                    limit=self.max_bytes,
                ),
                "arguments_too_large",
            )
        del encoded  # a held call waits in `next` for minutes: its encoded copy need not wait with it
        return await next(call)


def not_plain_json(value: Any, path: str = "arguments") -> str | None:
    """Where `value` holds something JSON cannot say exactly (NaN, ±Infinity, integers beyond 64 bits)."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{where} is {item!r} (JSON has no NaN or Infinity)"
        if isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item < 2**64:
            return f"{where} is an integer beyond 64 bits"
        if isinstance(item, dict):
            stack.extend((v, f"{where}.{k}") for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None
