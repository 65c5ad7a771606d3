"""The approval broker: pause a call, let humans decide exactly once, resume or refuse it.

The database row is the truth. Every decision — a click, a timeout, a withdrawal, a restart —
is one atomic `UPDATE … WHERE status = 'pending'`; only its winner touches the waiter and the
channel. The broker knows nothing about Slack: it talks to an `ApprovalChannel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from proxy import edits, grants
from proxy.approvers import Allowed, Refused
from proxy.calls import ToolCall
from proxy.channels import ApprovalChannel
from proxy.context import after_click, ask_again, context_json, same_state
from proxy.escalation import Escalation
from proxy.pagerduty import PagerDuty
from proxy.people import Person
from proxy.policy_spec import ApprovalSpec, Decision
from proxy.records import APPROVED, DENIED, EXECUTED, EXPIRED, PENDING, WITHDRAWN, Approval, Grant, utcnow
from proxy.redact import display_mask
from proxy.store import Store
from proxy.timers import Timers, later

if TYPE_CHECKING:
    from proxy.context import ContextProber
    from proxy.metrics import Metrics

log = logging.getLogger("signoff.approvals")

# Why a held call was withdrawn, as the approvers read it ("Withdrawn: the agent went away").
AGENT_CANCELLED = "the agent cancelled the call"
AGENT_GONE = "the agent went away"
GATEWAY_STOPPED = "the gateway shut down"


class Approvers(Protocol):
    async def check(self, group: str | None, person: Person) -> Allowed | Refused:
        """Whether `person` may decide requests of approver group `group` now (None: anyone who sees it)."""
        ...


class ApprovalUnavailable(Exception):
    """The request could not be shown to any human; the call fails closed."""


@dataclass(frozen=True)
class Outcome:
    """How a held request ended, as the pipeline needs to know it."""

    status: str  # approved / denied / expired / withdrawn / pending (pending mode, not yet decided)
    approval: Approval
    reason: str | None = None


@dataclass(frozen=True)
class ClickResult:
    """What a decider is told after a click (ephemeral in Slack, a banner on the page)."""

    accepted: bool
    status: str
    message: str
    refused: bool = False  # the clicker may not decide this request (audited)
    invalid: bool = False  # the decision itself cannot be made as asked (a duration not offered, a bad edit)
    # The target's live state changed since the request was shown: approving needs a second yes
    # (`confirm_changed`); this is the stored context as the API shows it (proxy.context.context_json).
    changed: dict[str, Any] | None = None


def arguments_hash(arguments: Any) -> str:
    """A stable hash of the exact arguments (key order does not matter)."""
    return hashlib.sha256(orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)).hexdigest()


class HeldCall:
    """A paused tool call: resumed, refused or killed exactly once, whoever gets there first."""

    def __init__(self, approval: Approval, call_id: str = "") -> None:
        self.approval = approval
        self.call_id = call_id  # the ToolCall waiting on it
        self.row: Approval | None = None  # the decided row, when whoever settled it had it at hand
        self.future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def settle(self, status: str, row: Approval | None = None) -> None:
        if not self.future.done():
            self.row = row
            self.future.set_result(status)

    async def wait(self, report: Callable[[float], Awaitable[None]] | None, every: float) -> str:
        """Wait for the decision, calling `report(seconds_waited)` at once and every `every` seconds."""
        # At once too: a short hold on a busy gateway may be decided or expire before the first
        # interval, and the agent should still learn that its call is waiting for a person.
        if report is None:
            return await self.future
        if not self.future.done():
            await _report(report, 0.0)
        # The later reports come from a timer, not a loop of timeouts around the future: thousands
        # of held calls each keep one heap entry while they wait, and a report in flight when the
        # decision lands is finished first, so the agent reads it before the answer.
        loop = asyncio.get_running_loop()
        started = loop.time()
        reporting: asyncio.Task[None] | None = None

        def tick() -> None:
            nonlocal reporting, timer
            if reporting is None or reporting.done():
                reporting = loop.create_task(_report(report, loop.time() - started))
            timer = later(every, tick)

        timer = later(every, tick)
        try:
            status = await self.future
        except asyncio.CancelledError:
            if reporting is not None:
                reporting.cancel()
            raise
        finally:
            timer.cancel()
        if reporting is not None:
            await reporting
        return status


async def _report(report: Callable[[float], Awaitable[None]], waited: float) -> None:
    # Progress is a courtesy: a report that fails (the agent gone) must not end the wait.
    with contextlib.suppress(Exception):
        await report(waited)


class Broker:
    """Creates approval requests, records decisions atomically, and wakes the calls that wait."""

    def __init__(
        self,
        store: Store,
        channel: ApprovalChannel,
        approvers: Approvers,
        *,
        instance: str,
        replica: str,
        progress_interval: float = 5.0,
        on_event: Callable[..., None] | None = None,
        pagerduty: PagerDuty | None = None,
        page_url: str = "",
        prober: ContextProber | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.channel = channel
        self.approvers = approvers
        self.instance = instance
        self.replica = replica
        self.progress_interval = progress_interval
        # (event, approval, user, detail, **columns) -> audit of refused/late clicks and grant events
        self.on_event = on_event
        # The policy's verdict on edited arguments, (decision, enforced); set by the approval stage of
        # this process, so an edit decided here is checked against the policy in force here.
        self.edit_verdict: Callable[[Approval, dict[str, Any]], tuple[Decision, bool] | None] | None = None
        self.held: dict[str, HeldCall] = {}
        # Whether a cancelled waiter's client asked for the cancellation (by ToolCall id); otherwise
        # its session ended under it: the agent went away. Set by whoever knows the client side.
        self.cancelled_by_agent: Callable[[str], bool] = lambda call_id: True
        self._poll_since = utcnow()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.timers = Timers(self._background)
        self.escalation = Escalation(store, channel, pagerduty, page_url, self.timers, self._background)
        self.prober = prober  # reads the target's live state for the request (policy `approval.context`)
        self.metrics = metrics

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, live_instances: list[str]) -> None:
        """Start timers; expire overdue requests and withdraw ones whose waiting call died."""
        await self.sweep(live_instances)
        for approval_id, expires_at in await self.store.pending_ids():
            self._schedule_expiry(approval_id, expires_at)
        await self.escalation.start()

    async def stop(self) -> None:
        self.timers.stop()
        await self.withdraw_held(GATEWAY_STOPPED)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=15)

    async def sweep(self, live_instances: list[str]) -> None:
        """Expire overdue requests; withdraw held ones whose process is gone (safe on every replica)."""
        for approval_id in await self.store.expire_overdue():
            await self._finished_id(approval_id)
        orphans = await self.store.withdraw_orphans(
            [*live_instances, self.instance], "the gateway holding the call restarted"
        )
        for approval_id in orphans:
            await self._finished_id(approval_id)
        await self.escalation.sweep()

    # -- requests ----------------------------------------------------------------------------

    async def request(self, call: ToolCall, decision: Decision, risk: str, revision: str) -> Approval:
        """Store a pending request, register its waiter, then show it to humans.

        The row and the waiter exist before anything is posted, so even an instant click finds them.
        """
        spec = decision.approval or ApprovalSpec(None, None, 600.0, 1, "hold", False)
        approval_id = "apr_" + secrets.token_hex(8)
        context = await self._probe(call, spec, approval_id)
        now = utcnow()
        approval = Approval(
            id=approval_id,
            mode=spec.mode,
            identity=call.identity.name,
            acts_for=call.identity.on_behalf_of,
            session_id=call.session_id,
            client_name=call.client_name,
            upstream=call.upstream,
            tool=call.public_name,
            # Every byte that will run; each secret replaced, where it stands, by its kind and length.
            arguments=display_mask(call.arguments),
            args_hash=arguments_hash(call.arguments),
            risk=risk,
            rule=decision.rule,
            rule_reason=decision.reason,
            approvers=spec.approvers,
            channel=spec.channel,
            quorum=spec.quorum,
            allow_self_approval=spec.allow_self_approval,
            policy_revision=revision,
            created_at=now,
            expires_at=now + timedelta(seconds=spec.timeout),
            holder=self.instance if spec.mode == "hold" else "",
            replica=self.replica,
            # For approving for a while and for checking an edit, on whichever replica decides.
            input_schema=(call.tool_info or {}).get("inputSchema"),
            identity_groups=sorted(call.identity.groups),
            grant_offer=grants.offer_of(spec.grant, call.arguments) if spec.grant else None,
            context=context,
        )
        _plan_escalation(approval, spec)
        await self.store.add_approval(approval)
        if spec.mode == "hold":
            self.held[approval.id] = HeldCall(approval, call.id)
        self._schedule_expiry(approval.id, approval.expires_at)
        with self.escalation.posting(approval.id):
            await self._post(approval)
        # Only once it is posted: an escalation links to (or replies under) the request's message, and
        # a post slower than `escalate_after` would otherwise escalate a message nobody could see yet.
        if approval.escalate_at is not None:
            self.escalation.schedule(approval.id, approval.escalate_at)
        return approval

    async def _post(self, approval: Approval) -> None:
        """Show the request to humans and remember where; a request that cannot be shown is withdrawn."""
        try:
            ref = await self.channel.post(approval)
        except Exception as e:
            log.error("could not post approval %s: %s", approval.id, e)
            self.held.pop(approval.id, None)
            self._unschedule(approval.id)
            await self.store.transition(
                approval.id,
                PENDING,
                WITHDRAWN,
                decided_at=utcnow(),
                decided_by="(channel)",
                decision_reason=f"could not be posted: {e}",
            )
            raise ApprovalUnavailable(str(e)) from e
        if ref is not None:
            approval.message_channel, approval.message_ts = ref
            await self.store.set_fields(approval.id, message_channel=ref[0], message_ts=ref[1])

    async def wait(
        self, approval: Approval, report: Callable[[float, str], Awaitable[None]] | None
    ) -> Outcome:
        """Hold the caller until a decision; a cancelled caller withdraws its request."""
        held = self.held.get(approval.id)
        if held is None:  # decided (or withdrawn) before we got here
            row = await self.store.approval(approval.id)
            return Outcome(
                row.status if row else WITHDRAWN, row or approval, row.decision_reason if row else None
            )
        where = self.channel.where(approval)

        async def progress(waited: float) -> None:
            if report is not None:
                left = max(0.0, (approval.expires_at - utcnow()).total_seconds())
                await report(waited, f"waiting for approval {where} ({time_left(left)} left)")

        try:
            status = await held.wait(progress, self.progress_interval)
        except asyncio.CancelledError:
            self.held.pop(approval.id, None)
            reason = AGENT_CANCELLED if self.cancelled_by_agent(held.call_id) else AGENT_GONE
            # Shielded: the withdrawal must land even though our caller is being cancelled.
            await asyncio.shield(self.withdraw(approval.id, reason))
            raise
        finally:
            self.held.pop(approval.id, None)
        row = held.row or await self.store.approval(approval.id) or approval
        return Outcome(status, row, row.decision_reason)

    async def claim(self, approval: Approval) -> bool:
        """Take an approved request for execution; True exactly once per approval."""
        return await self.store.transition(approval.id, APPROVED, EXECUTED, executed_at=utcnow()) is not None

    async def lookup_pending_mode(self, call: ToolCall) -> Approval | None:
        """Pending mode's call-again: the latest request for the same identity, tool and exact arguments."""
        return await self.store.latest_for(
            call.identity.name, call.public_name, arguments_hash(call.arguments)
        )

    async def mark_reported(self, approval: Approval) -> None:
        await self.store.set_fields(approval.id, reported=True)

    # -- decisions ---------------------------------------------------------------------------

    async def decide(
        self,
        approval_id: str,
        approve: bool,
        person: Person,
        reason: str | None = None,
        *,
        grant_for: float | str | None = None,
        arguments: dict[str, Any] | None = None,
        confirm_changed: bool = False,
        via: str = "web",
    ) -> ClickResult:
        """An authenticated person's decision. The first valid one wins; everything else changes nothing.

        Approving may also grant a while (`grant_for`, one of the durations the rule offers) or run
        the call with `arguments` the person edited; an edit the schema or policy refuses decides nothing.
        An approval whose target's live state changed since it was shown is not taken until the person
        confirms (`confirm_changed`). `via` says where it was made (web, slack, …), for the metrics.
        """
        user = person.name
        approval = await self.store.approval(approval_id)
        if approval is None:
            return ClickResult(False, "unknown", f"There is no approval request {approval_id}.")
        if approval.status != PENDING:
            self._event("late_click", approval, user, approval.status)
            return ClickResult(False, approval.status, already_decided(approval))
        verdict = await self.approvers.check(approval.approvers, person)
        if isinstance(verdict, Refused):
            self._event("refused_click", approval, user, verdict.short)
            return ClickResult(False, PENDING, verdict.why, refused=True)
        if not approval.allow_self_approval and person.is_(approval.acts_for):
            self._event("refused_click", approval, user, "self-approval")
            return ClickResult(
                False, PENDING, "You cannot decide a call that an agent made on your behalf.", refused=True
            )
        seconds: float | None = None
        edit: dict[str, Any] = {}
        if approve and (grant_for is not None or arguments is not None):
            prepared = self._prepare_extras(approval, grant_for, arguments)
            if isinstance(prepared, ClickResult):
                return prepared
            seconds, edit = prepared
        if approve:
            ask = await self._recheck_context(approval, confirm_changed)
            if ask is not None:
                return ask
        now = utcnow()
        voters = [user]
        # We hold the call ourselves: approve and claim it in one statement, so the call is dispatched
        # straight from the decision (one write on the path, not two).
        local = approval.mode == "hold" and approval_id in self.held
        final = {"status": EXECUTED, "executed_at": now} if local else {"status": APPROVED}
        if approve and approval.quorum > 1:
            count, won = await self.store.vote(
                approval_id,
                user,
                approval.quorum,
                grant_for=seconds,
                grant=self._quorum_grant(approval, now) if approval.grant_offer else None,
                decided_at=now,
                **final,
            )
            if count is None:
                current = await self.store.approval(approval_id) or approval
                if current.status == PENDING:
                    return ClickResult(False, PENDING, "You have already approved this request.")
                self._event("late_click", current, user, current.status)
                return ClickResult(False, current.status, already_decided(current))
            voters = await self.store.voters(approval_id)
            if won is None:
                await self._update_channel(approval, voters)
                what = f"Approval for {grants.spoken(seconds)}" if seconds else "Approval"
                return ClickResult(True, PENDING, f"{what} recorded: {count} of {approval.quorum}.")
            grant = await self._granted(won, won.decided_by or user)
            await self._finished(won, voters)
            self._observe(won, via)
            return ClickResult(True, APPROVED, _approved_message(won, grant))
        if approve and (seconds is not None or edit):
            won = await self._approve_with(approval, user, now, final, seconds, edit)
        elif approve and local:
            won = await self.store.transition(
                approval_id, PENDING, EXECUTED, decided_at=now, decided_by=user, executed_at=now
            )
        elif approve:
            won = await self.store.transition(approval_id, PENDING, APPROVED, decided_at=now, decided_by=user)
        else:
            won = await self.store.transition(
                approval_id, PENDING, DENIED, decided_at=now, decided_by=user, decision_reason=reason
            )
        if won is None:
            current = await self.store.approval(approval_id) or approval
            self._event("late_click", current, user, current.status)
            return ClickResult(False, current.status, already_decided(current))
        grant = await self._granted(won, user) if approve else None
        await self._finished(won, voters if approve else [])
        self._observe(won, via)
        message = _approved_message(won, grant) if approve else "Denied."
        return ClickResult(True, APPROVED if approve else DENIED, message)

    # -- approving for a while, and with edited arguments -------------------------------------

    def _prepare_extras(
        self, approval: Approval, grant_for: float | str | None, arguments: dict[str, Any] | None
    ) -> tuple[float | None, dict[str, Any]] | ClickResult:
        """(grant seconds, the edit's columns), or the refusal that decides nothing."""
        seconds = None
        if grant_for is not None:
            chosen = grants.choose_duration(approval, grant_for)
            if isinstance(chosen, str):
                return ClickResult(False, PENDING, f"Cannot approve for a while: {chosen}.", invalid=True)
            seconds = chosen
        edit: dict[str, Any] = {}
        if arguments is not None and arguments_hash(arguments) != approval.args_hash:
            problem = self._edit_problem(approval, arguments)
            if problem is not None:
                return ClickResult(
                    False, PENDING, f"Edit refused: {problem}. Nothing was decided.", invalid=True
                )
            edit = {
                "edited_arguments": arguments,
                "edited_hash": arguments_hash(arguments),
                "edited_paths": edits.changed_paths(approval.arguments, arguments),
            }
        return seconds, edit

    def _edit_problem(self, approval: Approval, arguments: Any) -> str | None:
        """Why an edit of `approval` to `arguments` is refused, or None when it may run."""
        if not isinstance(arguments, dict):
            return "the arguments must be a JSON object"
        if approval.quorum > 1:
            return (
                f"this request needs {approval.quorum} approvers, and each must approve the same "
                "arguments; deny it with a reason instead"
            )
        if approval.input_schema is None:
            return f"{approval.tool} declares no input schema to check an edit against"
        where = edits.masked_secret(arguments)
        if where is not None:
            return (
                f"{where} still holds a masked secret (\u2039…\u203a); give that value in full, or leave "
                "the arguments unedited"
            )
        problem = edits.schema_problems(approval.input_schema, arguments)
        if problem is not None:
            return f"the edited arguments do not fit {approval.tool}'s input schema: {problem}"
        verdict = self.edit_verdict(approval, arguments) if self.edit_verdict is not None else None
        if verdict is None:
            return "the policy for this tool cannot be consulted here"
        return edits.policy_problem(verdict[0], verdict[1], approval.approvers, approval.quorum)

    async def check_edit(self, approval_id: str, arguments: Any, person: Person) -> str | None:
        """Why `person` cannot approve `approval_id` with these arguments (before a modal closes), or None."""
        approval = await self.store.approval(approval_id)
        if approval is None:
            return f"There is no approval request {approval_id}."
        if approval.status != PENDING:
            return already_decided(approval)
        if not await self.approvers.is_approver(approval.approvers, person):
            return f"You ({person.name}) are not an approver for this request."
        return self._edit_problem(approval, arguments)

    async def _approve_with(
        self,
        approval: Approval,
        user: str,
        now: datetime,
        final: dict[str, Any],
        seconds: float | None,
        edit: dict[str, Any],
    ) -> Approval | None:
        values = {**final, "decided_at": now, "decided_by": user, **edit}
        status = values.pop("status")
        if seconds is None:
            return await self.store.transition(approval.id, PENDING, status, **values)
        grant = grants.new_grant(approval, user, seconds, now, edit.get("edited_arguments"))
        return await self.store.transition_granting(approval.id, PENDING, status, grant, **values)

    def _quorum_grant(
        self, approval: Approval, now: datetime
    ) -> Callable[[list[str], list[float | None]], Grant | None]:
        def make(voters: list[str], durations: list[float | None]) -> Grant | None:
            seconds = grants.quorum_duration(durations)
            if seconds is None:
                return None
            return grants.new_grant(approval, ",".join(voters), seconds, now, None)

        return make

    async def _granted(self, row: Approval, by: str) -> Grant | None:
        """The grant a decision created, if any, audited (its uses and revocation are audited too)."""
        if row.grant_id is None:
            return None
        grant = await self.store.grant(row.grant_id)
        if grant is not None:
            detail = f"for {grants.spoken(grants.duration(grant))}: {grants.covers(grant)}"
            self._event("grant_created", row, by, detail, outcome="granted", grant_id=grant.id)
        return grant

    async def revoke_grant(self, grant_id: str, person: Person) -> ClickResult:
        """End a grant at once (every replica's next call asks again); only approvers of its rule may."""
        grant = await self.store.grant(grant_id)
        if grant is None:
            return ClickResult(False, "unknown", f"There is no grant {grant_id}.")
        approval = await self.store.approval(grant.approval_id)
        if approval is None or not await self.approvers.is_approver(approval.approvers, person):
            if approval is not None:
                self._event("refused_click", approval, person.name, "not an approver (revoke grant)")
            group = approval.approvers if approval else "?"
            return ClickResult(
                False,
                "live",
                f"You ({person.name}) are not an approver of this grant's rule (approver group: {group}); "
                "it stays in force.",
                refused=True,
            )
        now = utcnow()
        row = await self.store.revoke_grant(grant_id, person.name, now)
        if row is None:
            current = await self.store.grant(grant_id) or grant
            if current.revoked_at is not None:
                by = current.revoked_by
                return ClickResult(False, "revoked", f"Grant {grant_id} was already revoked by {by}.")
            ended = current.expires_at.strftime("%H:%M:%S UTC")
            return ClickResult(False, "expired", f"Grant {grant_id} already ended at {ended}.")
        covered = grants.covers(row)
        self._event("grant_revoked", approval, person.name, covered, outcome="revoked", grant_id=row.id)
        voters = await self.store.voters(approval.id) if approval.quorum > 1 else []
        await self._update_channel(approval, voters)
        return ClickResult(True, "revoked", f"Grant {grant_id} revoked: {covered} needs approval again.")

    async def expire(self, approval_id: str) -> None:
        """The timer fired: expire the request if it is still pending."""
        row = await self.store.transition(
            approval_id, PENDING, EXPIRED, decided_at=utcnow(), decided_by="(timeout)"
        )
        if row is not None:
            await self._finished(row)
            self._observe(row, "timeout")

    async def withdraw(self, approval_id: str, reason: str) -> None:
        """The caller went away: nothing will run, even if someone approves later."""
        # An approved-but-not-yet-run hold request is withdrawn too: its caller is gone.
        row = await self.store.transition(
            approval_id,
            [PENDING, APPROVED],
            WITHDRAWN,
            decided_at=utcnow(),
            decided_by="(agent)",
            decision_reason=reason,
        )
        if row is not None:
            await self._finished(row)
            self._observe(row, "agent")

    async def withdraw_held(self, reason: str) -> None:
        """Withdraw every call this process holds (it stops serving them)."""
        await self._withdraw_where(lambda held: True, reason)

    async def withdraw_session(self, session_id: str, reason: str) -> None:
        """Withdraw the calls this process holds for a client session that has ended."""
        await self._withdraw_where(lambda held: held.approval.session_id == session_id, reason)

    async def abandoned(self, call_id: str) -> None:
        """The client of a call left without a word: withdraw the request it waits on, if any."""
        await self._withdraw_where(lambda held: held.call_id == call_id, AGENT_GONE)

    async def _withdraw_where(self, which: Callable[[HeldCall], bool], reason: str) -> None:
        for approval_id, held in list(self.held.items()):
            if which(held):
                await self.withdraw(approval_id, reason)

    @property
    def held_here(self) -> int:
        """How many calls this process holds for a decision."""
        return len(self.held)

    def report_outcome(self, approval: Approval, outcome: str, detail: str | None) -> None:
        """After an approved call ran: record and announce what happened, off the agent's path."""
        self._background(self._report_outcome(approval, outcome, detail))

    async def _report_outcome(self, approval: Approval, outcome: str, detail: str | None) -> None:
        try:
            await self.store.set_fields(approval.id, outcome=outcome)
            await self.channel.post_outcome(approval, outcome, detail)
        except Exception as e:
            log.warning("could not record or post the outcome of %s: %s", approval.id, e)

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wake(self, approval_id: str) -> None:
        """Another process decided `approval_id`: wake our waiter if we hold it."""
        held = self.held.get(approval_id)
        if held is not None:
            row = await self.store.approval(approval_id)
            if row is not None and row.status != PENDING:
                self._unschedule(approval_id)
                held.settle(row.status)

    async def recheck_held(self) -> None:
        """Wake every held call whose request was decided while we were not listening."""
        for approval_id, status in await self.store.decided_among(list(self.held)):
            held = self.held.get(approval_id)
            if held is not None:
                self._unschedule(approval_id)
                held.settle(status)

    async def poll_decisions(self) -> None:
        """SQLite's cross-process wake-up: look for decisions on requests this process holds."""
        if not self.held:
            self._poll_since = utcnow()
            return
        since, self._poll_since = self._poll_since - timedelta(seconds=1), utcnow()
        for approval_id, status in await self.store.decided_since(self.instance, since):
            held = self.held.get(approval_id)
            if held is not None and status != PENDING:
                self._unschedule(approval_id)
                held.settle(status)

    # -- internals ---------------------------------------------------------------------------

    async def _finished(self, row: Approval, voters: list[str] | None = None) -> None:
        """We won the decision: wake the waiter, stop the timers, rewrite the message."""
        self._unschedule(row.id)
        self.escalation.ended(row)
        held = self.held.get(row.id)
        if held is not None:
            held.settle(row.status, row)
        if voters is None:
            voters = await self.store.voters(row.id) if row.quorum > 1 else []
        await self._update_channel(row, voters)

    async def _finished_id(self, approval_id: str) -> None:
        row = await self.store.approval(approval_id)
        if row is not None:
            await self._finished(row)

    async def _update_channel(self, approval: Approval, voters: list[str]) -> None:
        try:
            await self.channel.update(approval, voters)
        except Exception as e:
            log.warning("could not update the message of %s: %s", approval.id, e)

    def _schedule_expiry(self, approval_id: str, expires_at: datetime) -> None:
        self.timers.at(approval_id, expires_at, self.expire, approval_id)

    def _unschedule(self, approval_id: str) -> None:
        self.timers.cancel(approval_id)
        self.escalation.unschedule(approval_id)

    # -- context and metrics (proxy.context, proxy.metrics) ----------------------------------------

    async def _probe(self, call: ToolCall, spec: ApprovalSpec, approval_id: str) -> dict[str, Any] | None:
        """The target's live state for a new request (a failed or slow probe says why; never raises)."""
        if self.prober is None or spec.context is None:
            return None
        return await self.prober.probe(call.upstream, spec.context, call.arguments, approval_id)

    async def _recheck_context(self, approval: Approval, confirmed: bool) -> ClickResult | None:
        """Read the target again at an approve click; ask once more if what was shown has changed."""
        if self.prober is None or not approval.context:
            return None
        stored = approval.context
        fresh = await self.prober.reprobe(approval)
        if fresh is not None and not same_state(stored, fresh):
            updated = after_click(stored, fresh)
            await self.store.set_fields(approval.id, context=updated)
            shown = replace(approval, context=updated)
            await self._update_channel(
                shown, await self.store.voters(approval.id) if approval.quorum > 1 else []
            )
            return ClickResult(False, PENDING, ask_again(updated), changed=context_json(updated))
        if stored.get("was") is not None and not confirmed:
            return ClickResult(False, PENDING, ask_again(stored), changed=context_json(stored))
        return None

    def _observe(self, row: Approval, via: str) -> None:
        """Count a final decision and how long it took (Prometheus)."""
        if self.metrics is None:
            return
        outcome = APPROVED if row.status == EXECUTED else row.status
        took = (row.decided_at - row.created_at).total_seconds() if row.decided_at else 0.0
        self.metrics.observe_decision(outcome, via, max(0.0, took))

    def _event(self, event: str, approval: Approval, user: str, detail: str | None, **columns: Any) -> None:
        if self.on_event is not None:
            self.on_event(event, approval, user, detail, **columns)


def _approved_message(row: Approval, grant: Grant | None) -> str:
    """What the approver is told when their approval won (a grant or an edit said plainly)."""
    parts = ["Approved"]
    if grant is not None:
        parts.append(f"for {grants.spoken(grants.duration(grant))} (grant {grant.id})")
    if row.edited_hash:
        changed = ", ".join(row.edited_paths or []) or "nothing visible"
        parts.append(f"with edited arguments (changed: {changed})")
    return " ".join(parts) + "."


def _plan_escalation(approval: Approval, spec: ApprovalSpec) -> None:
    """When (and where) the request escalates if still undecided; stored with it for every replica."""
    if spec.escalate_after is None:
        return
    approval.escalate_at = approval.created_at + timedelta(seconds=spec.escalate_after)
    if spec.escalate_to is not None:
        approval.escalate_channel = spec.escalate_to.channel
        approval.escalate_usergroup = spec.escalate_to.usergroup


def already_decided(approval: Approval) -> str:
    """The "too late" message for a click on a request that is no longer pending."""
    by = approval.decided_by or "someone"
    return {
        APPROVED: f"Already approved by {by}.",
        EXECUTED: f"Already approved by {by} and run.",
        DENIED: f"Already denied by {by}.",
        EXPIRED: "This request expired before anyone decided; the call was denied.",
        WITHDRAWN: f"Withdrawn: {approval.decision_reason or 'the agent cancelled'}. Nothing will run.",
    }.get(approval.status, f"Already decided ({approval.status}).")


def time_left(seconds: float) -> str:
    """Time left as a person would say it, never more than is left: 85 s is "85s", 9m40s is "9m"."""
    seconds = max(0, math.floor(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    if seconds >= 120:
        return f"{seconds // 60}m"
    return f"{seconds}s"
