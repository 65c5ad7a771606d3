"""An audit record as the API and `signoff audit --jsonl` show it (camelCase keys, ISO times)."""

from __future__ import annotations

from typing import Any

from proxy.records import AuditRecord


def audit_json(r: AuditRecord) -> dict[str, Any]:
    """One audit record as JSON."""
    return {
        "at": r.at.isoformat() if r.at is not None else None,
        "callId": r.call_id,
        "identity": r.identity,
        "session": r.session_id,
        "client": r.client_name,
        "upstream": r.upstream,
        "tool": r.tool,
        "arguments": r.arguments,
        "decision": r.decision,
        "enforced": r.enforced,
        "rule": r.rule,
        "approvalId": r.approval_id,
        "approvers": r.approvers,
        "reason": r.reason,
        "latencyMs": r.latency_ms,
        "outcome": r.outcome,
        "replica": r.replica,
        "policyRevision": r.policy_revision,
        "grantId": r.grant_id,
        "editedHash": r.edited_hash,
    }
