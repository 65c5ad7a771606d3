"""The Slack approval channel: posts requests, rewrites them, and turns clicks into broker decisions.

Built on slack-bolt's `AsyncApp`, in the gateway's own loop. Socket Mode by default (no public URL);
HTTP mode serves Bolt on the control port at `/slack/events`, with Slack's signature and timestamp
checks left on. Every listener acks first and then calls `host.decide`, the broker's only door for
state changes; a click that changes nothing gets an ephemeral answer.

"Deny" denies at once (no reason needed); "Deny with reason" opens a modal whose reason is sent to
the agent. "Approve for 30 min" approves and grants a while (the message then carries a Revoke
button for the rule's approvers); "Edit and approve" opens a modal with the arguments as JSON, checked
before the modal closes. Posting retries 5xx, connection errors and 429 (honouring Retry-After) within
`slack.post_timeout`, then raises so the call fails closed with `approval_unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from prometheus_client import Counter
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot import blocks
from bot.slack_config import SlackConfig
from proxy.approvals import ClickResult, already_decided
from proxy.approvers import NOT_AN_APPROVER, Refused
from proxy.edits import parse_edit
from proxy.history import PastDecision, recent_decisions
from proxy.pagerduty import PagerDutyError
from proxy.records import PENDING, Approval, Grant, utcnow

if TYPE_CHECKING:
    from proxy.channels import ChannelHost

log = logging.getLogger("signoff.slack")

EVENTS_PATH = "/slack/events"
USERGROUP_TTL = 300.0  # seconds a user group's membership is trusted before asking Slack again
VIEWS_OPEN_BUDGET = 2.5  # a trigger_id dies 3 s after the click
CONNECT_TIMEOUT = 15.0
_POSTED_WAIT = 3.0  # how long a click waits to learn where its request was posted
_REF_TTL = 120.0  # how long we remember a just-posted message for an update that outruns the broker
ON_CALL_WAIT = 2.0  # how long a post waits to learn who is on call before saying it does not know
# Errors Slack documents as transient: worth another try within the budget.
_TRANSIENT = {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}
_BAD_TOKEN = {
    "invalid_auth",
    "not_authed",
    "token_revoked",
    "token_expired",
    "account_inactive",
    "not_allowed_token_type",
}


class SlackUnavailable(Exception):
    """A Slack Web API call failed for good (after the retries that make sense)."""

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error  # Slack's error code (`invalid_auth`, …) when Slack answered one


class SlackStartError(Exception):
    """The Slack channel cannot start: a bad token, a missing secret, Slack unreachable."""


def create_channel(config: SlackConfig, host: ChannelHost) -> SlackChannel:
    """Entry point `signoff.channels: slack`; never raises (checks happen in `start`)."""
    return SlackChannel(config, host)


class SlackChannel:
    """The `ApprovalChannel` for Slack, plus the Bolt app that receives clicks."""

    def __init__(self, config: SlackConfig, host: ChannelHost) -> None:
        self.config = config
        self.host = host
        self.base_url = config.api_url or AsyncWebClient.BASE_URL
        # Our own budgeted retry loop replaces slack_sdk's retry handlers, so none are installed.
        self.client = AsyncWebClient(
            token=config.bot_token, base_url=self.base_url, timeout=10, retry_handlers=[]
        )

        async def authorize() -> AuthorizeResult:
            # A plain function: Bolt passes arguments by parameter name, and a method's `self` confuses it.
            return await self._authorize()

        # Bolt gets a token-less client: it authorizes through `_authorize` (one cached auth.test).
        self.app = AsyncApp(
            client=AsyncWebClient(base_url=self.base_url, timeout=10),
            signing_secret=config.signing_secret or "",
            authorize=authorize,
            request_verification_enabled=True,
        )
        self._register_listeners()
        self._socket: AsyncSocketModeHandler | None = None
        self._me: dict[str, Any] | None = None
        self._me_lock = asyncio.Lock()
        self._groups: dict[str, tuple[float, set[str]]] = {}
        self._groups_lock = asyncio.Lock()
        self._posting: dict[str, tuple[float, asyncio.Future[tuple[str, str] | None]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._errors = Counter(
            "signoff_slack_api_errors",
            "Slack Web API calls that failed (each attempt), by method and kind",
            ["method", "kind"],
            registry=host.metrics.registry,
        )
        host.directory.usergroup_members = self.usergroup_members
        if config.mode == "http":
            # Added now: the control app freezes its routes when it starts, before `start()` runs.
            host.control_app.router.add_post(EVENTS_PATH, self._http_events)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the tokens and secret, resolve user groups, connect Socket Mode; raise if any fails."""
        try:
            me = await self._whoami()
        except SlackUnavailable as e:
            if e.error in _BAD_TOKEN:
                raise SlackStartError(
                    f"Slack rejected slack.bot_token (auth.test: {e.error}); "
                    "use the app's Bot User OAuth Token (xoxb-…)"
                ) from None
            raise SlackStartError(
                f"cannot reach Slack at {self.base_url} to check slack.bot_token: {e}"
            ) from None
        await self._check_usergroups()
        if self.config.mode == "http":
            if not self.config.signing_secret:
                raise SlackStartError("slack.signing_secret is required in http mode (Basic Information)")
        else:
            await self._connect_socket()
        log.info(
            "Slack: connected as @%s in %s (%s mode); default channel %s",
            me.get("user"),
            me.get("team"),
            self.config.mode,
            self.config.channel,
        )

    async def stop(self) -> None:
        """Let outcome replies in flight finish (briefly), then close the Socket Mode connection."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.config.post_timeout)
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close_async()
            self._socket = None

    async def _connect_socket(self) -> None:
        token = self.config.app_token or ""
        if not token.startswith("xapp-"):
            raise SlackStartError("Socket Mode needs slack.app_token: an app-level token (xapp-…)")
        # Ask for the websocket URL ourselves: the SDK's connect() retries a bad token forever.
        try:
            opened = await self._call(
                "apps.connections.open",
                lambda: self.client.apps_connections_open(app_token=token),
                self.config.post_timeout,
            )
        except SlackUnavailable as e:
            if e.error in _BAD_TOKEN:
                raise SlackStartError(
                    f"Slack rejected slack.app_token (apps.connections.open: {e.error}); "
                    "it must be an app-level token with the connections:write scope"
                ) from None
            raise SlackStartError(f"cannot open a Socket Mode connection: {e}") from None
        handler = AsyncSocketModeHandler(self.app, app_token=token)
        handler.client.wss_uri = opened["url"]
        try:
            await asyncio.wait_for(handler.connect_async(), CONNECT_TIMEOUT)
        except TimeoutError:
            await handler.close_async()
            raise SlackStartError(
                f"Socket Mode did not connect within {CONNECT_TIMEOUT:g}s (websocket to Slack blocked?)"
            ) from None
        self._socket = handler

    async def _check_usergroups(self) -> None:
        """Resolve every configured user group once, so a wrong id or missing scope fails at start."""
        for name, group in self.host.directory.groups.items():
            if not group.usergroup:
                continue
            try:
                await self.usergroup_members(group.usergroup)
            except SlackUnavailable as e:
                raise SlackStartError(
                    f"approvers.{name}.usergroup {group.usergroup!r}: {e} "
                    "(give the user group's id, S…, and the usergroups:read scope)"
                ) from None

    async def _whoami(self) -> dict[str, Any]:
        """The bot's identity from auth.test, asked once and cached (failures are not cached)."""
        async with self._me_lock:
            if self._me is None:
                response = await self._call("auth.test", self.client.auth_test, self.config.post_timeout)
                self._me = dict(response.data) if isinstance(response.data, dict) else {}
            return self._me

    async def _authorize(self) -> AuthorizeResult:
        me = await self._whoami()
        return AuthorizeResult(
            enterprise_id=me.get("enterprise_id"),
            team_id=me.get("team_id"),
            bot_user_id=me.get("user_id"),
            bot_id=me.get("bot_id"),
            bot_token=self.config.bot_token,
        )

    # -- ApprovalChannel -----------------------------------------------------------------------

    def where(self, approval: Approval) -> str:
        channel = approval.channel or self.config.channel
        return f"in {channel}" if channel.startswith("#") else f"in Slack channel {channel}"

    async def post(self, approval: Approval) -> tuple[str, str] | None:
        """Post the request to the rule's channel (or the default); retried within the budget, else raise."""
        channel = approval.channel or self.config.channel
        on_call = await self._on_call(approval)
        history = await self._history(approval)
        message = blocks.request_message(
            self._as_shown(approval), [], now=utcnow(), on_call=on_call, history=history
        )
        posted: asyncio.Future[tuple[str, str] | None] = asyncio.get_running_loop().create_future()
        self._forget_old_posts()
        self._posting[approval.id] = (time.monotonic(), posted)
        try:
            response = await self._call(
                "chat.postMessage",
                lambda: self.client.chat_postMessage(
                    channel=channel, unfurl_links=False, unfurl_media=False, **message
                ),
                self.config.post_timeout,
            )
        except BaseException:
            posted.set_result(None)
            self._posting.pop(approval.id, None)
            raise
        ref = (str(response["channel"]), str(response["ts"]))
        posted.set_result(ref)
        log.info("approval %s posted to %s (ts %s)", approval.id, ref[0], ref[1])
        return ref

    async def update(self, approval: Approval, voters: list[str]) -> None:
        """Re-render after a vote (buttons stay) or the final decision (buttons gone)."""
        ref = await self._message_of(approval)
        if ref is None:
            log.info("approval %s: no Slack message to update", approval.id)
            return
        shown, voters = self._as_shown(approval), [self._slack_name(v) for v in voters]
        if approval.status == PENDING:
            on_call = await self._on_call(approval)
            history = await self._history(approval)
            message = blocks.request_message(shown, voters, now=utcnow(), on_call=on_call, history=history)
        else:
            grant = await self._grant_shown(approval)
            message = blocks.decided_message(shown, voters, grant, now=utcnow())
        await self._call(
            "chat.update",
            lambda: self.client.chat_update(channel=ref[0], ts=ref[1], **message),
            self.config.post_timeout,
        )
        if approval.status != PENDING:
            self._posting.pop(approval.id, None)

    async def escalate(self, approval: Approval) -> None:
        """Nobody decided in time: re-post to `escalate_to.channel`, or broadcast a reply in the
        request's thread that mentions `escalate_to.usergroup` (neither: the PagerDuty incident only)."""
        ref = await self._message_of(approval)
        if approval.escalate_channel:
            where: dict[str, Any] = {"channel": approval.escalate_channel}
        elif approval.escalate_usergroup and ref is not None:
            where = {"channel": ref[0], "thread_ts": ref[1], "reply_broadcast": True}
        else:
            return
        link = blocks.permalink((await self._whoami()).get("url"), *ref) if ref else None
        message = blocks.escalation_message(
            self._as_shown(approval), now=utcnow(), usergroup=approval.escalate_usergroup, link=link
        )
        await self._call(
            "chat.postMessage",
            lambda: self.client.chat_postMessage(unfurl_links=False, unfurl_media=False, **where, **message),
            self.config.post_timeout,
        )
        log.info("approval %s: escalation posted to %s", approval.id, where["channel"])

    async def _on_call(self, approval: Approval) -> list[str] | None:
        """Who is on call for the request's approver group, as Slack user IDs where known (else names).

        None when the group follows no PagerDuty schedule; a short "unknown" when PagerDuty is slow or
        down, so that the request is still posted at once.
        """
        try:
            async with asyncio.timeout(ON_CALL_WAIT):
                people = await self.host.directory.on_call(approval.approvers)
        except (PagerDutyError, TimeoutError) as e:
            log.warning(
                "approval %s: cannot say who is on call: %s", approval.id, str(e) or "PagerDuty is slow"
            )
            return ["unknown (PagerDuty did not answer)"]
        if people is None:
            return None
        return [p.slack_user or p.name for p in people]

    async def _grant_shown(self, approval: Approval) -> Grant | None:
        """The grant a request created, with people named by their Slack user IDs."""
        if not approval.grant_id:
            return None
        grant = await self.host.store.grant(approval.grant_id)
        if grant is None:
            return None
        return replace(
            grant,
            created_by=",".join(self._slack_name(n) for n in grant.created_by.split(",") if n),
            revoked_by=self._slack_name(grant.revoked_by) if grant.revoked_by else None,
        )

    async def _history(self, approval: Approval) -> list[PastDecision] | None:
        """The caller's last decisions on the tool, deciders as Slack users; None if unreadable (the
        request is posted anyway: history is context, not a condition)."""
        try:
            past = await recent_decisions(self.host.store, approval)
        except Exception as e:
            log.warning("approval %s: could not read its history: %s", approval.id, e)
            return None
        named = (",".join(self._slack_name(n) for n in (d.decided_by or "").split(",") if n) for d in past)
        return [replace(d, decided_by=by or d.decided_by) for d, by in zip(past, named, strict=True)]

    async def announce_tool_change(self, upstream: str, tool: str, diff: str, action: str) -> None:
        """Post the change of a tool's definition, with its diff, to the default approval channel."""
        message = blocks.tool_change_message(upstream, tool, diff, action)
        await self._call(
            "chat.postMessage",
            lambda: self.client.chat_postMessage(
                channel=self.config.channel, unfurl_links=False, unfurl_media=False, **message
            ),
            self.config.post_timeout,
        )

    def _slack_name(self, name: str) -> str:
        """A person's Slack user ID when they have one, so the message mentions them; else the name."""
        return self.host.people.slack_id(name) or name

    def _as_shown(self, approval: Approval) -> Approval:
        """The request with people named by their Slack user IDs (rendered as mentions)."""
        decided_by = ",".join(self._slack_name(n) for n in (approval.decided_by or "").split(",") if n)
        return replace(
            approval,
            decided_by=decided_by or approval.decided_by,
            acts_for=self._slack_name(approval.acts_for) if approval.acts_for else None,
        )

    async def post_outcome(self, approval: Approval, outcome: str, detail: str | None) -> None:
        """A thread reply under the request: the approved call ran, and how it went.

        Sent in the background: the pipeline awaits this before the agent gets its result, and a
        slow or failing Slack must not hold back a call that has already run.
        """
        task = asyncio.create_task(self._reply_outcome(approval, outcome, detail))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reply_outcome(self, approval: Approval, outcome: str, detail: str | None) -> None:
        ref = await self._message_of(approval)
        if ref is None:
            return
        message = blocks.outcome_reply(approval, outcome, detail)
        try:
            await self._call(
                "chat.postMessage",
                lambda: self.client.chat_postMessage(
                    channel=ref[0], thread_ts=ref[1], unfurl_links=False, unfurl_media=False, **message
                ),
                self.config.post_timeout,
            )
        except SlackUnavailable as e:
            log.warning("approval %s: could not post the outcome: %s", approval.id, e)

    async def _message_of(self, approval: Approval) -> tuple[str, str] | None:
        """Where the request's message is: the stored row, or a post this process has in flight.

        A click can reach us before the broker has stored the (channel, ts) that `post` returned.
        """
        if approval.message_channel and approval.message_ts:
            return approval.message_channel, approval.message_ts
        entry = self._posting.get(approval.id)
        if entry is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(entry[1]), self.config.post_timeout)
        except TimeoutError:
            return None

    def _forget_old_posts(self) -> None:
        cutoff = time.monotonic() - _REF_TTL
        for approval_id, (at, fut) in list(self._posting.items()):
            if at < cutoff and fut.done():
                del self._posting[approval_id]

    # -- approver groups -----------------------------------------------------------------------

    async def usergroup_members(self, usergroup: str) -> set[str]:
        """Members of a Slack user group (usergroups.users.list), cached for USERGROUP_TTL seconds."""
        cached = self._groups.get(usergroup)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        async with self._groups_lock:
            cached = self._groups.get(usergroup)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
            try:
                response = await self._call(
                    "usergroups.users.list",
                    lambda: self.client.usergroups_users_list(usergroup=usergroup),
                    5.0,
                )
            except SlackUnavailable:
                if cached is not None:  # Slack is having a moment: the last answer beats none
                    log.warning("user group %s: using the membership cached earlier", usergroup)
                    return cached[1]
                raise
            members = {str(u) for u in response.get("users") or []}
            self._groups[usergroup] = (time.monotonic() + USERGROUP_TTL, members)
            return members

    # -- listeners -----------------------------------------------------------------------------

    def _register_listeners(self) -> None:
        self.app.action(blocks.APPROVE)(self._on_approve)
        self.app.action(blocks.DENY)(self._on_deny)
        self.app.action(blocks.DENY_WITH_REASON)(self._on_deny_with_reason)
        self.app.action(blocks.VIEW_ARGUMENTS)(self._on_view_arguments)
        self.app.action(blocks.APPROVE_ANYWAY)(self._on_approve_anyway)
        self.app.view(blocks.DENY_REASON_VIEW)(self._on_deny_reason)
        self.app.action(re.compile(f"^{blocks.APPROVE_FOR}_\\d+$"))(self._on_approve_for)
        self.app.action(blocks.EDIT_APPROVE)(self._on_edit_approve)
        self.app.view(blocks.EDIT_VIEW)(self._on_edited)
        self.app.action(blocks.REVOKE_GRANT)(self._on_revoke_grant)

    async def _http_events(self, request: web.Request) -> web.Response:
        """HTTP mode: Bolt verifies the signature and timestamp (401 otherwise), then dispatches."""
        response = await self.app.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    async def _on_approve(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        await self._click(body, str(action.get("value", "")), approve=True, reason=None)

    async def _on_approve_anyway(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        """ "Approve anyway" on the ephemeral question asked when the target changed since it was shown."""
        await ack()
        container = body.get("container") or {}
        if container.get("is_ephemeral"):
            # Only the clicker sees that message, and it is ours: the click is checked against the
            # request's channel, not against the ephemeral message's own timestamp.
            container = {k: v for k, v in container.items() if k != "message_ts"}
            body = {**body, "container": container, "message": None}
        await self._click(body, str(action.get("value", "")), approve=True, reason=None, confirm_changed=True)

    async def _on_deny(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        await self._click(body, str(action.get("value", "")), approve=False, reason=None)

    async def _on_deny_with_reason(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        approval_id = str(action.get("value", ""))
        # Checked like a click, before the modal opens: the modal's submission carries no message to
        # check against, so a button copied into another message must not get that far.
        refusal = await self._may_open(body, approval_id, "deny this request")
        if refusal is not None:
            await self._tell(body, approval_id, refusal)
            return
        await self._open_view(body, blocks.deny_reason_modal(approval_id))

    async def _on_view_arguments(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        approval_id = str(action.get("value", ""))
        refusal = await self._may_open(body, approval_id, "view this request's arguments")
        if refusal is not None:
            await self._tell(body, approval_id, refusal)
            return
        approval = await self.host.store.approval(approval_id)
        if approval is not None:
            await self._open_view(body, blocks.full_arguments_modal(approval))

    async def _may_open(self, body: dict[str, Any], approval_id: str, what: str) -> str | None:
        """Why the clicker may not open a modal of this request (escaped mrkdwn), or None if they may."""
        user = str((body.get("user") or {}).get("id", ""))
        approval = await self.host.store.approval(approval_id)
        if approval is None:
            return "This approval request no longer exists."
        foreign = await self._foreign(body, approval_id, user)
        if foreign is not None:
            return blocks.escape(foreign)
        person = self.host.people.by_slack(user)
        verdict = await self.host.directory.check(approval.approvers, person) if user else Refused("")
        if isinstance(verdict, Refused):
            self.host.audit_event("refused_click", approval, person.name, f"{verdict.short} ({what})")
            if verdict.short != NOT_AN_APPROVER:
                return blocks.escape(verdict.why)
            return blocks.escape(
                f"Only this request's approvers ({approval.approvers}) may {what}; nothing changed."
            )
        return None

    async def _on_deny_reason(self, ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        values = (view.get("state") or {}).get("values") or {}
        reason = ((values.get(blocks.REASON_BLOCK) or {}).get(blocks.REASON_ACTION) or {}).get("value")
        error = blocks.reason_error(reason)
        if error is not None:
            await ack(response_action="errors", errors={blocks.REASON_BLOCK: error})
            return
        await ack()
        assert reason is not None
        await self._click(body, str(view.get("private_metadata", "")), approve=False, reason=reason.strip())

    # -- approving for a while, editing, revoking -------------------------------------------------

    async def _on_approve_for(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        approval_id, _, seconds = str(action.get("value", "")).partition("|")
        try:
            grant_for = float(seconds)
        except ValueError:
            return
        await self._click(body, approval_id, approve=True, reason=None, grant_for=grant_for)

    async def _on_edit_approve(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        approval_id = str(action.get("value", ""))
        refusal = await self._may_open(body, approval_id, "edit this request")
        if refusal is not None:
            await self._tell(body, approval_id, refusal)
            return
        approval = await self.host.store.approval(approval_id)
        if approval is None:
            return
        if approval.status != PENDING:
            await self._tell(body, approval_id, blocks.escape(already_decided(approval)))
            return
        view = blocks.edit_modal(approval) if blocks.editable(approval) else None
        if view is None:
            why = (
                f"This request cannot be edited in Slack (its arguments are longer than {blocks.EDIT_TEXT} "
                "characters, it needs several approvers, or its tool declares no input schema). Use the "
                f"approvals page or `signoff approvals approve {approval_id} --arguments FILE`."
            )
            await self._tell(body, approval_id, blocks.escape(why))
            return
        await self._open_view(body, view)

    async def _on_edited(self, ack: Any, body: dict[str, Any], view: dict[str, Any]) -> None:
        """The edit modal's submission: refused edits stay open with the reason; others approve."""
        approval_id = str(view.get("private_metadata", ""))
        values = (view.get("state") or {}).get("values") or {}
        text = ((values.get(blocks.EDIT_BLOCK) or {}).get(blocks.EDIT_ACTION) or {}).get("value") or ""
        edited = parse_edit(text)
        problem = edited if isinstance(edited, str) else None
        if problem is None and self.host.check_edit is not None:
            person = self.host.people.by_slack(str((body.get("user") or {}).get("id", "")))
            problem = await self.host.check_edit(approval_id, edited, person)
        elif problem is None:
            problem = "this gateway cannot check edits"
        if problem is not None:
            await ack(response_action="errors", errors={blocks.EDIT_BLOCK: _cut(f"Refused: {problem}", 2000)})
            return
        await ack()
        await self._click(body, approval_id, approve=True, reason=None, arguments=edited)

    async def _on_revoke_grant(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        grant_id = str(action.get("value", ""))
        user = str((body.get("user") or {}).get("id", ""))
        grant = await self.host.store.grant(grant_id)
        approval_id = grant.approval_id if grant is not None else ""
        # The button must be on the message of the request that created the grant.
        foreign = await self._foreign(body, approval_id, user) if grant is not None else None
        if foreign is not None or grant is None or self.host.revoke_grant is None:
            text = foreign or f"There is no grant {grant_id}; nothing changed."
            await self._tell(body, approval_id, blocks.escape(text))
            return
        person = self.host.people.by_slack(user)
        try:
            result = await self.host.revoke_grant(grant_id, person)
        except Exception as e:
            log.exception("grant %s: revoke by %s failed", grant_id, user)
            text = f"Your click was not recorded ({_describe(e)}). The grant stays in force."
            await self._tell(body, approval_id, blocks.escape(text))
            return
        log.info("grant %s: revoke by %s -> %s", grant_id, user, result.status)
        if not result.accepted:
            await self._tell(body, approval_id, blocks.escape(result.message))

    async def _click(
        self, body: dict[str, Any], approval_id: str, *, approve: bool, reason: str | None, **extras: Any
    ) -> None:
        """One decision through the broker; tell the clicker privately when it changed nothing."""
        user = str((body.get("user") or {}).get("id", ""))
        verb = "approve" if approve else "deny"
        foreign = await self._foreign(body, approval_id, user)
        if foreign is not None:
            await self._tell(body, approval_id, blocks.escape(foreign))
            return
        person = self.host.people.by_slack(user)
        try:
            result = await self.host.decide(approval_id, approve, person, reason, **extras)
        except Exception as e:
            log.exception("approval %s: %s by %s failed", approval_id, verb, user)
            text = f"Your click was not recorded ({_describe(e)}). Nothing changed."
            await self._tell(body, approval_id, blocks.escape(text))
            return
        log.info("approval %s: %s by %s -> %s (%s)", approval_id, verb, user, result.status, result.accepted)
        if result.changed is not None:
            # The target changed since the request was shown: ask this person once more, privately.
            await self._tell(body, approval_id, "", blocks.changed_prompt(approval_id, result.message))
        elif not result.accepted:
            await self._tell(body, approval_id, await self._click_message(approval_id, result))

    async def _foreign(self, body: dict[str, Any], approval_id: str, user: str) -> str | None:
        """Why a click must not count: it comes from another workspace, or from a message other than
        the request's own (a forwarded or replayed payload). None when it may go to the broker."""
        team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id")
        ours = (await self._whoami()).get("team_id")
        approval = await self.host.store.approval(approval_id)
        container = body.get("container") or {}
        channel = (body.get("channel") or {}).get("id") or container.get("channel_id")
        message_ts = container.get("message_ts") or (body.get("message") or {}).get("ts")
        why = None
        if team and ours and team != ours:
            why = "This click came from another Slack workspace; nothing changed."
        elif approval is not None and channel:  # a button on a message, not a modal submission
            posted = await self._posted_at(approval)
            if posted is None:
                why = "This approval request is still being posted; nothing changed. Try again in a moment."
            elif channel != posted[0] or (message_ts and message_ts != posted[1]):
                why = "This approval request was not posted in this message; nothing changed."
        if why is not None and approval is not None:
            log.warning("approval %s: refused a click by %s: %s", approval_id, user, why)
            self.host.audit_event("refused_click", approval, user, why)
        return why

    async def _posted_at(self, approval: Approval) -> tuple[str, str] | None:
        """Where the request was posted; waits briefly when the replica that posted it has not stored
        the message yet, because a click can outrun that write."""
        deadline = time.monotonic() + _POSTED_WAIT
        while True:
            ref = await self._message_of(approval)
            if ref is not None or time.monotonic() >= deadline:
                return ref
            await asyncio.sleep(0.05)
            approval = await self.host.store.approval(approval.id) or approval

    async def _click_message(self, approval_id: str, result: ClickResult) -> str:
        """The broker's message, escaped, with the deciders turned into mentions where Slack knows them."""
        text = blocks.escape(result.message)
        if result.status == PENDING:
            return text
        approval = await self.host.store.approval(approval_id)
        names = [v for v in (approval.decided_by or "").split(",") if v] if approval else []
        ids = {n: self._slack_name(n) for n in names}
        ids = {n: u for n, u in ids.items() if blocks.mention(u) != blocks.escape(u)}
        if ids:
            names = sorted(ids, key=len, reverse=True)
            pattern = re.compile(r"(?<![\w@])(" + "|".join(map(re.escape, names)) + r")(?!\w)")
            text = pattern.sub(lambda m: f"<@{ids[m.group(1)]}>", text)
        return text

    async def _tell(
        self, body: dict[str, Any], approval_id: str, text: str, message: dict[str, Any] | None = None
    ) -> None:
        """An ephemeral message to whoever clicked, in the channel of the request (`text`, or a
        rendered `message` with blocks)."""
        user = str((body.get("user") or {}).get("id", ""))
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        if not channel:  # a modal submission: the request's own channel
            approval = await self.host.store.approval(approval_id)
            channel = approval.message_channel if approval else None
        if not channel or not user:
            log.warning("approval %s: cannot tell %s: %s", approval_id, user or "?", text)
            return
        try:
            content = message or {"text": text}
            await self._call(
                "chat.postEphemeral",
                lambda: self.client.chat_postEphemeral(channel=channel, user=user, **content),
                self.config.post_timeout,
            )
        except SlackUnavailable as e:
            log.warning("approval %s: could not answer %s: %s", approval_id, user, e)

    async def _open_view(self, body: dict[str, Any], view: dict[str, Any]) -> None:
        trigger = body.get("trigger_id")
        try:
            await self._call(
                "views.open",
                lambda: self.client.views_open(trigger_id=trigger, view=view),
                VIEWS_OPEN_BUDGET,
            )
        except SlackUnavailable as e:
            log.warning("could not open a modal for %s: %s", (body.get("user") or {}).get("id"), e)

    # -- Web API calls with retries ------------------------------------------------------------

    async def _call(
        self, method: str, call: Callable[[], Awaitable[AsyncSlackResponse]], budget: float
    ) -> AsyncSlackResponse:
        """Call Slack, retrying 5xx, transient errors, connection errors and 429 within `budget` seconds."""
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            attempt += 1
            error: str | None = None
            try:
                async with asyncio.timeout(max(0.05, deadline - time.monotonic())):
                    return await call()
            except SlackApiError as e:
                status, error = e.response.status_code, _error_code(e)
                if status == 429 or error == "ratelimited":
                    delay = _retry_after(e)
                    why, kind = f"rate limited (Retry-After {delay:g}s)", "429"
                elif status >= 500 or error in _TRANSIENT:
                    delay, why, kind = _backoff(attempt), f"HTTP {status} {error or ''}".strip(), "5xx"
                else:
                    self._errors.labels(method, "error").inc()
                    raise SlackUnavailable(
                        f"Slack {method} failed: {error or f'HTTP {status}'}", error
                    ) from None
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                delay, why, kind = _backoff(attempt), _describe(e), "connection"
            self._errors.labels(method, kind).inc()
            remaining = deadline - time.monotonic()
            if kind != "429":
                delay = min(delay, remaining - 0.25)  # so that a last attempt still fits in the budget
            if delay + 0.1 >= remaining or (kind != "429" and delay < 0.05):
                raise SlackUnavailable(
                    f"Slack {method} failed after {attempt} attempt(s) within {budget:g}s: {why}", error
                ) from None
            log.warning("Slack %s: %s; retrying in %.2fs", method, why, delay)
            await asyncio.sleep(delay)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_code(e: SlackApiError) -> str | None:
    try:
        error = e.response.get("error")
    except Exception:  # a non-JSON body (an HTML error page)
        return None
    return str(error) if error else None


def _retry_after(e: SlackApiError) -> float:
    try:
        return max(0.0, float(e.response.headers.get("Retry-After", "1")))
    except (TypeError, ValueError):
        return 1.0


def _backoff(attempt: int) -> float:
    """0.25 s, 0.5 s, 1 s, 2 s, 2 s…, with ±20 % jitter so replicas don't retry in step."""
    return min(2.0, 0.25 * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
