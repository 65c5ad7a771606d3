"""The path of one tool call: decide, wait for a human if needed, forward, record.

Each stage is one small object with one job; this module only strings them together.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.shared.exceptions import MCPError

from proxy.calls import ToolCall
from proxy.metrics import Metrics
from proxy.results import refusal
from proxy.upstreams import UpstreamError

log = logging.getLogger("signoff.pipeline")

Forward = Callable[[ToolCall], Awaitable[dict[str, Any]]]


class Pipeline:
    """identify → decide → (wait for approval) → forward → audit, for every `tools/call`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, call: ToolCall, forward: Forward) -> dict[str, Any]:
        decision, outcome = "allow", "ok"
        try:
            result = await forward(call)
            if result.get("isError"):
                outcome = "tool_error"
            return result
        except UpstreamError as e:
            outcome = e.reason
            return refusal(
                e.reason,
                f"The call did not run: {e}.",
                has_output_schema=call.has_output_schema,
                upstream=call.upstream,
            )
        except MCPError:
            outcome = "upstream_error"
            raise
        finally:
            self.metrics.observe_call(call.public_name, decision, outcome, time.monotonic() - call.started)
