"""The approval stage: a call the policy holds runs only once people approved it, with those arguments.

`obtain(call)` is the whole of it: a `hold` request waits (reporting progress) for the decision; a
`pending` request answers at once and the same call made again after approval runs exactly once.
Either way the call comes back approved, or ends here with a refusal the agent can read.

Before asking, a live grant is looked up in the database (each call, so a revocation or expiry stops
the next call on every replica): a call it covers runs without a request. An approval with edited
arguments runs with exactly those, and the agent's result says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from proxy import edits, grants
from proxy.approvals import ApprovalUnavailable, Broker, Outcome, arguments_hash
from proxy.calls import ToolCall
from proxy.identity import Identity
from proxy.policies import PolicySet
from proxy.policy_spec import Decision
from proxy.records import APPROVED, DENIED, EXECUTED, EXPIRED, PENDING, WITHDRAWN, Approval, Grant, utcnow
from proxy.results import META_KEY, Refused, refusal
from proxy.risk import call_risk, explain
from proxy.stages import Next

log = logging.getLogger("signoff.pipeline")


class ApprovalStage:
    """Obtains the human decision a `require_approval` verdict asks for, then reports how the call ended."""

    def __init__(self, broker: Broker | None, policies: PolicySet) -> None:
        self.broker = broker
        self.policies = policies
        if broker is not None:
            # Whichever replica an approver edits a request on checks the edit against its policy.
            broker.edit_verdict = self.edit_verdict

    async def __call__(self, call: ToolCall, next: Next) -> dict[str, Any]:
        verdict = call.verdict
        if not verdict.enforced or verdict.decision.action != "require_approval":
            return await next(call)
        try:
            grant = await self._live_grant(call)
            approval = await self.obtain(call) if grant is None else None
        except (Refused, asyncio.CancelledError):
            raise
        except Exception as e:  # the approval store cannot be reached: fail closed
            log.error("approval store unavailable: %s", e)
            raise Refused(
                refusal(
                    "approval_unavailable",
                    "This call needs a human approval, but the gateway "
                    "cannot reach its approval store right now; it did not run.",
                    has_output_schema=call.has_output_schema,
                ),
                "approval_unavailable",
            ) from None
        if grant is not None:
            return await self._under_grant(call, grant, next)
        assert self.broker is not None and approval is not None
        try:
            result = await next(call)
        except BaseException as e:
            self.broker.report_outcome(approval, "upstream_error", str(e) or type(e).__name__)
            raise
        self.broker.report_outcome(
            approval, "tool_error" if result.get("isError") else "ok", _first_text(result)
        )
        if call.record.edited is not None:
            result = _told_of_edit(result, approval.id, call.record.edited)
        return result

    # -- grants ------------------------------------------------------------------------------

    async def _live_grant(self, call: ToolCall) -> Grant | None:
        """The live grant covering this call, if its rule offers grants (one indexed read)."""
        decision = call.verdict.decision
        spec = decision.approval.grant if decision.approval else None
        if spec is None or self.broker is None:
            return None
        scope = grants.scope_of(call.arguments, spec.same)
        grant = await self.broker.store.live_grant(
            call.identity.name, call.public_name, decision.rule, scope.hash, utcnow(), spec.max
        )
        if grant is not None and decision.approval is not None and decision.approval.mode == "pending":
            # Pending mode's call-again of an approved request runs under that approval (once, and
            # with the arguments as edited, if they were), not under the grant it also created.
            again = await self.broker.lookup_pending_mode(call)
            if again is not None and again.status == APPROVED:
                return None
        return grant

    async def _under_grant(self, call: ToolCall, grant: Grant, next: Next) -> dict[str, Any]:
        """Run a call a grant covers: no request, audited with the grant and who gave it."""
        call.record.grant_id = grant.id
        call.record.approvers = grant.created_by
        return await next(call)

    # -- edits -------------------------------------------------------------------------------

    def edit_verdict(self, approval: Approval, arguments: dict[str, Any]) -> tuple[Decision, bool] | None:
        """The policy's decision for the request's call with `arguments` instead (None: unknown tool)."""
        resolved = self.policies.names.resolve(approval.tool)
        if resolved is None or resolved[0] != approval.upstream:
            return None
        identity = Identity(approval.identity, frozenset(approval.identity_groups or ()))
        verdict = self.policies.decide(identity, approval.upstream, resolved[1], arguments)
        return verdict.decision, verdict.enforced

    def _apply_edit(self, call: ToolCall, approval: Approval) -> None:
        """An approver edited the arguments: the call runs with exactly those (checked byte for byte)."""
        edited = approval.edited_arguments
        if edited is None:
            return
        if arguments_hash(edited) != approval.edited_hash:
            raise Refused(
                refusal(
                    "denied",
                    "The approved, edited arguments do not match their recorded hash; the call did not run.",
                    has_output_schema=call.has_output_schema,
                    approvalId=approval.id,
                ),
                "denied",
            )
        changed = edits.changed_paths(call.arguments, edited)
        call.record.edited = {"from": approval.args_hash, "to": approval.edited_hash, "changed": changed}
        call.record.reason = (
            f"arguments edited by {approval.decided_by}: sha256 {approval.args_hash} → "
            f"{approval.edited_hash} (changed: {', '.join(changed) or '-'})"
        )
        call.arguments = edited

    async def obtain(self, call: ToolCall) -> Approval:
        """The approval this call runs under; raises Refused when there is none (yet)."""
        if self.broker is None:
            raise Refused(
                refusal(
                    "approval_unavailable",
                    "This call needs a human approval, but no approval channel is configured; "
                    "it did not run.",
                    has_output_schema=call.has_output_schema,
                ),
                "approval_unavailable",
            )
        info = call.tool_info or {}
        # The class of this very call: `pod-action` is a write, `pod-action {action: terminate}` is not.
        risk = call_risk(
            explain(call.tool, info.get("description"), info.get("annotations"), info.get("inputSchema")),
            call.arguments,
        )
        decision = call.verdict.decision
        mode = decision.approval.mode if decision.approval else "hold"
        if mode == "pending":
            approval = await self._pending_mode(call, risk)
        else:
            approval = await self._request(call, risk)
            call.record.approval_id = approval.id
            outcome = await self.broker.wait(approval, _reporter(call))
            approval = outcome.approval
            if outcome.status != EXECUTED:  # EXECUTED: approved here and claimed for us already
                _refuse_unless_approved(call, outcome)
                if not await self.broker.claim(approval):
                    raise Refused(_closed_result(call, WITHDRAWN, approval, None), WITHDRAWN)
        call.record.approval_id = approval.id
        call.record.approvers = approval.decided_by
        self._apply_edit(call, approval)
        self._recheck_policy(call, approval)
        return approval

    async def _request(self, call: ToolCall, risk: str) -> Approval:
        assert self.broker is not None
        verdict = call.verdict
        try:
            return await self.broker.request(call, verdict.decision, risk, verdict.revision)
        except ApprovalUnavailable as e:
            raise Refused(
                refusal(
                    "approval_unavailable",
                    f"This call needs a human approval, but the request could not be delivered ({e}); "
                    "it did not run.",
                    has_output_schema=call.has_output_schema,
                ),
                "approval_unavailable",
            ) from None

    async def _pending_mode(self, call: ToolCall, risk: str) -> Approval:
        """Answer at once; the same call made again after approval runs exactly once."""
        assert self.broker is not None
        schema = call.has_output_schema
        existing = await self.broker.lookup_pending_mode(call)
        if existing is not None:
            call.record.approval_id = existing.id
            usable = existing.status == APPROVED and _still_usable(existing, call.verdict.decision)
            if usable and await self.broker.claim(existing):
                return existing
            if existing.status == PENDING:
                raise Refused(_pending_result(existing, schema, again=True), "approval_pending")
            if existing.status in (DENIED, EXPIRED) and not existing.reported:
                await self.broker.mark_reported(existing)
                _refuse_unless_approved(call, Outcome(existing.status, existing, existing.decision_reason))
        approval = await self._request(call, risk)
        call.record.approval_id = approval.id
        raise Refused(_pending_result(approval, schema, again=False), "approval_pending")

    def _recheck_policy(self, call: ToolCall, approval: Approval) -> None:
        """The policy changed while the call waited: it runs only if the new policy still lets it."""
        if approval.policy_revision == self.policies.revision(call.upstream):
            return
        now = self.policies.decide(call.identity, call.upstream, call.tool, call.arguments)
        if now.decision.action in ("allow", "require_approval") or not now.enforced:
            return
        call.record.rule = now.decision.rule
        text = now.decision.reason or f"rule {now.decision.rule}"
        raise Refused(
            refusal(
                "denied",
                f"Approved, but the policy changed while the call waited and now refuses it: {text}. "
                "It did not run.",
                has_output_schema=call.has_output_schema,
                rule=now.decision.rule,
                approvalId=approval.id,
            ),
            "denied",
        )


def _refuse_unless_approved(call: ToolCall, outcome: Outcome) -> None:
    if outcome.status == APPROVED:
        return
    call.record.approvers = outcome.approval.decided_by
    call.record.reason = outcome.reason
    raise Refused(_closed_result(call, outcome.status, outcome.approval, outcome.reason), outcome.status)


def _reporter(call: ToolCall) -> Callable[[float, str], Awaitable[None]] | None:
    if call.progress is None:
        return None
    progress = call.progress

    async def report(waited: float, message: str) -> None:
        await progress(round(waited, 1), None, message)

    return report


def _closed_result(call: ToolCall, status: str, approval: Approval, reason: str | None) -> dict[str, Any]:
    by = approval.decided_by
    texts = {
        DENIED: f"Denied by {by}" + (f": {reason}" if reason else "") + ". The call did not run.",
        EXPIRED: "Nobody approved this call before the request expired, so it was denied. It did not run.",
        WITHDRAWN: f"The approval request was withdrawn ({reason or 'cancelled'}). It did not run.",
    }
    reason_code = {DENIED: "denied", EXPIRED: "expired", WITHDRAWN: "withdrawn"}.get(status, "denied")
    return refusal(
        reason_code,
        texts.get(status, f"The call was not approved ({status})."),
        has_output_schema=call.has_output_schema,
        approvalId=approval.id,
        decidedBy=by,
        humanReason=reason,
    )


def _pending_result(approval: Approval, has_output_schema: bool, again: bool) -> dict[str, Any]:
    expires = approval.expires_at.strftime("%H:%M:%S UTC")
    head = "Still waiting for a human to approve this call" if again else "This call needs a human's approval"
    text = (
        f"{head} (approval {approval.id}, expires {expires}). It has not run. Call the same tool again "
        f"with exactly the same arguments after it is approved; it will then run once."
    )
    return refusal(
        "approval_pending",
        text,
        has_output_schema=has_output_schema,
        approvalId=approval.id,
        expiresAt=approval.expires_at.isoformat(),
    )


def _still_usable(approval: Approval, decision: Decision) -> bool:
    """An approved pending-mode request can be used for one approval timeout after the decision."""
    if approval.decided_at is None:
        return False
    timeout = decision.approval.timeout if decision.approval else 600.0
    return utcnow() <= approval.decided_at + timedelta(seconds=timeout)


def _told_of_edit(result: dict[str, Any], approval_id: str, edited: dict[str, Any]) -> dict[str, Any]:
    """The upstream's result, plus a line and `_meta` saying the call ran with edited arguments."""
    note = {"type": "text", "text": edits.agent_note(edited["changed"], edited["from"], edited["to"])}
    meta = dict(result.get("_meta") or {})
    meta[META_KEY] = {**(meta.get(META_KEY) or {}), "approvalId": approval_id, "edited": edited}
    return {**result, "content": [*(result.get("content") or []), note], "_meta": meta}


def _first_text(result: dict[str, Any]) -> str | None:
    for block in result.get("content") or []:
        if isinstance(block, dict) and block.get("type") == "text":
            return str(block.get("text"))[:2000]
    return None
