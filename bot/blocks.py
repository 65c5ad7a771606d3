"""Block Kit rendering of approval requests, decisions, outcomes and modals: pure functions, no I/O.

Everything an agent controls (tool and upstream names, identity, client name, arguments, upstream
output) and everything a person typed (deny reasons) is escaped before it reaches mrkdwn, so
`<!channel>`, `<@U…>` or `<http://evil|click>` show as text and never notify or link. Only the
mentions and dates we build ourselves are live. Sizes stay within Slack's documented limits:
section text 3,000 characters, 10 fields of 2,000, header 150, button value 2,000, confirm text 300,
50 blocks per message, 100 per modal, modal title 24, private_metadata 3,000.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from proxy import grants
from proxy.context import change_text, summary
from proxy.history import PastDecision
from proxy.pins import action_text
from proxy.records import APPROVED, DENIED, EXECUTED, EXPIRED, PENDING, WITHDRAWN, Approval, Grant
from proxy.redact import display_mask, redact_text

# Action and view ids: the listeners in bot/slack.py match on these.
APPROVE = "signoff_approve"
DENY = "signoff_deny"
DENY_WITH_REASON = "signoff_deny_reason"
VIEW_ARGUMENTS = "signoff_view_arguments"
APPROVE_ANYWAY = "signoff_approve_anyway"  # the second yes when the target changed since it was shown
DENY_REASON_VIEW = "signoff_deny_reason"
REASON_BLOCK = "reason"
REASON_ACTION = "reason"
MIN_REASON = 3
# Approving for a while (one button per offered duration: `signoff_approve_for_0`, `_1`, …), editing.
APPROVE_FOR = "signoff_approve_for"
EDIT_APPROVE = "signoff_edit_approve"
EDIT_VIEW = "signoff_edit_approve"
EDIT_BLOCK = "arguments"
EDIT_ACTION = "arguments"
REVOKE_GRANT = "signoff_revoke_grant"
EDIT_TEXT = 3000  # a plain_text_input holds at most this many characters

# Slack's limits (docs.slack.dev/reference/block-kit), with a little headroom where we compose text.
SECTION_TEXT = 3000
FIELD_TEXT = 2000
HEADER_TEXT = 150
CONTEXT_TEXT = 2000
MESSAGE_BLOCKS = 50
MODAL_BLOCKS = 100
MODAL_TITLE = 24
BUTTON_VALUE = 2000
CONFIRM_TEXT = 300
MESSAGE_TEXT = 3000  # the notification fallback; Slack truncates far later, but nobody reads more

# How the arguments preview shortens big values before the whole preview is cut to fit.
_PREVIEW_STRING = 300
_PREVIEW_ITEMS = 25
_PREVIEW_DEPTH = 6
_INLINE = 200  # identifiers shown inline (tool, identity, client)

_SLACK_ID = re.compile(r"[UW][A-Z0-9_]{1,40}")
_USERGROUP_ID = re.compile(r"S[A-Z0-9_]{1,40}")
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9_]{1,40}")
_TS = re.compile(r"[0-9]{1,12}\.[0-9]{1,9}")
_ZWSP = "\u200b"
# Look-alikes that Slack never parses: a backtick inside inline code, angle brackets in plain_text.
_GRAVE, _LT, _GT = "\u02cb", "\u2039", "\u203a"

_RISK = {
    "destructive": (":rotating_light:", ":red_circle: *destructive*"),
    "write": (":warning:", ":large_orange_circle: write"),
    "read": (":information_source:", ":large_green_circle: read"),
}


# -- escaping -------------------------------------------------------------------------------------


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: `&`, `<`, `>` become entities, so no control sequence survives."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def inline(text: str, limit: int = _INLINE) -> str:
    """An untrusted identifier as inline code: one line, escaped, no backtick to break out of the span."""
    flat = " ".join(str(text).split()) or "-"
    return "`" + escape(_cut(flat, limit)).replace("`", _GRAVE) + "`"


def plain(text: str, limit: int) -> str:
    """Text for a plain_text object: one line, cut, and without angle brackets at all."""
    flat = " ".join(str(text).split())
    return _cut(flat.replace("<", _LT).replace(">", _GT), limit)


def mention(user: str) -> str:
    """`<@U…>` for a Slack user id; anything else is shown escaped, never as a live mention."""
    return f"<@{user}>" if _SLACK_ID.fullmatch(user) else escape(user)


def code_block(text: str) -> str:
    """A fenced code block whose content cannot close the fence or become live mrkdwn."""
    return "```\n" + _code(text) + "\n```"


def _code(text: str) -> str:
    # A zero-width space after each backtick: looks the same, but never forms a closing ``` fence.
    return escape(text).replace("`", "`" + _ZWSP)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


# -- small builders -------------------------------------------------------------------------------


def _mrkdwn(text: str) -> dict[str, Any]:
    # verbatim: no automatic linking of bare URLs, #channels or @mentions in what we show.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _plain_text(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": plain(text, limit), "emoji": True}


def _section(text: str, block_id: str | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "section", "text": _mrkdwn(_cut(text, SECTION_TEXT))}
    if block_id:
        block["block_id"] = block_id
    return block


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [_mrkdwn(_cut(text, CONTEXT_TEXT))]}


def _button(text: str, action_id: str, value: str, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": _plain_text(text, 75),
        "value": value[:BUTTON_VALUE],
    }
    if style:
        button["style"] = style
    return button


def _date(when: datetime, token: str, fallback_format: str) -> str:
    """Slack's `<!date^…>`: shown in each reader's time zone, with a UTC fallback."""
    return f"<!date^{int(when.timestamp())}^{token}|{when.strftime(fallback_format)} UTC>"


def human_duration(seconds: float) -> str:
    """`45s`, `10m`, `1h30m`, `2d`: how long a request could wait."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        m, s = divmod(seconds, 60)
        return f"{m}m" if s == 0 else f"{m}m{s:02d}s"
    if seconds < 86400:
        h, m = divmod(seconds // 60, 60)
        return f"{h}h" if m == 0 else f"{h}h{m:02d}m"
    d, h = divmod(seconds // 3600, 24)
    return f"{d}d" if h == 0 else f"{d}d{h:02d}h"


# -- arguments ------------------------------------------------------------------------------------


def pretty_arguments(arguments: Any) -> str:
    """The arguments as indented JSON (redacted by the broker); short scalar lists stay on one line."""
    return _pretty(arguments, 0)


def _pretty(value: Any, level: int) -> str:
    pad, end = "  " * (level + 1), "  " * level
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}{_scalar(str(k))}: {_pretty(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        if not any(isinstance(v, dict | list | tuple) for v in value):
            flat = "[" + ", ".join(_scalar(v) for v in value) + "]"
            if len(flat) <= 72:
                return flat
        return "[\n" + ",\n".join(pad + _pretty(v, level + 1) for v in value) + "\n" + end + "]"
    return _scalar(value)


def _scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _shorten(value: Any, depth: int = 0) -> tuple[Any, bool]:
    """A preview of `value`: long strings, long lists and deep nesting cut, with a visible marker."""
    if isinstance(value, str):
        if len(value) > _PREVIEW_STRING:
            return f"{value[:_PREVIEW_STRING]}… (+{len(value) - _PREVIEW_STRING} chars)", True
        return value, False
    if isinstance(value, dict):
        if depth >= _PREVIEW_DEPTH:
            return f"{{… {_count(len(value), 'key')}}}", True
        out: dict[str, Any] = {}
        cut = False
        for i, (k, v) in enumerate(value.items()):
            if i == _PREVIEW_ITEMS:
                out["…"] = f"+{len(value) - _PREVIEW_ITEMS} more keys"
                cut = True
                break
            out[str(k)[:_PREVIEW_STRING]], c = _shorten(v, depth + 1)
            cut = cut or c or len(str(k)) > _PREVIEW_STRING
        return out, cut
    if isinstance(value, list | tuple):
        if depth >= _PREVIEW_DEPTH:
            return f"[… {_count(len(value), 'item')}]", True
        items = []
        cut = False
        for v in value[:_PREVIEW_ITEMS]:
            short, c = _shorten(v, depth + 1)
            items.append(short)
            cut = cut or c
        if len(value) > _PREVIEW_ITEMS:
            items.append(f"… +{len(value) - _PREVIEW_ITEMS} more items")
            cut = True
        return items, cut
    return value, False


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fit_lines(text: str, budget: int) -> tuple[str, bool]:
    """The longest prefix of `text`, by whole lines where possible, whose code form fits `budget`."""
    if len(_code(text)) <= budget:
        return text, False
    marker = "\n…"
    budget -= len(marker)
    kept: list[str] = []
    used = 0
    for line in text.split("\n"):
        cost = len(_code(line)) + (1 if kept else 0)
        if used + cost > budget:
            room = budget - used - (1 if kept else 0)
            if room > 20:  # a partial long line is better than nothing
                kept.append(_prefix_within(line, room))
            break
        kept.append(line)
        used += cost
    return "\n".join(kept) + marker, True


def _prefix_within(line: str, budget: int) -> str:
    """The longest prefix of `line` whose escaped code form is at most `budget` characters."""
    lo, hi = 0, len(line)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(_code(line[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return line[:lo]


def arguments_preview(arguments: Any) -> tuple[str, bool]:
    """The arguments section's mrkdwn and whether anything was cut (then "View all arguments" shows)."""
    label = "*Arguments*\n"
    if not arguments:
        return label + "_(none)_", False
    short, cut = _shorten(arguments)
    fence = len("```\n") + len("\n```")
    text, clipped = _fit_lines(pretty_arguments(short), SECTION_TEXT - 100 - len(label) - fence)
    return label + code_block(text), cut or clipped


def _code_chunks(text: str, budget: int, max_chunks: int) -> tuple[list[str], bool]:
    """Split `text` into code blocks of at most `budget` characters each; True if it did not all fit."""
    chunks: list[str] = []
    rest = text
    budget -= len(code_block(""))
    while rest and len(chunks) < max_chunks:
        # Escaping only lengthens text, so a chunk never needs more than `budget` raw characters.
        part, cut = _fit_lines(rest[: budget + 1], budget)
        if not cut:
            chunks.append(code_block(part))
            return chunks, False
        part = part.removesuffix("\n…")
        if not part:  # a single line longer than a chunk: split it by characters
            part = _prefix_within(rest.split("\n", 1)[0], budget)
        chunks.append(code_block(part))
        rest = rest[len(part) :].removeprefix("\n")
    return chunks, bool(rest)


# -- the request message --------------------------------------------------------------------------


def _summary_fields(approval: Approval, now: datetime, pending: bool) -> list[dict[str, Any]]:
    who = inline(approval.identity)
    if approval.client_name:
        who += f" via {inline(approval.client_name, 80)}"
    if approval.acts_for:
        who += f"\non behalf of {mention(approval.acts_for)}"
    rule = escape(_cut(approval.rule or "(default)", 200))
    if approval.rule_reason:
        rule += "\n_" + escape(_cut(" ".join(approval.rule_reason.split()), 500)) + "_"
    risk = _RISK.get(approval.risk, (":grey_question:", escape(approval.risk)))[1]
    fields = [
        f"*Tool*\n{inline(approval.tool)}",
        f"*Upstream*\n{inline(approval.upstream or '-')}",
        f"*Requested by*\n{who}",
        f"*Risk*\n{risk}",
        f"*Rule*\n{rule}",
    ]
    expires = _date(approval.expires_at, "{date_short_pretty} {time}", "%Y-%m-%d %H:%M")
    if pending:
        left = (approval.expires_at - now).total_seconds()
        expires += f" (in {human_duration(left)})" if left > 0 else " (due now)"
    fields.append(f"*Expires*\n{expires}")
    approvers = inline(approval.approvers, 80) if approval.approvers else "anyone in this channel"
    if approval.quorum > 1:
        approvers += f" · {approval.quorum} approvals needed"
    fields.append(f"*Approvers*\n{approvers}")
    return [_mrkdwn(_cut(f, FIELD_TEXT)) for f in fields]


def _body(approval: Approval, now: datetime, pending: bool) -> tuple[list[dict[str, Any]], bool]:
    """Who asked, what, under which rule, and the arguments preview; True if arguments were cut."""
    preview, cut = arguments_preview(approval.arguments)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "block_id": "summary", "fields": _summary_fields(approval, now, pending)},
    ]
    if approval.context:
        blocks.append(_section(live_state(approval.context), "context"))
    blocks.append(_section(preview, "arguments"))
    if cut:
        blocks.append(_context("Long values are cut here. *View all arguments* shows them in full."))
    return blocks, cut


def _approve_confirm(approval: Approval) -> dict[str, Any]:
    text = (
        f"{approval.tool} is destructive. Approving runs it once, with exactly the arguments shown. "
        "It may not be reversible."
    )
    return {
        "title": _plain_text("Approve a destructive call?", 100),
        "text": _plain_text(text, CONFIRM_TEXT),
        "confirm": _plain_text("Approve", 30),
        "deny": _plain_text("Cancel", 30),
        "style": "danger",
    }


def _decision_buttons(approval: Approval, arguments_cut: bool) -> dict[str, Any]:
    approve = _button("Approve", APPROVE, approval.id, "primary")
    if approval.risk == "destructive":
        approve["confirm"] = _approve_confirm(approval)
    elements = [
        approve,
        _button("Deny", DENY, approval.id, "danger"),
        _button("Deny with reason", DENY_WITH_REASON, approval.id),
    ]
    if arguments_cut:
        elements.append(_button("View all arguments", VIEW_ARGUMENTS, approval.id))
    return {"type": "actions", "block_id": "decision", "elements": elements}


def _footer(approval: Approval) -> dict[str, Any]:
    # The hash lets an approver check that what runs is byte for byte what they saw (page, CLI, audit).
    digest = f" · arguments sha256 {inline(approval.args_hash, 64)}" if approval.args_hash else ""
    return _context(f"signoff · approval {inline(approval.id, 64)}{digest}")


def request_message(
    approval: Approval,
    voters: Sequence[str],
    *,
    now: datetime,
    on_call: Sequence[str] | None = None,
    history: Sequence[PastDecision] | None = None,
) -> dict[str, Any]:
    """The pending request, with its buttons (and the quorum's progress once someone approved).

    `on_call`: who is on call now for its approver group (Slack user IDs are mentioned, anything
    else shown as text); None when the group follows no schedule.
    `history`: the caller's last decisions on the tool, shown under the arguments (None: not shown).
    """
    icon = _RISK.get(approval.risk, (":grey_question:", ""))[0]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain_text(f"{icon} Approval needed: {approval.tool}", HEADER_TEXT)}
    ]
    body, cut = _body(approval, now, pending=True)
    blocks += body
    if history is not None:
        blocks.append(history_block(approval, history))
    if on_call is not None:
        blocks.append(_section(on_call_line(on_call), "oncall"))
    if voters:
        blocks.append(_section(quorum_progress(approval, voters), "progress"))
    blocks.append(_decision_buttons(approval, cut))
    blocks += _more_buttons(approval)
    blocks.append(_footer(approval))
    text = f"Approval needed: {inline(approval.tool)} requested by {inline(approval.identity)}"
    return {"text": _cut(text, MESSAGE_TEXT), "blocks": blocks[:MESSAGE_BLOCKS]}


def on_call_line(on_call: Sequence[str]) -> str:
    """`:pager: On call now: <@U…>`: whoever may decide under an on-call-only approver group."""
    names = ", ".join(mention(who) for who in on_call) or "nobody"
    return _cut(f":pager: On call now: {names}", SECTION_TEXT)


def quorum_progress(approval: Approval, voters: Sequence[str]) -> str:
    """`1 of 2 approvals: <@U…>`."""
    names = ", ".join(mention(v) for v in voters)
    return f":ballot_box_with_check: {len(voters)} of {approval.quorum} approvals: {names}"


# -- approving for a while, and editing --------------------------------------------------------


def editable(approval: Approval) -> bool:
    """Whether a request may be edited before approval: one approver decides, and the tool's input
    schema is known (an edit is checked against it)."""
    return approval.quorum <= 1 and approval.input_schema is not None


def _more_buttons(approval: Approval) -> list[dict[str, Any]]:
    """ "Approve for 30 min" per offered duration, and "Edit and approve"; with what a grant covers."""
    elements = []
    for i, seconds in enumerate(grants.offered(approval)):
        button = _button(
            f"Approve for {grants.spoken(seconds)}", f"{APPROVE_FOR}_{i}", f"{approval.id}|{seconds:g}"
        )
        if approval.risk == "destructive":
            button["confirm"] = _approve_confirm(approval)
        elements.append(button)
    if editable(approval):
        elements.append(_button("Edit and approve", EDIT_APPROVE, approval.id))
    if not elements:
        return []
    out: list[dict[str, Any]] = [{"type": "actions", "block_id": "approve_more", "elements": elements}]
    offer = approval.grant_offer
    if offer:
        same = offer.get("same") or []
        values = offer.get("values") or {}
        which = (
            "with the same " + ", ".join(f"{inline(p, 80)} ({_value(values, p)})" for p in same)
            if same
            else "with any arguments"
        )
        out.append(
            _context(
                f":stopwatch: Approving for a while also lets later calls of {inline(approval.tool)} by "
                f"{inline(approval.identity)} {which} run without asking until it ends (revocable)."
            )
        )
    return out


def _value(values: dict[str, Any], path: str) -> str:
    if path not in values:
        return "absent"
    return inline(json.dumps(values[path], ensure_ascii=False), 80)


def grant_duration(grant: Grant) -> str:
    """How long a grant was given for: "30 min"."""
    return grants.spoken(grants.duration(grant))


def grant_blocks(grant: Grant, now: datetime) -> list[dict[str, Any]]:
    """What a grant lets run and until when, with a Revoke button while it is live."""
    values = grant.values or {}
    which = ", ".join(f"{inline(p, 80)} = {_value(values, p)}" for p in grant.same) or "any arguments"
    covers = f"calls of {inline(grant.tool)} by {inline(grant.identity)} with {which}"
    until = _date(grant.expires_at, "{date_short_pretty} {time}", "%Y-%m-%d %H:%M")
    state = grants.grant_state(grant, now)
    if state == "revoked":
        by = mention(grant.revoked_by) if grant.revoked_by else "someone"
        at = " " + _date(grant.revoked_at, "{time}", "%H:%M") if grant.revoked_at else ""
        line = f":no_entry_sign: Grant {inline(grant.id, 64)} *revoked* by {by}{at}: {covers} ask again."
        return [_section(line, "grant")]
    if state == "expired":
        return [
            _section(f":hourglass: Grant {inline(grant.id, 64)} ended {until}: {covers} ask again.", "grant")
        ]
    line = f":stopwatch: Until {until}, {covers} run without asking."
    revoke = _button("Revoke", REVOKE_GRANT, grant.id, "danger")
    return [_section(line, "grant"), {"type": "actions", "block_id": "grant_actions", "elements": [revoke]}]


def edited_blocks(approval: Approval) -> list[dict[str, Any]]:
    """An approval with edited arguments: both hashes, what changed, and every byte that ran (masked)."""
    if not approval.edited_hash:
        return []
    changed = ", ".join(inline(p, 80) for p in approval.edited_paths or []) or "nothing visible"
    preview, _ = arguments_preview(display_mask(approval.edited_arguments or {}))
    head = (
        f":pencil2: *Edited before approval* · changed {changed}\n"
        f"arguments sha256 {inline(approval.args_hash, 64)} → {inline(approval.edited_hash, 64)}"
    )
    return [
        _section(head, "edited"),
        _section(preview.replace("*Arguments*", "*Ran with*", 1), "edited_arguments"),
    ]


def edit_modal(approval: Approval) -> dict[str, Any] | None:
    """The "Edit and approve" modal: the arguments as JSON to change (None: too long for Slack)."""
    text = json.dumps(approval.arguments or {}, indent=2, ensure_ascii=False)
    if len(text) > EDIT_TEXT:
        return None
    who = f"{inline(approval.tool)} requested by {inline(approval.identity)}"
    who += f" · approval {inline(approval.id, 64)}"
    note = (
        "The edited call is checked against the tool's input schema and the policy before it is "
        "approved; a refused edit decides nothing. A secret shown as \u2039kind, N chars\u203a must be "
        "given in full or removed. The agent is told what changed."
    )
    return {
        "type": "modal",
        "callback_id": EDIT_VIEW,
        "private_metadata": approval.id[:3000],
        "title": _plain_text("Edit and approve", MODAL_TITLE),
        "submit": _plain_text("Approve", MODAL_TITLE),
        "close": _plain_text("Cancel", MODAL_TITLE),
        "blocks": [
            _section(who),
            _context(escape(note)),
            {
                "type": "input",
                "block_id": EDIT_BLOCK,
                "label": _plain_text("Arguments (JSON)", 2000),
                "element": {
                    "type": "plain_text_input",
                    "action_id": EDIT_ACTION,
                    "multiline": True,
                    "max_length": EDIT_TEXT,
                    "initial_value": text,
                },
            },
        ],
    }


# -- live state, history, a changed target ----------------------------------------------------------


def live_state(context: dict[str, Any]) -> str:
    """The context probe's answer as one mrkdwn line: the fields, what changed, or why it is unknown."""
    tool = inline(str(context.get("tool") or "?"), 80)
    at = context.get("at")
    read = ""
    if isinstance(at, str):
        try:
            read = " at " + _date(datetime.fromisoformat(at), "{time_secs}", "%H:%M:%S")
        except ValueError:
            read = ""
    line = escape(_cut(summary(context), 1500))
    if not isinstance(context.get("fields"), dict):
        return f":grey_question: *Live state unknown* ({tool}): {line}"
    changed = change_text(context)
    if changed:
        return (
            f":warning: *Changed since the request was shown* (read with {tool}{read}): "
            f"{escape(_cut(changed, 1200))}\n{line}"
        )
    return f":mag: *Live state* (read with {tool}{read}): {line}"


_HISTORY_ICON = {APPROVED: ":white_check_mark:", DENIED: ":no_entry:", EXPIRED: ":hourglass:"}


def history_block(approval: Approval, history: Sequence[PastDecision]) -> dict[str, Any]:
    """A context block: the last decisions on this tool for this caller, and how approved ones ended."""
    head = f"*Last decisions on {inline(approval.tool, 80)} for {inline(approval.identity, 80)}*"
    if not history:
        return {"type": "context", "block_id": "history", "elements": [_mrkdwn(f"{head}: none yet.")]}
    lines = [head]
    for d in history[:10]:
        icon = _HISTORY_ICON.get(d.status, ":leftwards_arrow_with_hook:")
        line = f"{icon} {escape(d.status)}"
        if d.decided_by and not d.decided_by.startswith("("):
            line += " by " + ", ".join(mention(v) for v in d.decided_by.split(",") if v)
        if d.decided_at is not None:
            line += " " + _date(d.decided_at, "{date_short} {time}", "%Y-%m-%d %H:%M")
        if d.status == APPROVED:
            line += f" · ran {escape(_cut(d.outcome, 80))}" if d.outcome else " · did not run"
        elif d.reason:
            line += ": " + escape(_cut(" ".join(d.reason.split()), 150))
        lines.append(line)
    return {
        "type": "context",
        "block_id": "history",
        "elements": [_mrkdwn(_cut("\n".join(lines), CONTEXT_TEXT))],
    }


def changed_prompt(approval_id: str, message: str) -> dict[str, Any]:
    """The ephemeral question after an approve click found the target changed: approve anyway?"""
    text = ":warning: " + escape(_cut(message, SECTION_TEXT - 200))
    return {
        "text": _cut(f"{message}", MESSAGE_TEXT),
        "blocks": [
            _section(text, "changed"),
            {
                "type": "actions",
                "block_id": "changed_decision",
                "elements": [_button("Approve anyway", APPROVE_ANYWAY, approval_id, "danger")],
            },
            _context("Not approving? Do nothing, or deny on the request."),
        ],
    }


def tool_change_message(upstream: str, tool: str, diff: str, action: str) -> dict[str, Any]:
    """The announcement that an upstream changed a tool's definition, with the diff."""
    lead = (
        f"Upstream {inline(upstream)} now serves a different definition of {inline(tool)} than the one "
        f"signoff pinned. {escape(action_text(action))}"
    )
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain_text(f":warning: Tool definition changed: {tool}", HEADER_TEXT)},
        _section(lead, "lead"),
    ]
    chunks, cut = _code_chunks(diff or "(no visible difference)", SECTION_TEXT - 10, MESSAGE_BLOCKS - 5)
    blocks += [_section(c) for c in chunks]
    if cut:
        blocks.append(
            _context(":scissors: The diff is longer than a message; `signoff tools diff` shows it all.")
        )
    name = escape(_cut(" ".join(tool.split()), _INLINE)).replace("`", _GRAVE)
    blocks.append(
        _context(
            f"Review: `signoff tools diff --config …` · accept: `signoff tools accept {name} --config …`"
        )
    )
    text = f"Tool definition changed: {inline(tool)} on {inline(upstream)}"
    return {"text": _cut(text, MESSAGE_TEXT), "blocks": blocks[:MESSAGE_BLOCKS]}


# -- final states ---------------------------------------------------------------------------------

_FINAL_HEADER = {
    APPROVED: ":white_check_mark: Approved",
    EXECUTED: ":white_check_mark: Approved",
    DENIED: ":no_entry: Denied",
    EXPIRED: ":hourglass: Expired",
    WITHDRAWN: ":leftwards_arrow_with_hook: Withdrawn",
}


def decision_line(approval: Approval, voters: Sequence[str], grant: Grant | None = None) -> str:
    """One mrkdwn line saying how the request ended (the rewritten message's status)."""
    at = _date(approval.decided_at, "{time}", "%H:%M") if approval.decided_at else ""
    if approval.status in (APPROVED, EXECUTED):
        who = voters or [v for v in (approval.decided_by or "").split(",") if v]
        names = ", ".join(mention(v) for v in who) or "someone"
        if grant is not None:
            names += f" for {grant_duration(grant)} (grant {inline(grant.id, 64)})"
        if approval.edited_hash:
            names += " with edited arguments"
        return f":white_check_mark: *Approved* by {names} {at}".rstrip()
    if approval.status == DENIED:
        by = mention(approval.decided_by) if approval.decided_by else "someone"
        line = f":no_entry: *Denied* by {by} {at}".rstrip()
        if approval.decision_reason:
            line += ": " + escape(_cut(approval.decision_reason.strip(), 1500))
        return line
    if approval.status == EXPIRED:
        waited = human_duration((approval.expires_at - approval.created_at).total_seconds())
        return f":hourglass: *Expired* after {waited} — denied. Nobody decided in time; nothing ran."
    if approval.status == WITHDRAWN:
        reason = approval.decision_reason or "the agent cancelled"
        return f":leftwards_arrow_with_hook: *Withdrawn*: {escape(_cut(reason, 500))}. Nothing will run."
    if approval.status == PENDING:
        return quorum_progress(approval, voters) if voters else "Waiting for a decision."
    return f"Decided: {escape(approval.status)}"


def decided_message(
    approval: Approval, voters: Sequence[str], grant: Grant | None = None, *, now: datetime | None = None
) -> dict[str, Any]:
    """The request rewritten after its final decision: the same facts, a status line, no buttons —
    but a Revoke button while a grant it created is live, and the edited arguments it ran with."""
    head = _FINAL_HEADER.get(approval.status, approval.status.capitalize())
    line = decision_line(approval, voters, grant)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain_text(f"{head}: {approval.tool}", HEADER_TEXT)},
        _section(line, "status"),
    ]
    if grant is not None:
        blocks += grant_blocks(grant, now or approval.decided_at or approval.expires_at)
    body, _ = _body(approval, approval.decided_at or approval.expires_at, pending=False)
    blocks += body
    blocks += edited_blocks(approval)
    blocks.append(_footer(approval))
    text = f"{head.split(' ', 1)[1]}: {inline(approval.tool)} requested by {inline(approval.identity)}"
    return {"text": _cut(text, MESSAGE_TEXT), "blocks": blocks[:MESSAGE_BLOCKS]}


def outcome_reply(approval: Approval, outcome: str, detail: str | None) -> dict[str, Any]:
    """The thread reply after an approved call ran: success, or the upstream's error."""
    tool = inline(approval.tool)
    if outcome == "ok":
        line = f":white_check_mark: {tool} ran successfully."
    elif outcome == "tool_error":
        line = f":x: {tool} ran and returned an error."
    else:
        line = f":warning: {tool} did not complete: {escape(_cut(outcome, 300))}."
    blocks: list[dict[str, Any]] = [_section(line, "outcome")]
    if detail:
        text, _ = _fit_lines(redact_text(detail), 1500)
        blocks.append(_section(code_block(text), "detail"))
    return {"text": _cut(line, MESSAGE_TEXT), "blocks": blocks}


def permalink(workspace_url: str | None, channel: str, ts: str) -> str | None:
    """A message's link, `https://team.slack.com/archives/C…/p…` (Slack's permalink form), if buildable."""
    if (
        not workspace_url
        or not workspace_url.startswith("https://")
        or any(c in workspace_url for c in "<>|")
    ):
        return None
    if not _CHANNEL_ID.fullmatch(channel) or not _TS.fullmatch(ts):
        return None
    return f"{workspace_url.rstrip('/')}/archives/{channel}/p{ts.replace('.', '')}"


def escalation_message(
    approval: Approval, *, now: datetime, usergroup: str | None, link: str | None
) -> dict[str, Any]:
    """The re-post of a request nobody decided in time, mentioning `usergroup` and linking the request."""
    waited = human_duration((now - approval.created_at).total_seconds())
    who = f"{inline(approval.tool)} requested by {inline(approval.identity)}"
    line = f":rotating_light: Still undecided after {waited}: {who}."
    if usergroup:
        group = f"<!subteam^{usergroup}>" if _USERGROUP_ID.fullmatch(usergroup) else escape(usergroup)
        line = f"{group} {line}"
    left = human_duration((approval.expires_at - now).total_seconds())
    detail = f"It expires in {left}, and is then denied."
    if link:
        detail += f" <{link}|Open the request> to decide."
    blocks = [_section(line, "escalation"), _context(detail), _footer(approval)]
    return {"text": _cut(line, MESSAGE_TEXT), "blocks": blocks}


# -- modals ---------------------------------------------------------------------------------------


def deny_reason_modal(approval_id: str) -> dict[str, Any]:
    """The "Deny with reason" modal: one required multiline input; the reason goes to the agent."""
    return {
        "type": "modal",
        "callback_id": DENY_REASON_VIEW,
        "private_metadata": approval_id[:3000],
        "title": _plain_text("Deny tool call", MODAL_TITLE),
        "submit": _plain_text("Deny", MODAL_TITLE),
        "close": _plain_text("Cancel", MODAL_TITLE),
        "blocks": [
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": _plain_text("Why? (the agent is told)", 2000),
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_ACTION,
                    "multiline": True,
                    "max_length": 2000,
                    "placeholder": _plain_text("e.g. not during the release freeze", 150),
                },
            }
        ],
    }


def reason_error(reason: str | None) -> str | None:
    """Why a deny reason is refused (shown under the input), or None if it will do."""
    if reason is None or len(reason.strip()) < MIN_REASON:
        return f"Please give a reason of at least {MIN_REASON} characters; the agent will see it."
    return None


def full_arguments_modal(approval: Approval) -> dict[str, Any]:
    """Every argument (redacted), split over as many code blocks as a modal allows."""
    who = f"{inline(approval.tool)} requested by {inline(approval.identity)}"
    head = _section(f"{who} · approval {inline(approval.id, 64)}")
    text = pretty_arguments(approval.arguments or {})
    room = MODAL_BLOCKS - 2  # the head, and a note if it does not all fit
    chunks, cut = _code_chunks(text, SECTION_TEXT - 10, room)
    blocks = [head, *(_section(c) for c in chunks)]
    if cut:
        shown = sum(len(c) for c in chunks)
        blocks.append(
            _context(
                f":scissors: Truncated: the arguments are {len(text):,} characters and a Slack modal "
                f"holds about {shown:,}. All of them are on the approvals page "
                "(`signoff approvals list --status all --json`)."
            )
        )
    return {
        "type": "modal",
        "callback_id": "signoff_arguments",
        "private_metadata": approval.id[:3000],
        "title": _plain_text("Arguments", MODAL_TITLE),
        "close": _plain_text("Close", MODAL_TITLE),
        "blocks": blocks,
    }
