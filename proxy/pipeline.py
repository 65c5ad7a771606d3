"""The path of one tool call: decide → (rate limit) → wait for a human if needed → forward → audit.

Each stage is one object with one job (`PolicySet`, `RateLimiter`, `Broker`, the forwarder, `AuditLog`);
this module only strings them together and turns every way a call can end into one audit record.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import orjson
from mcp.shared.exceptions import MCPError

from proxy.approvals import ApprovalUnavailable, Broker, Outcome
from proxy.audit import AuditLog
from proxy.calls import ToolCall, UnknownTool
from proxy.metrics import Metrics
from proxy.policies import PolicySet, Verdict
from proxy.policy import Decision
from proxy.ratelimit import RateLimiter, check_limits, release_limits
from proxy.results import refusal
from proxy.risk import call_risk, explain
from proxy.store import APPROVED, DENIED, EXECUTED, EXPIRED, PENDING, WITHDRAWN, Approval, utcnow
from proxy.upstreams import UpstreamError

log = logging.getLogger("signoff.pipeline")

Forward = Callable[[ToolCall], Awaitable[dict[str, Any]]]


class Refused(Exception):
    """The call ends here with this result; nothing reaches the upstream."""

    def __init__(self, result: dict[str, Any], outcome: str) -> None:
        self.result = result
        self.outcome = outcome


class Pipeline:
    """Runs every `tools/call` through the stages and audits how it ended."""

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
    ) -> None:
        self.policies = policies
        self.limiter = limiter
        self.broker = broker
        self.audit = audit
        self.metrics = metrics
        self.replica = replica
        self.max_argument_bytes = max_argument_bytes
        self.audit_fail_closed = audit_fail_closed

    async def __call__(self, call: ToolCall, forward: Forward) -> dict[str, Any]:
        if call.known:
            verdict = self.policies.decide(call.identity, call.upstream, call.tool, call.arguments)
        else:
            verdict = _UNKNOWN
        record = _Record(call, verdict)
        try:
            if verdict.decision.action == "hidden" and verdict.enforced:
                # Hidden and unknown tools get the same answer, so a hidden tool's existence does not leak.
                record.outcome = "unknown_tool"
                raise UnknownTool(call.public_name)
            result = await self._run(call, verdict, record, forward)
            record.outcome = "tool_error" if result.get("isError") else "ok"
            return result
        except Refused as r:
            record.outcome = r.outcome
            return r.result
        except UpstreamError as e:
            record.outcome = e.reason
            return refusal(
                e.reason,
                f"The call did not complete: {e}.",
                has_output_schema=call.has_output_schema,
                upstream=call.upstream,
            )
        except MCPError as e:
            record.outcome = "upstream_error"
            record.reason = e.message
            raise
        except BaseException:
            record.outcome = record.outcome or "cancelled"
            raise
        finally:
            self._finish(record)

    async def _run(
        self, call: ToolCall, verdict: Verdict, record: _Record, forward: Forward
    ) -> dict[str, Any]:
        decision = verdict.decision
        self._check_size(call)
        if self.audit_fail_closed and self.audit is not None and not self.audit.healthy:
            raise Refused(
                refusal(
                    "approval_unavailable",
                    "The audit log cannot be written and this gateway "
                    "is configured to fail closed; the call did not run.",
                    has_output_schema=call.has_output_schema,
                ),
                "audit_unavailable",
            )
        if not verdict.enforced:
            return await forward(call)  # shadow mode: recorded, not enforced
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
        limits = decision.rate_limits
        if limits:
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
                record.decision = "rate_limited"
                record.rule = limit.rule or record.rule
                retry = math.ceil(retry_after * 10) / 10  # rounded up: retrying at this time works
                text = (
                    limit.reason or f"Rate limit reached: at most {limit.max} calls per {_span(limit.window)}"
                )
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
        approval = None
        if decision.action == "require_approval":
            try:
                approval = await self._approve(call, verdict, record)
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
        try:
            result = await forward(call)
        except BaseException as e:
            await release_limits(self.limiter, limits, call.identity, call.session_id)
            if approval is not None and self.broker is not None:
                self.broker.report_outcome(approval, "upstream_error", str(e) or type(e).__name__)
            raise
        if result.get("isError"):
            await release_limits(self.limiter, limits, call.identity, call.session_id)
        if approval is not None and self.broker is not None:
            self.broker.report_outcome(
                approval, "tool_error" if result.get("isError") else "ok", _first_text(result)
            )
        return result

    def _check_size(self, call: ToolCall) -> None:
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
        size = len(encoded)
        if size > self.max_argument_bytes:
            raise Refused(
                refusal(
                    "arguments_too_large",
                    f"The arguments are {size} bytes; this gateway accepts at most "
                    f"{self.max_argument_bytes}. Nothing ran.",
                    has_output_schema=call.has_output_schema,
                    size=size,
                    limit=self.max_argument_bytes,
                ),
                "arguments_too_large",
            )

    # -- approvals ---------------------------------------------------------------------------

    async def _approve(self, call: ToolCall, verdict: Verdict, record: _Record) -> Approval:
        """Wait for (or, in pending mode, look up) a human decision; return the approval to run under."""
        decision = verdict.decision
        schema = call.has_output_schema
        if self.broker is None:
            raise Refused(
                refusal(
                    "approval_unavailable",
                    "This call needs a human approval, but no approval "
                    "channel is configured; it did not run.",
                    has_output_schema=schema,
                ),
                "approval_unavailable",
            )
        info = call.tool_info or {}
        # The class of this very call: `pod-action` is a write, `pod-action {action: terminate}` is not.
        risk = call_risk(
            explain(call.tool, info.get("description"), info.get("annotations"), info.get("inputSchema")),
            call.arguments,
        )
        mode = decision.approval.mode if decision.approval else "hold"
        if mode == "pending":
            approval = await self._pending_mode(call, verdict, risk, record)
        else:
            approval = await self._request(call, verdict, risk)
            record.approval_id = approval.id
            outcome = await self.broker.wait(approval, _reporter(call))
            approval = outcome.approval
            if outcome.status != EXECUTED:  # EXECUTED: approved here and claimed for us already
                self._refuse_unless_approved(call, outcome, record)
                if not await self.broker.claim(approval):
                    raise Refused(_closed_result(call, WITHDRAWN, approval, None), WITHDRAWN)
        record.approval_id = approval.id
        record.approvers = approval.decided_by
        self._recheck_policy(call, verdict, approval, record)
        return approval

    async def _request(self, call: ToolCall, verdict: Verdict, risk: str) -> Approval:
        assert self.broker is not None
        try:
            return await self.broker.request(call, verdict.decision, risk, verdict.revision)
        except ApprovalUnavailable as e:
            raise Refused(
                refusal(
                    "approval_unavailable",
                    f"This call needs a human approval, but the request "
                    f"could not be delivered ({e}); it did not run.",
                    has_output_schema=call.has_output_schema,
                ),
                "approval_unavailable",
            ) from None

    async def _pending_mode(self, call: ToolCall, verdict: Verdict, risk: str, record: _Record) -> Approval:
        """Answer at once; the same call made again after approval runs exactly once."""
        assert self.broker is not None
        schema = call.has_output_schema
        existing = await self.broker.lookup_pending_mode(call)
        if existing is not None:
            record.approval_id = existing.id
            usable = existing.status == APPROVED and _still_usable(existing, verdict.decision)
            if usable and await self.broker.claim(existing):
                return existing
            if existing.status == PENDING:
                raise Refused(_pending_result(existing, schema, again=True), "approval_pending")
            if existing.status in (DENIED, EXPIRED) and not existing.reported:
                await self.broker.mark_reported(existing)
                self._refuse_unless_approved(
                    call, Outcome(existing.status, existing, existing.decision_reason), record
                )
        approval = await self._request(call, verdict, risk)
        record.approval_id = approval.id
        raise Refused(_pending_result(approval, schema, again=False), "approval_pending")

    def _refuse_unless_approved(self, call: ToolCall, outcome: Outcome, record: _Record) -> None:
        if outcome.status == APPROVED:
            return
        record.approvers = outcome.approval.decided_by
        record.reason = outcome.reason
        raise Refused(_closed_result(call, outcome.status, outcome.approval, outcome.reason), outcome.status)

    def _recheck_policy(self, call: ToolCall, verdict: Verdict, approval: Approval, record: _Record) -> None:
        """The policy changed while the call waited: it runs only if the new policy still lets it."""
        if approval.policy_revision == self.policies.revision(call.upstream):
            return
        now = self.policies.decide(call.identity, call.upstream, call.tool, call.arguments)
        if now.decision.action in ("allow", "require_approval") or not now.enforced:
            return
        record.rule = now.decision.rule
        text = now.decision.reason or f"rule {now.decision.rule}"
        raise Refused(
            refusal(
                "denied",
                f"Approved, but the policy changed while the call waited and now "
                f"refuses it: {text}. It did not run.",
                has_output_schema=call.has_output_schema,
                rule=now.decision.rule,
                approvalId=approval.id,
            ),
            "denied",
        )

    # -- audit -------------------------------------------------------------------------------

    def _finish(self, record: _Record) -> None:
        call = record.call
        elapsed = time.monotonic() - call.started
        # Names nobody may know of share one label: unknown names are unbounded, and hidden ones are secret.
        label = call.public_name if record.outcome != "unknown_tool" else "(unknown)"
        self.metrics.observe_call(label, record.decision, record.outcome or "unknown", elapsed)
        # Never the arguments or the result here: -v output ends up in clients' log files.
        log.debug(
            "call %s: %s by %s → %s, %s (%.1f ms)",
            call.id[:12],
            label,
            call.identity.name,
            record.decision,
            record.outcome or "unknown",
            elapsed * 1000,
        )
        if self.audit is None:
            return
        self.audit.record(
            call_id=call.id,
            identity=call.identity.name,
            session_id=call.session_id,
            client_name=call.client_name,
            upstream=call.upstream,
            tool=call.public_name,
            arguments=call.arguments,  # redacted by the audit writer, off the call path
            decision=record.decision,
            enforced=record.verdict.enforced,
            rule=record.rule,
            approval_id=record.approval_id,
            approvers=record.approvers,
            reason=record.reason,
            latency_ms=round(elapsed * 1000, 3),
            outcome=record.outcome or "unknown",
            replica=self.replica,
            policy_revision=record.verdict.revision,
        )


_UNKNOWN = Verdict(Decision(action="hidden", rule="(unknown tool)"), revision="", enforced=True)


class _Record:
    """What the audit record will say, filled in as the call goes."""

    __slots__ = ("approval_id", "approvers", "call", "decision", "outcome", "reason", "rule", "verdict")

    def __init__(self, call: ToolCall, verdict: Verdict) -> None:
        self.call = call
        self.verdict = verdict
        self.decision = verdict.decision.action
        self.rule: str | None = verdict.decision.rule
        self.reason: str | None = verdict.decision.reason
        self.outcome = ""
        self.approval_id: str | None = None
        self.approvers: str | None = None


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


def _first_text(result: dict[str, Any]) -> str | None:
    for block in result.get("content") or []:
        if isinstance(block, dict) and block.get("type") == "text":
            return str(block.get("text"))[:2000]
    return None


def _span(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return unit if n == 1 else f"{n} {unit}s"
    return f"{seconds:g} seconds"
