"""The plain records the core passes around: an approval request, a grant, a tool pin, an audit record.

Dataclasses, not database rows: the pipeline, the channels and the Block Kit renderer use these
without knowing there is a database; `proxy.store` maps them to its tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

PENDING, APPROVED, DENIED, EXPIRED, WITHDRAWN, EXECUTED = (
    "pending",
    "approved",
    "denied",
    "expired",
    "withdrawn",
    "executed",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(kw_only=True, slots=True)
class Approval:
    """A call waiting for (or past) a human decision."""

    id: str
    status: str = PENDING
    mode: str = "hold"  # hold: the call waits; pending: the agent calls again after approval
    identity: str
    acts_for: str | None = None  # the person the identity acts for (cannot self-approve)
    session_id: str = ""
    client_name: str | None = None
    upstream: str = ""
    tool: str  # public (namespaced) name
    arguments: dict[str, Any] = field(default_factory=dict)  # display-masked (proxy.redact)
    args_hash: str
    risk: str = "write"
    rule: str = ""
    rule_reason: str | None = None
    approvers: str | None = None  # approver group name
    channel: str | None = None
    quorum: int = 1
    allow_self_approval: bool = False
    policy_revision: str = ""
    created_at: datetime = field(default_factory=utcnow)
    expires_at: datetime
    # Escalation: when a still-undecided request pages someone, where it is re-posted, and when it
    # did escalate (set once, by whichever process claimed it).
    escalate_at: datetime | None = None
    escalate_channel: str | None = None
    escalate_usergroup: str | None = None
    escalated_at: datetime | None = None
    decided_at: datetime | None = None
    decided_by: str | None = None
    decision_reason: str | None = None
    holder: str = ""  # process instance holding the waiting call (hold mode)
    replica: str = ""  # replica name, for people
    message_channel: str | None = None
    message_ts: str | None = None
    outcome: str | None = None  # after execution: ok / tool_error / upstream error text
    executed_at: datetime | None = None
    reported: bool = False  # pending mode: the agent has been told the final state
    # Approving for a while and editing (proxy.grants, proxy.edits).
    input_schema: dict[str, Any] | None = None  # to check edits
    identity_groups: list[str] | None = None  # to re-decide edits
    grant_offer: dict[str, Any] | None = None  # proxy.grants.offer_of
    grant_id: str | None = None  # the grant this approval created
    # The exact arguments an approver changed the call to (the database is private: see Store.open).
    edited_arguments: dict[str, Any] | None = None
    edited_hash: str | None = None
    edited_paths: list[str] | None = None
    # The context probe's answer about the target (proxy.context): what approvers were shown.
    context: dict[str, Any] | None = None


@dataclass(kw_only=True, slots=True)
class Grant:
    """An approval for a while: the same identity, tool and `same` argument values run without asking."""

    id: str
    identity: str
    upstream: str = ""
    tool: str  # public (namespaced) name
    rule: str = ""  # the rule that offered it: a call under another rule is not covered
    same: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)  # display-masked
    values_hash: str  # of the exact values
    created_by: str  # the person (or, with a quorum, the people) who approved for a while
    created_at: datetime = field(default_factory=utcnow)
    expires_at: datetime
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    approval_id: str


@dataclass(kw_only=True, slots=True)
class ToolPin:
    """An upstream tool's definition as first seen (or last accepted), and a change awaiting an admin."""

    upstream: str
    tool: str  # the upstream's own name
    definition: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    pinned_at: datetime = field(default_factory=utcnow)
    pinned_by: str = "(first seen)"
    # The definition the upstream serves now, when it differs from the pinned one (not yet accepted).
    pending: dict[str, Any] | None = None
    pending_digest: str | None = None
    pending_at: datetime | None = None


@dataclass(kw_only=True, slots=True)
class AuditRecord:
    """One tools/call (or an event about a request), whatever became of it, as read back."""

    id: int | None = None
    at: datetime = field(default_factory=utcnow)
    call_id: str
    identity: str
    session_id: str = ""
    client_name: str | None = None
    upstream: str = ""
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)  # redacted, long strings cut
    decision: str  # allow / deny / require_approval / rate_limited / hidden / unknown / an event
    enforced: bool = True  # False in shadow mode
    rule: str | None = None
    approval_id: str | None = None
    approvers: str | None = None  # who decided (comma separated)
    reason: str | None = None
    latency_ms: float = 0.0
    outcome: str = ""  # ok / tool_error / denied / expired / upstream_unavailable / …
    replica: str = ""
    policy_revision: str = ""
    grant_id: str | None = None  # the call ran under this grant, without asking
    edited_hash: str | None = None  # the call ran with arguments an approver edited
