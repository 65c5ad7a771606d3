"""The outermost stage: however the call ends, it is counted, logged and audited exactly once."""

from __future__ import annotations

import logging
import time
from typing import Any

from proxy.audit import AuditLog
from proxy.calls import ToolCall, UnknownTool, UpstreamError, UpstreamErrorReply
from proxy.metrics import Metrics
from proxy.results import Refused, refusal
from proxy.stages import Next

log = logging.getLogger("signoff.pipeline")


class Audited:
    """Turns every way a call can end into one outcome, one metric sample and one audit record."""

    def __init__(self, audit: AuditLog | None, metrics: Metrics, replica: str, fail_closed: bool) -> None:
        self.audit = audit
        self.metrics = metrics
        self.replica = replica
        self.fail_closed = fail_closed

    async def __call__(self, call: ToolCall, next: Next) -> dict[str, Any]:
        record = call.record
        try:
            if self.fail_closed and self.audit is not None and not self.audit.healthy:
                raise Refused(
                    refusal(
                        "approval_unavailable",
                        "The audit log cannot be written and this gateway "
                        "is configured to fail closed; the call did not run.",
                        has_output_schema=call.has_output_schema,
                    ),
                    "audit_unavailable",
                )
            result = await next(call)
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
        except UnknownTool:
            record.outcome = "unknown_tool"
            raise
        except UpstreamErrorReply as e:
            record.outcome = "upstream_error"
            record.reason = e.message
            raise
        except BaseException:
            record.outcome = record.outcome or "cancelled"
            raise
        finally:
            self._finish(call)

    def _finish(self, call: ToolCall) -> None:
        record = call.record
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
            enforced=record.enforced,
            rule=record.rule,
            approval_id=record.approval_id,
            approvers=record.approvers,
            reason=record.reason,
            latency_ms=round(elapsed * 1000, 3),
            outcome=record.outcome or "unknown",
            replica=self.replica,
            policy_revision=record.revision,
            grant_id=record.grant_id,
            edited_hash=record.edited["to"] if record.edited else None,
        )
