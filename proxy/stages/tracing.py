"""The tracing stages: a span per tools/call, with policy, approval and upstream children.

Added to the pipeline only when tracing is on (`proxy.tracing`). The call's span is opened as the
current span inside the mcp SDK's request span, so it is that span's child; the stage spans are
children of the call's span and end when their stage passes the call on (or ends it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from proxy.calls import ToolCall
from proxy.results import Refused
from proxy.stages import Next, Stage
from proxy.stages.approval import ApprovalStage
from proxy.stages.policy import PolicyStage
from proxy.tracing import tracer

Describe = Callable[[ToolCall, BaseException | None, float], dict[str, Any]]


class CallSpan:
    """The outermost stage: one `signoff tools/call` span, with how the call was decided and ended."""

    async def __call__(self, call: ToolCall, next: Next) -> dict[str, Any]:
        # Through the mcp SDK, its request span is current (it read a `_meta` traceparent already);
        # the lean HTTP path (proxy.edge.fastpath) has none, so ours is the request's span and reads it.
        inside_sdk = trace.get_current_span().is_recording()
        with tracer().start_as_current_span(
            "signoff tools/call",
            context=None if inside_sdk else _client_context(call.meta),
            kind=SpanKind.INTERNAL if inside_sdk else SpanKind.SERVER,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": call.public_name,
                "signoff.upstream": call.upstream,
                "signoff.identity": call.identity.name,
                "mcp.session.id": call.session_id,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await next(call)
            finally:
                _finish_call(span, call)


def _client_context(meta: dict[str, Any]) -> context.Context | None:
    """The trace context a client sent in `_meta` (None: none, or not valid; the HTTP header's stands)."""
    if "traceparent" not in meta:
        return None
    found = propagate.extract(meta)
    return found if trace.get_current_span(found).get_span_context().is_valid else None


def _finish_call(span: Span, call: ToolCall) -> None:
    record = call.record
    attributes: dict[str, Any] = {
        "signoff.decision": record.decision,
        "signoff.rule": record.rule or "",
        "signoff.outcome": record.outcome or "unknown",
        "signoff.enforced": record.enforced,
    }
    if record.approval_id:
        attributes["signoff.approval.id"] = record.approval_id
    if record.approvers:
        attributes["signoff.approval.decided_by"] = record.approvers
    span.set_attributes(attributes)
    if record.outcome not in ("ok", ""):
        span.set_status(StatusCode.ERROR, record.outcome)


class StageSpan:
    """Wraps a stage in a span that covers the stage's own work, up to where it passes the call on."""

    def __init__(
        self,
        stage: Stage,
        name: str,
        describe: Describe,
        applies: Callable[[ToolCall], bool] = lambda call: True,
    ) -> None:
        self.stage = stage
        self.name = name
        self.describe = describe
        self.applies = applies

    async def __call__(self, call: ToolCall, next: Next) -> dict[str, Any]:
        if not self.applies(call):
            return await self.stage(call, next)
        span = tracer().start_span(self.name, kind=SpanKind.INTERNAL)
        started = time.monotonic()
        # Current while the stage works (a context probe's request nests in the approval span);
        # the call's span is current again from where the stage passes the call on.
        token = context.attach(trace.set_span_in_context(span))
        open_ = True

        def end(error: BaseException | None) -> None:
            nonlocal open_
            if open_:
                open_ = False
                context.detach(token)
                span.set_attributes(self.describe(call, error, time.monotonic() - started))
                if error is not None and not isinstance(error, Refused):
                    span.set_status(StatusCode.ERROR, type(error).__name__)
                span.end()

        async def passed_on(c: ToolCall) -> dict[str, Any]:
            end(None)
            return await next(c)

        try:
            return await self.stage(call, passed_on)
        except BaseException as e:
            end(e)
            raise
        finally:
            end(None)


def _policy(call: ToolCall, error: BaseException | None, _: float) -> dict[str, Any]:
    verdict = call.verdict
    out: dict[str, Any] = {"signoff.decision": call.record.decision, "signoff.rule": call.record.rule or ""}
    if verdict is not None:
        out["signoff.policy.revision"] = verdict.revision
        out["signoff.enforced"] = verdict.enforced
    return out


def _approval(call: ToolCall, error: BaseException | None, waited: float) -> dict[str, Any]:
    record = call.record
    if error is None:
        decision = "approved"
    elif isinstance(error, Refused):
        decision = error.outcome
    else:
        decision = "withdrawn"  # the caller went away (cancelled) or the store failed
    out: dict[str, Any] = {
        "signoff.approval.decision": decision,
        "signoff.approval.rule": record.rule or "",
        "signoff.approval.time_to_decide_s": round(waited, 3),
    }
    if record.approval_id:
        out["signoff.approval.id"] = record.approval_id
    if record.approvers:
        out["signoff.approval.decided_by"] = record.approvers
    if record.grant_id:  # ran under an "approve for a while" grant, without asking
        out["signoff.approval.grant_id"] = record.grant_id
    return out


def _needs_approval(call: ToolCall) -> bool:
    verdict = call.verdict
    return verdict is not None and verdict.enforced and verdict.decision.action == "require_approval"


def upstream_span(forward: Next) -> Next:
    """The last link in a span of its own, current while it runs: the mcp SDK's send span nests in it."""

    async def run(call: ToolCall) -> dict[str, Any]:
        with tracer().start_as_current_span(
            "signoff upstream",
            kind=SpanKind.INTERNAL,
            attributes={"signoff.upstream": call.upstream, "signoff.upstream.tool": call.tool},
        ) as span:
            result = await forward(call)
            if result.get("isError"):
                span.set_attribute("error.type", "tool_error")
                span.set_status(StatusCode.ERROR, "tool_error")
            return result

    return run


def traced(stages: Sequence[Stage], last: Next) -> tuple[list[Stage], Next]:
    """The pipeline's stages and last link with spans around the call, its policy, approval and upstream."""
    wrapped: list[Stage] = [CallSpan()]
    for stage in stages:
        if isinstance(stage, PolicyStage):
            wrapped.append(StageSpan(stage, "signoff policy", _policy))
        elif isinstance(stage, ApprovalStage):
            wrapped.append(StageSpan(stage, "signoff approval", _approval, _needs_approval))
        else:
            wrapped.append(stage)
    return wrapped, upstream_span(last)
