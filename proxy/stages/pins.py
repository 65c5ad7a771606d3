"""The tool-change stage: a tool whose definition changed since it was pinned is not served silently."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from proxy.calls import ToolCall, UnknownTool
from proxy.pins import CHANGED_RULE, ToolPins
from proxy.policies import PolicySet
from proxy.policy_spec import Decision
from proxy.stages import Next

WHY = (
    "The upstream changed this tool's definition since signoff pinned it, and no admin has accepted "
    "the change yet (`signoff tools diff`)."
)


class ToolChanges:
    """Holds back a changed tool: hidden like an unknown tool, or every call needs approval meanwhile.

    Placed after the policy stage: a call the policy denies or hides stays so; shadow mode enforces
    nothing here either.
    """

    def __init__(self, pins: ToolPins, policies: PolicySet) -> None:
        self.pins = pins
        self.policies = policies

    async def __call__(self, call: ToolCall, next: Next) -> dict[str, Any]:
        verdict = call.verdict
        if (
            not call.known
            or not verdict.enforced
            or verdict.decision.action in ("deny", "hidden")
            or not self.pins.is_held(call.upstream, call.tool)
        ):
            return await next(call)
        if self.pins.hides(call.upstream, call.tool):
            raise UnknownTool(call.public_name)
        decision = verdict.decision
        if decision.action == "require_approval":
            held = replace(decision, reason=f"{decision.reason} {WHY}" if decision.reason else WHY)
        else:
            held = Decision(
                action="require_approval",
                rule=CHANGED_RULE,
                reason=WHY,
                approval=self.policies.approval_defaults(call.upstream),
                rate_limits=decision.rate_limits,
            )
        call.verdict = replace(verdict, decision=held)
        call.record.decision, call.record.rule, call.record.reason = held.action, held.rule, held.reason
        return await next(call)
