"""Prometheus metrics: calls by tool and outcome, latency, upstream status, approvals and their decisions."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
# People take seconds to hours to decide.
_DECIDE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 14400, 86400)


class Metrics:
    """One registry per gateway, so several gateways in one process (tests) don't collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "signoff_tool_calls",
            "Tool calls by tool, decision and outcome",
            ["tool", "decision", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "signoff_tool_call_seconds",
            "Tool call latency through the gateway (including approval waits)",
            ["decision"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.upstream_up = Gauge(
            "signoff_upstream_up",
            "1 when the upstream's shared connection is up",
            ["upstream"],
            registry=self.registry,
        )
        self.upstream_restarts = Gauge(
            "signoff_upstream_restarts",
            "Reconnects of the upstream's shared connection",
            ["upstream"],
            registry=self.registry,
        )
        self.pending_approvals = Gauge(
            "signoff_pending_approvals", "Calls waiting for a human decision", registry=self.registry
        )
        self.time_to_decide = Histogram(
            "signoff_approval_time_to_decide_seconds",
            "From an approval request to its final decision (approved, denied, expired, withdrawn)",
            ["outcome"],
            buckets=_DECIDE_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "signoff_approval_decisions",
            "Final decisions on approval requests by outcome, and where they were made "
            "(slack, web: the page or the CLI, timeout, agent: withdrawn)",
            ["outcome", "channel"],
            registry=self.registry,
        )
        self.audit_dropped = Counter(
            "signoff_audit_write_failures", "Audit batches that could not be written", registry=self.registry
        )
        self.lean_answers = Counter(
            "signoff_lean_answers",
            "tools/call and tools/list requests answered on the lean HTTP path (not the SDK's server)",
            ["method"],
            registry=self.registry,
        )

    def observe_call(self, tool: str, decision: str, outcome: str, seconds: float) -> None:
        self.calls.labels(tool, decision, outcome).inc()
        self.latency.labels(decision).observe(seconds)

    def observe_decision(self, outcome: str, channel: str, seconds: float) -> None:
        """A request reached its final decision `outcome` through `channel`, `seconds` after it was made."""
        self.decisions.labels(outcome, channel).inc()
        self.time_to_decide.labels(outcome).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
