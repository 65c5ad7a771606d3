"""The policy stage: decide the call once; hidden and unknown tools vanish alike; deny with the reason."""

from __future__ import annotations

from typing import Any

from proxy.calls import ToolCall, UnknownTool
from proxy.policies import PolicySet, Verdict
from proxy.policy_spec import Decision
from proxy.results import Refused, refusal
from proxy.stages import Next

UNKNOWN = Verdict(Decision(action="hidden", rule="(unknown tool)"), revision="", enforced=True)


class PolicyStage:
    """Evaluates the policy in force for the call's upstream; later stages read `call.verdict`."""

    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies

    async def __call__(self, call: ToolCall, next: Next) -> dict[str, Any]:
        annotations = (call.tool_info or {}).get("annotations")
        verdict = (
            self.policies.decide(call.identity, call.upstream, call.tool, call.arguments, annotations)
            if call.known
            else UNKNOWN
        )
        call.verdict = verdict
        decision, record = verdict.decision, call.record
        record.decision, record.rule, record.reason = decision.action, decision.rule, decision.reason
        record.enforced, record.revision = verdict.enforced, verdict.revision
        if not verdict.enforced:
            return await next(call)  # shadow mode: recorded, not enforced
        if decision.action == "hidden":
            # Hidden and unknown tools get the same answer, so a hidden tool's existence does not leak.
            raise UnknownTool(call.public_name)
        if decision.action == "deny":
            text = decision.reason or f"The policy does not allow {call.public_name} (rule {decision.rule})."
            raise Refused(
                refusal(
                    "denied",
                    f"Denied by policy: {text}",
                    has_output_schema=call.has_output_schema,
                    rule=decision.rule,
                ),
                "denied",
            )
        return await next(call)
