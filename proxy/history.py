"""A request's history: the last decisions on the same tool for the same caller, and how they ended.

Shown with every request (Slack, the page, the CLI) so an approver sees "bob denied this twice
today" or "the last three ran fine" before deciding. Read from the approval table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from proxy.records import APPROVED, EXECUTED, Approval
from proxy.store import Store

HISTORY_LENGTH = 5


@dataclass(frozen=True)
class PastDecision:
    """One earlier request of the same caller for the same tool, as decided."""

    id: str
    status: str  # approved / denied / expired / withdrawn
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None
    outcome: str | None  # how an approved call ended: ok / tool_error / upstream_… (None: not run)


def past_decision(a: Approval) -> PastDecision:
    """The history entry of a decided request ("executed" reads as approved)."""
    status = APPROVED if a.status == EXECUTED else a.status
    return PastDecision(a.id, status, a.decided_by, a.decided_at, a.decision_reason, a.outcome)


async def recent_decisions(
    store: Store, approval: Approval, limit: int = HISTORY_LENGTH
) -> list[PastDecision]:
    """The latest decided requests of `approval`'s identity for its tool, newest first (not itself)."""
    rows = await store.recent_decisions(approval.identity, approval.tool, exclude=approval.id, limit=limit)
    return [past_decision(a) for a in rows]


def history_json(items: list[PastDecision]) -> list[dict[str, Any]]:
    """The API's view of a history."""
    return [
        {
            "id": d.id,
            "status": d.status,
            "decidedBy": d.decided_by,
            "decidedAt": d.decided_at.isoformat() if d.decided_at else None,
            "reason": d.reason,
            "outcome": d.outcome,
        }
        for d in items
    ]
