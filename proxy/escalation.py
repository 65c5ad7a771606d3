"""Escalation: a request nobody decided in time pages someone — once, whichever replica notices.

The row's `escalate_at` is the truth. A timer of the replica that created the request, the periodic
sweep of every replica and a restarting replica's start-up sweep may all try; the atomic claim
(`escalated_at` set only where it is still NULL) lets exactly one of them page. The incident is
resolved when the request ends, and only if it was triggered. PagerDuty trouble is retried briefly
and logged; it never blocks or changes the approval itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import datetime
from typing import Any

from proxy.pagerduty import PagerDuty, PagerDutyError
from proxy.records import PENDING, Approval, utcnow
from proxy.store import Store
from proxy.timers import Timers

log = logging.getLogger("signoff.escalation")

SUMMARY = 1024  # the Events API's limit on payload.summary


class Escalation:
    """Schedules, claims, pages and resolves escalations for the broker."""

    def __init__(
        self,
        store: Store,
        channel: Any,  # an ApprovalChannel; one without `escalate` only pages
        pagerduty: PagerDuty | None,
        page_url: str,
        timers: Timers,
        background: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.store = store
        self.channel = channel
        self.pagerduty = pagerduty if pagerduty is not None and pagerduty.can_page else None
        self.page_url = page_url
        self.timers = timers
        self.background = background
        self._posting: set[str] = set()

    async def start(self) -> None:
        """Re-arm the timers of requests still waiting to escalate (overdue ones fire at once)."""
        for approval_id, at in await self.store.escalations_waiting():
            self.schedule(approval_id, at)

    async def sweep(self) -> None:
        """Escalate every overdue request nobody has escalated yet (safe on every replica)."""
        for approval_id, _ in await self.store.escalations_waiting(due_by=utcnow()):
            if approval_id not in self._posting:  # its timer is armed once the post is done
                await self.escalate(approval_id)

    @contextlib.contextmanager
    def posting(self, approval_id: str) -> Iterator[None]:
        """While the request is being posted it has no message to link to or reply under: the
        sweep leaves it alone (the broker arms its timer once the post is done)."""
        self._posting.add(approval_id)
        try:
            yield
        finally:
            self._posting.discard(approval_id)

    def schedule(self, approval_id: str, at: datetime) -> None:
        self.timers.at(_job(approval_id), at, self.escalate, approval_id)

    def unschedule(self, approval_id: str) -> None:
        self.timers.cancel(_job(approval_id))

    async def escalate(self, approval_id: str) -> None:
        """Claim the escalation; the one process that wins pages and re-posts, in the background."""
        try:
            row = await self.store.claim_escalation(approval_id, utcnow())
        except Exception as e:  # the sweep tries again
            log.warning("approval %s: could not claim its escalation: %s", approval_id, e)
            return
        if row is None:
            return  # decided, or escalated by another process
        log.warning("approval %s: nobody decided in time; escalating", approval_id)
        if self.pagerduty is not None:
            self.background(self._trigger(row))
        announce = getattr(self.channel, "escalate", None)
        if announce is not None:
            self.background(self._announce(announce, row))
        elif self.pagerduty is None:
            log.warning("approval %s: escalation has nowhere to go (no PagerDuty routing key)", approval_id)

    def ended(self, row: Approval) -> None:
        """The request was decided, expired or withdrawn: stop its timer; resolve its incident if any."""
        self.unschedule(row.id)
        if row.escalated_at is not None and self.pagerduty is not None:
            self.background(self._resolve(row.id))

    async def _trigger(self, row: Approval) -> None:
        assert self.pagerduty is not None
        try:
            await self.pagerduty.send_event(trigger_event(row, self.page_url, utcnow()))
        except PagerDutyError as e:
            log.error("approval %s: PagerDuty incident not triggered: %s", row.id, e)
            return
        log.info("approval %s: PagerDuty incident triggered", row.id)
        # Decided while the trigger was on its way: the resolve may have reached PagerDuty first.
        current = await self.store.approval(row.id)
        if current is not None and current.status != PENDING:
            await self._resolve(row.id)

    async def _resolve(self, approval_id: str) -> None:
        assert self.pagerduty is not None
        try:
            await self.pagerduty.send_event(resolve_event(approval_id))
            log.info("approval %s: PagerDuty incident resolved", approval_id)
        except PagerDutyError as e:
            log.error("approval %s: PagerDuty incident not resolved: %s", approval_id, e)

    async def _announce(self, announce: Callable[[Approval], Awaitable[None]], row: Approval) -> None:
        try:
            await announce(row)
        except Exception as e:
            log.warning("approval %s: could not re-post the escalation: %s", row.id, e)


def request_link(page_url: str, approval_id: str) -> str:
    """Where a person finds the request on the approvals page."""
    return f"{page_url}?approval={approval_id}"


def trigger_event(approval: Approval, page_url: str, now: datetime) -> dict[str, Any]:
    """The Events API v2 `trigger` for an escalated request (no arguments: only their hash)."""
    link = request_link(page_url, approval.id)
    waited = _minutes((now - approval.created_at).total_seconds())
    caller = approval.identity + (f" via {approval.client_name}" if approval.client_name else "")
    summary = f"Approval waiting {waited}: {approval.tool} requested by {caller} — {link}"
    if len(summary) > SUMMARY:  # keep the link whole
        head = f"Approval waiting {waited}: {approval.tool} requested by {caller}"
        summary = head[: SUMMARY - len(link) - 4] + "… — " + link
    return {
        "event_action": "trigger",
        "dedup_key": approval.id,
        "payload": {
            "summary": summary,
            "source": f"signoff {approval.replica}".strip(),
            "severity": "warning",
            "component": approval.tool,
            "group": approval.upstream or None,
            "class": "approval",
            "custom_details": {
                "approval": approval.id,
                "tool": approval.tool,
                "requested_by": approval.identity,
                "client": approval.client_name,
                "acts_for": approval.acts_for,
                "rule": approval.rule,
                "risk": approval.risk,
                "approvers": approval.approvers,
                "expires_at": approval.expires_at.isoformat(),
                "arguments_sha256": approval.args_hash,
            },
        },
        "links": [{"href": link, "text": f"Approval request {approval.id}"}],
        "client": "signoff",
        "client_url": link,
    }


def resolve_event(approval_id: str) -> dict[str, Any]:
    """The Events API v2 `resolve` for the incident of `approval_id`."""
    return {"event_action": "resolve", "dedup_key": approval_id}


def _job(approval_id: str) -> str:
    return f"{approval_id}:escalate"


def _minutes(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"
