"""Context probes: the live state of a call's target, read by signoff itself for the approvers.

An approval rule may name a read tool of the same upstream (`approval.context` in the policy).
Before the request is posted signoff runs it as itself — audited as its own record, identity
`(signoff)`, decision `context_probe` — and the request shows the chosen fields ("job-7f3a: status
IN_PROGRESS"). At the click it runs it again; if the fields changed, the approver is asked once more.
A probe that fails or is slow never holds a request back: the request says the state is unknown.

What a probe found is stored with the request (`Approval.context`) as a plain dict:
`{tool, arguments, show, label, timeout, fields, error, at, was}` — `fields` the shown values (None
when the probe failed, `error` then says why), `was` the fields shown before a change noticed at a
click. The functions up to `ContextProber` are pure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from proxy.audit import AuditLog
from proxy.calls import UpstreamError, UpstreamErrorReply
from proxy.edge.upstreams import Upstream
from proxy.naming import Names
from proxy.policy_spec import PLACEHOLDER, ContextProbe, parse_path
from proxy.records import Approval, utcnow
from proxy.redact import display_mask, redact_text
from proxy.risk import classify

log = logging.getLogger("signoff.context")

IDENTITY = "(signoff)"  # who a probe runs as, in the audit
DECISION = "context_probe"
_VALUE = 200  # a shown value is cut to this many characters
_MISSING = object()


class ProbeError(Exception):
    """Why a probe found nothing: shown to approvers as "state unknown: <why>"."""


# -- pure ----------------------------------------------------------------------------------------


def fill(template: Any, arguments: Mapping[str, Any]) -> Any:
    """`template` with each `{path}` replaced from the call's arguments; a lone placeholder keeps its type."""
    if isinstance(template, str):
        whole = PLACEHOLDER.fullmatch(template)
        if whole is not None:
            return _lookup(arguments, whole.group(1))
        return PLACEHOLDER.sub(lambda m: _text(_lookup(arguments, m.group(1))), template)
    if isinstance(template, dict):
        return {k: fill(v, arguments) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, arguments) for v in template]
    return template


def _lookup(root: Any, path: str) -> Any:
    value = _resolve(root, path)
    if value is _MISSING:
        raise ProbeError(f"the call has no argument {path}")
    return value


def _resolve(root: Any, path: str) -> Any:
    current = root
    for key, index in parse_path(path):
        if isinstance(current, Mapping):
            current = current.get(key, _MISSING)
        elif index is not None and isinstance(current, list) and index < len(current):
            current = current[index]
        else:
            return _MISSING
        if current is _MISSING:
            return _MISSING
    return current


def answer_of(result: Mapping[str, Any]) -> Any:
    """What a tool result says, as data: its structured content, else the JSON in its first text."""
    structured = result.get("structuredContent")
    if isinstance(structured, dict):
        return structured
    for block in result.get("content") or []:
        if isinstance(block, dict) and block.get("type") == "text":
            try:
                return json.loads(str(block.get("text")))
            except ValueError:
                return None
    return None


def pick(answer: Any, show: Sequence[str]) -> dict[str, Any]:
    """The shown fields of an answer (None for a field it lacks); raises when it has none of them."""
    fields = {}
    for path in show:
        value = _resolve(answer, path)
        fields[path] = None if value is _MISSING else value
    if all(v is None for v in fields.values()):
        raise ProbeError(f"its answer has no {', '.join(show)}")
    return fields


def label_of(spec: ContextProbe, arguments: Mapping[str, Any], filled: Mapping[str, Any]) -> str:
    """What the state is of: the rule's `label` filled in, else the probe's argument values."""
    if spec.label:
        try:
            return _text(fill(spec.label, arguments))
        except ProbeError:
            pass
    values = [_text(v) for v in filled.values() if not isinstance(v, dict | list)]
    return ", ".join(values) or spec.tool


def _text(value: Any) -> str:
    if value is None:
        return "—"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = " ".join(text.split())
    return text if len(text) <= _VALUE else text[: _VALUE - 1] + "…"


def summary(context: Mapping[str, Any]) -> str:
    """One line for the request: `job-7f3a: status IN_PROGRESS, submitted_at 14:02`, or why unknown."""
    label = str(context.get("label") or context.get("tool") or "target")
    fields = context.get("fields")
    if not isinstance(fields, Mapping):
        return f"{label}: state unknown ({context.get('error') or 'not read'})"
    return f"{label}: " + ", ".join(f"{k} {_text(v)}" for k, v in fields.items())


def changes(was: Mapping[str, Any] | None, now: Mapping[str, Any] | None) -> list[tuple[str, Any, Any]]:
    """(field, before, now) for each shown field whose value differs; nothing when either is unknown."""
    if not isinstance(was, Mapping) or not isinstance(now, Mapping):
        return []
    return [(k, was.get(k), v) for k, v in now.items() if was.get(k) != v]


def change_text(context: Mapping[str, Any]) -> str:
    """`status COMPLETED (was IN_PROGRESS)`: what changed since the request was shown."""
    found = changes(context.get("was"), context.get("fields"))
    return ", ".join(f"{k} {_text(new)} (was {_text(old)})" for k, old, new in found)


def ask_again(context: Mapping[str, Any]) -> str:
    """The question for an approver whose click found the target changed since it was shown."""
    what = change_text(context) or summary(context)
    label = context.get("label") or "The target"
    return f"{label} changed since the request was shown: now {what}. Approve anyway?"


def same_state(stored: Mapping[str, Any] | None, fresh: Mapping[str, Any] | None) -> bool:
    """Whether a fresh probe shows what the stored one shows (an unknown fresh state changes nothing)."""
    if stored is None or fresh is None or not isinstance(fresh.get("fields"), Mapping):
        return True
    if not isinstance(stored.get("fields"), Mapping):
        return True  # nothing known was shown, so nothing shown has changed
    return not changes(stored["fields"], fresh["fields"])


def after_click(stored: Mapping[str, Any], fresh: Mapping[str, Any]) -> dict[str, Any]:
    """The context to store after a click found `fresh`: the new fields, and what was shown before."""
    was = stored.get("was") if stored.get("was") is not None else stored.get("fields")
    return {**fresh, "was": was}


def context_json(context: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The API's view of a stored context: the stored dict plus its summary and change lines."""
    if context is None:
        return None
    out = dict(context)
    out["summary"] = summary(context)
    out["changed"] = change_text(context) or None
    return out


# -- running probes --------------------------------------------------------------------------------


class ContextProber:
    """Runs context probes on the upstreams' shared connections, as signoff, with a short timeout."""

    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        names: Names,
        audit: AuditLog | None,
        replica: str = "",
        held_back: Callable[[str, str], bool] = lambda upstream, tool: False,
    ) -> None:
        self.upstreams = upstreams
        self.names = names
        self.audit = audit
        self.replica = replica
        self.held_back = held_back  # a tool whose definition changed unaccepted is never run as signoff

    async def probe(
        self,
        upstream: str,
        spec: ContextProbe,
        call_arguments: Mapping[str, Any],
        approval_id: str | None = None,
    ) -> dict[str, Any]:
        """Read the target's state for a new request; never raises (a failure is in `error`)."""
        base: dict[str, Any] = {
            "tool": spec.tool,
            "arguments": {},
            "show": list(spec.show),
            "label": spec.tool,
            "timeout": spec.timeout,
        }
        try:
            filled = fill(spec.arguments, call_arguments)
        except ProbeError as e:
            return {**base, "fields": None, "error": str(e), "at": utcnow().isoformat(), "was": None}
        shown = display_mask(filled)
        base["arguments"] = shown
        # Stored arguments are the display copy: a probe whose arguments held a secret is not re-run
        # at the click (the masked copy is not what it needs), and its first answer stands.
        base["rerun"] = shown == filled
        base["label"] = label_of(spec, call_arguments, filled)
        return await self._run(upstream, base, filled, approval_id)

    async def reprobe(self, approval: Approval) -> dict[str, Any] | None:
        """Read the state again with the stored probe (at a click); None when the request has no probe."""
        stored = approval.context
        if not stored or stored.get("rerun") is not True:
            return None
        base = {k: stored.get(k) for k in ("tool", "arguments", "show", "label", "timeout", "rerun")}
        return await self._run(approval.upstream, base, dict(base["arguments"] or {}), approval.id)

    async def _run(
        self, upstream: str, base: dict[str, Any], arguments: dict[str, Any], approval_id: str | None
    ) -> dict[str, Any]:
        tool, timeout = str(base["tool"]), float(base.get("timeout") or 2.5)
        started = time.monotonic()
        fields: dict[str, Any] | None = None
        error: str | None = None
        outcome = "ok"
        try:
            async with asyncio.timeout(timeout):
                fields = await self._call(upstream, tool, arguments, [str(p) for p in base["show"]])
        except TimeoutError:
            error, outcome = f"{tool} did not answer within {timeout:g}s", "upstream_timeout"
        except ProbeError as e:
            error, outcome = str(e), "tool_error"
        except (UpstreamError, UpstreamErrorReply) as e:
            error, outcome = f"{tool} could not be reached ({_short(str(e))})", "upstream_error"
        except Exception as e:  # a probe is never worth failing the request over
            log.warning("context probe %s on %s failed: %s", tool, upstream, e)
            error, outcome = f"{tool} failed ({type(e).__name__})", "upstream_error"
        elapsed = time.monotonic() - started
        self._audit(upstream, tool, arguments, approval_id, outcome, error, elapsed)
        return {
            **base,
            "fields": display_mask(fields) if fields is not None else None,
            "error": error,
            "at": utcnow().isoformat(),
            "was": None,
        }

    async def _call(
        self, upstream: str, tool: str, arguments: dict[str, Any], show: list[str]
    ) -> dict[str, Any]:
        up = self.upstreams.get(upstream)
        if up is None:
            raise ProbeError(f"there is no upstream {upstream}")
        if not up.catalog_loaded:
            await up.refresh_tools()
        info = up.tools.get(tool)
        if info is None:
            raise ProbeError(f"{upstream} has no tool {tool}")
        risk = classify(tool, info.get("description"), info.get("annotations"), info.get("inputSchema"))
        if risk != "read":
            # signoff runs probes without asking anyone: only a tool that reads may be one.
            raise ProbeError(f"{tool} is not a read tool ({risk}), so signoff does not run it")
        if self.held_back(upstream, tool):
            raise ProbeError(f"{tool}'s definition changed and is not accepted yet")
        result = await up.call_tool({"name": tool, "arguments": arguments})
        if result.get("isError"):
            text = next(
                (
                    str(b.get("text"))
                    for b in result.get("content") or []
                    if isinstance(b, dict) and b.get("text")
                ),
                "",
            )
            raise ProbeError(f"{tool} answered with an error" + (f": {_short(text)}" if text else ""))
        return pick(answer_of(result), show)

    def _audit(
        self,
        upstream: str,
        tool: str,
        arguments: dict[str, Any],
        approval_id: str | None,
        outcome: str,
        error: str | None,
        elapsed: float,
    ) -> None:
        if self.audit is None:
            return
        self.audit.record(
            call_id=uuid.uuid4().hex,
            identity=IDENTITY,
            upstream=upstream,
            tool=self.names.public(upstream, tool),
            arguments=arguments,
            decision=DECISION,
            approval_id=approval_id,
            reason=error,
            latency_ms=round(elapsed * 1000, 3),
            outcome=outcome,
            replica=self.replica,
        )


def _short(text: str, limit: int = 160) -> str:
    flat = " ".join(redact_text(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
