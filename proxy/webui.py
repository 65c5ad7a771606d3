"""The embedded approval channel: a web page and JSON API on the control port (no Slack needed).

`GET /approvals` serves the page. The API under `/api/` answers people signed in to the page, a
person's own bearer token (the CLI) and, for viewing only, the admin token (see `proxy.signin`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from importlib import resources
from typing import Any

from aiohttp import web

from proxy import grants
from proxy.approvals import Broker, ClickResult
from proxy.audit_view import audit_json
from proxy.context import context_json
from proxy.history import PastDecision, history_json, recent_decisions
from proxy.pins import action_text
from proxy.records import EXECUTED, PENDING, Approval, Grant, utcnow
from proxy.redact import display_mask
from proxy.signin import SignIn
from proxy.store import Store
from proxy.webjson import json_error, json_response

log = logging.getLogger("signoff.web")


class WebChannel:
    """Approval requests shown on the approvals page; the page reads them from the database."""

    def __init__(self, page_url: str) -> None:
        self.page_url = page_url

    def where(self, approval: Approval) -> str:
        return "on the approvals page"

    async def post(self, approval: Approval) -> tuple[str, str] | None:
        log.warning(
            "approval %s: %s wants to run %s — decide at %s",
            approval.id,
            approval.identity,
            approval.tool,
            self.page_url,
        )
        return None

    async def update(self, approval: Approval, voters: list[str]) -> None:
        if approval.status != PENDING:
            # "executed" means approved and claimed by the waiting call; people read that as approved.
            status = "approved" if approval.status == EXECUTED else approval.status
            log.info("approval %s: %s (%s)", approval.id, status, approval.decided_by or "-")

    async def post_outcome(self, approval: Approval, outcome: str, detail: str | None) -> None:
        log.info("approval %s ran: %s", approval.id, outcome)

    async def escalate(self, approval: Approval) -> None:
        log.warning("approval %s: still undecided; escalated — decide at %s", approval.id, self.page_url)

    async def announce_tool_change(self, upstream: str, tool: str, diff: str, action: str) -> None:
        log.warning(
            "upstream %s changed the definition of %s. %s See `signoff tools diff`, then "
            "`signoff tools accept %s`:\n%s",
            upstream,
            tool,
            action_text(action),
            tool,
            diff,
        )


def approval_json(
    a: Approval, voters: list[str] | None = None, history: list[PastDecision] | None = None
) -> dict[str, Any]:
    """The API's view of an approval: every argument as it will run, secrets masked where they stand;
    the target's live state (`context`) and, when given, the last decisions on the tool (`history`)."""
    left = max(0.0, (a.expires_at - utcnow()).total_seconds()) if a.status == PENDING else 0.0
    return {
        "id": a.id,
        "status": a.status,
        "mode": a.mode,
        "tool": a.tool,
        "upstream": a.upstream,
        "identity": a.identity,
        "actsFor": a.acts_for,
        "client": a.client_name,
        "risk": a.risk,
        "rule": a.rule,
        "ruleReason": a.rule_reason,
        "arguments": a.arguments,
        "argumentsHash": a.args_hash,
        "approvers": a.approvers,
        "quorum": a.quorum,
        "votes": voters or [],
        "createdAt": _iso(a.created_at),
        "expiresAt": _iso(a.expires_at),
        "secondsLeft": round(left, 1),
        "decidedAt": _iso(a.decided_at),
        "decidedBy": a.decided_by,
        "reason": a.decision_reason,
        "outcome": a.outcome,
        "context": context_json(a.context),
        "history": history_json(history) if history is not None else None,
        **_grant_and_edit_json(a),
    }


def _grant_and_edit_json(a: Approval) -> dict[str, Any]:
    """What a request offers (approving for a while) and how it was approved (a grant, an edit)."""
    offer = a.grant_offer
    edited = None
    if a.edited_hash is not None:
        edited = {
            "from": a.args_hash,
            "to": a.edited_hash,
            "changed": a.edited_paths or [],
            # Every byte that ran, with secrets masked where they stand, like the original arguments.
            "arguments": display_mask(a.edited_arguments),
        }
    return {
        "grantOffer": {
            "offer": grants.offered(a),
            "offerText": [grants.spoken(o) for o in grants.offered(a)],
            "max": offer.get("max"),
            "same": offer.get("same") or [],
            "values": offer.get("values") or {},
        }
        if offer
        else None,
        "grantId": a.grant_id,
        "editable": a.quorum <= 1 and a.input_schema is not None,  # see Broker._edit_problem
        "edited": edited,
    }


def grant_json(g: Grant) -> dict[str, Any]:
    """The API's view of a grant: what it covers, who gave it, until when, and whether it still holds."""
    now = utcnow()
    return {
        "id": g.id,
        "state": grants.grant_state(g, now),
        "identity": g.identity,
        "upstream": g.upstream,
        "tool": g.tool,
        "rule": g.rule,
        "same": g.same,
        "values": g.values,
        "covers": grants.covers(g),
        "createdBy": g.created_by,
        "createdAt": _iso(g.created_at),
        "expiresAt": _iso(g.expires_at),
        "secondsLeft": round(max(0.0, (g.expires_at - now).total_seconds()), 1) if not g.revoked_at else 0.0,
        "revokedAt": _iso(g.revoked_at),
        "revokedBy": g.revoked_by,
        "approvalId": g.approval_id,
    }


class ApprovalsApi:
    """Routes for the page and `signoff approvals`: anyone signed in views; only a person decides."""

    def __init__(self, app: web.Application, store: Store, broker: Broker, signin: SignIn) -> None:
        self.store = store
        self.broker = broker
        self.signin = signin
        app.router.add_get("/approvals", self.page)
        app.router.add_get("/api/approvals", self.list)
        app.router.add_get("/api/approvals/{id}", self.get)
        app.router.add_post("/api/approvals/{id}/decide", self.decide)
        app.router.add_get("/api/audit", self.audit)
        app.router.add_get("/api/grants", self.list_grants)
        app.router.add_post("/api/grants/{id}/revoke", self.revoke_grant)

    async def page(self, _: web.Request) -> web.Response:
        html = resources.files("proxy").joinpath("web/approvals.html").read_text()
        return web.Response(
            text=html,
            content_type="text/html",
            headers={
                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'",
                "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            },
        )

    async def list(self, request: web.Request) -> web.Response:
        await self.signin.viewer(request)
        status = request.query.get("status", "pending")
        if status not in _STATUSES:
            raise json_error(web.HTTPBadRequest, f"status must be one of {', '.join(_STATUSES)}")
        limit = _int(request.query.get("limit"), 100)
        rows = await self.store.approvals(None if status == "all" else status, limit=limit)
        histories: dict[tuple[str, str], list[PastDecision]] = {}  # one query per caller and tool
        out = []
        for a in rows:
            history = None
            if a.status == PENDING:
                key = (a.identity, a.tool)
                if key not in histories:  # decided requests only, so the same for every pending one
                    histories[key] = await recent_decisions(self.store, a)
                history = histories[key]
            out.append(approval_json(a, await self.store.voters(a.id) if a.quorum > 1 else None, history))
        return json_response({"approvals": out})

    async def get(self, request: web.Request) -> web.Response:
        await self.signin.viewer(request)
        a = await self.store.approval(request.match_info["id"])
        if a is None:
            raise json_error(web.HTTPNotFound, "no such approval")
        history = await recent_decisions(self.store, a)
        return json_response(approval_json(a, await self.store.voters(a.id), history))

    async def decide(self, request: web.Request) -> web.Response:
        person = await self.signin.decider(request)
        try:
            body = await request.json()
        except ValueError:
            raise json_error(web.HTTPBadRequest, "the body must be JSON")
        if not isinstance(body, dict):
            raise json_error(web.HTTPBadRequest, "the body must be a JSON object")
        if "user" in body:
            # Deciding "as" someone else was how the admin token impersonated people; name it plainly.
            raise json_error(
                web.HTTPBadRequest,
                "`user` is not accepted: decisions are made as the signed-in person "
                f"({person.name}); remove it",
            )
        decision = body.get("decision")
        reason = body.get("reason") or None
        if decision not in ("approve", "deny"):
            raise json_error(web.HTTPBadRequest, "give decision: approve or deny")
        if decision == "deny" and (not isinstance(reason, str) or not reason.strip()):
            raise json_error(web.HTTPBadRequest, "a denial needs a reason (it is shown to the agent)")
        if reason is not None and not isinstance(reason, str):
            raise json_error(web.HTTPBadRequest, "reason must be a string")
        confirm_changed = body.get("confirmChanged", False)
        if not isinstance(confirm_changed, bool):
            raise json_error(web.HTTPBadRequest, "confirmChanged must be true or false")
        grant_for, arguments = _approve_extras(body, decision)
        result = await self.broker.decide(
            request.match_info["id"],
            decision == "approve",
            person,
            reason.strip() if reason else None,
            grant_for=grant_for,
            arguments=arguments,
            confirm_changed=confirm_changed,
        )
        status = _http_status(result)
        answer = {
            "accepted": result.accepted,
            "status": result.status,
            "message": result.message,
            "by": person.name,
        }
        if result.changed is not None:
            # 409: the target changed since the request was shown; approve again with confirmChanged.
            answer["contextChanged"] = result.changed
        return json_response(answer, status=status)

    async def list_grants(self, request: web.Request) -> web.Response:
        await self.signin.viewer(request)
        status = request.query.get("status", "live")
        if status not in ("live", "all"):
            raise json_error(web.HTTPBadRequest, "status must be live or all")
        rows = await self.store.grants(
            live_at=utcnow() if status == "live" else None, limit=_int(request.query.get("limit"), 100)
        )
        return json_response({"grants": [grant_json(g) for g in rows]})

    async def revoke_grant(self, request: web.Request) -> web.Response:
        person = await self.signin.decider(request)
        result = await self.broker.revoke_grant(request.match_info["id"], person)
        status = _http_status(result)
        body = {"accepted": result.accepted, "status": result.status, "message": result.message}
        return json_response({**body, "by": person.name}, status=status)

    async def audit(self, request: web.Request) -> web.Response:
        await self.signin.viewer(request)
        rows = await self.store.audit(
            limit=_int(request.query.get("limit"), 50),
            identity=request.query.get("identity"),
            tool=request.query.get("tool"),
            decision=request.query.get("decision"),
        )
        return json_response({"records": [audit_json(r) for r in rows]})


def _http_status(result: ClickResult) -> int:
    """A decision's answer as HTTP: done, not yours to make, no such thing, malformed, or too late."""
    if result.accepted:
        return 200
    if result.refused:
        return 403
    if result.status == "unknown":
        return 404
    return 400 if result.invalid else 409


def _approve_extras(body: dict[str, Any], decision: str) -> tuple[float | str | None, dict[str, Any] | None]:
    """`for` (approve for a while) and `arguments` (edit and approve) from a decision's body."""
    grant_for, arguments = body.get("for"), body.get("arguments")
    if decision != "approve" and (grant_for is not None or arguments is not None):
        raise json_error(web.HTTPBadRequest, "`for` and `arguments` go with decision: approve")
    duration_like = isinstance(grant_for, str | int | float) and not isinstance(grant_for, bool)
    if grant_for is not None and not duration_like:
        raise json_error(web.HTTPBadRequest, '`for` must be a duration such as "30m", or seconds')
    if arguments is not None and not isinstance(arguments, dict):
        raise json_error(web.HTTPBadRequest, "`arguments` must be a JSON object: the call's edited arguments")
    return grant_for, arguments


_STATUSES = ("all", "pending", "approved", "denied", "expired", "withdrawn", "executed")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _int(value: str | None, default: int) -> int:
    try:
        return max(1, min(int(value or default), 1000))
    except ValueError:
        return default
