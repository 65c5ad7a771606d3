"""Prometheus metrics: calls by tool and outcome, latency, upstream status, pending approvals."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
