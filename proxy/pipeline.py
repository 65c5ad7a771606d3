"""The path of one tool call: a short chain of stages, then the upstream.

    audit → policy → (tool changes) → argument limits → rate limits → approval → forward

(With traces exported, `proxy.stages.tracing` wraps the chain in spans.)

Each stage (`proxy.stages.*`) owns one concern and sees the call on its way in and the result on
its way out; this module only puts them in order. The call carries how to forward itself
(`ToolCall.forward`, set by the front that received it).
"""

from __future__ import annotations

from typing import Any

from proxy import tracing
from proxy.approvals import Broker
from proxy.audit import AuditLog
from proxy.calls import ToolCall
from proxy.metrics import Metrics
from proxy.pins import ToolPins
from proxy.policies import PolicySet
from proxy.ratelimit import RateLimiter
from proxy.stages import Next, Stage, chain
from proxy.stages.approval import ApprovalStage
from proxy.stages.audit import Audited
from proxy.stages.limits import ArgumentLimits
from proxy.stages.pins import ToolChanges
from proxy.stages.policy import PolicyStage
from proxy.stages.ratelimit import RateLimits
from proxy.stages.tracing import traced


async def _forward(call: ToolCall) -> dict[str, Any]:
    assert call.forward is not None, "the front that made the call says how to forward it"
    return await call.forward(call)


class Pipeline:
    """Runs every `tools/call` through the stages; `await pipeline(call)` is the call's result."""

    def __init__(
        self,
        policies: PolicySet,
        limiter: RateLimiter,
        broker: Broker | None,
        audit: AuditLog | None,
        metrics: Metrics,
        *,
        replica: str = "",
        max_argument_bytes: int = 4 * 1024 * 1024,
        audit_fail_closed: bool = False,
        pins: ToolPins | None = None,
    ) -> None:
        self.stages: list[Stage] = [
            Audited(audit, metrics, replica, audit_fail_closed),
            PolicyStage(policies),
            ArgumentLimits(max_argument_bytes),
            RateLimits(limiter),
            ApprovalStage(broker, policies),
        ]
        if pins is not None:  # right after the policy: a changed tool is hidden or needs approval
            self.stages.insert(2, ToolChanges(pins, policies))
        last: Next = _forward
        if tracing.enabled():  # spans only when traces are exported: otherwise not even a stage
            self.stages, last = traced(self.stages, last)
        self._run: Next = chain(self.stages, last)

    async def __call__(self, call: ToolCall) -> dict[str, Any]:
        return await self._run(call)
