"""A tool call on its way through the gateway, and the errors that end one early."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.identity import Identity

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]


class UnknownTool(Exception):
    """Answer as if the tool did not exist (it doesn't, or policy hides it)."""


class UpstreamError(Exception):
    """The upstream could not answer: not connected, restarting, timed out, or it died mid-call."""

    def __init__(self, upstream: str, message: str, reason: str = "upstream_unavailable") -> None:
        super().__init__(f"upstream {upstream!r} {message}")
        self.upstream = upstream
        self.reason = reason


class UpstreamErrorReply(Exception):
    """The upstream answered with a JSON-RPC error: passed on to the client as it is."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


@dataclass
class CallRecord:
    """What the call's audit record will say, filled in by the stages as the call goes."""

    decision: str = ""
    rule: str | None = None
    reason: str | None = None
    outcome: str = ""
    approval_id: str | None = None
    approvers: str | None = None
    enforced: bool = True
    revision: str = ""
    grant_id: str | None = None  # ran under this grant, without asking
    edited: dict[str, Any] | None = None  # ran with edited arguments: {"from", "to", "changed"}


@dataclass
class ToolCall:
    """Everything the pipeline needs to know about one `tools/call`."""

    identity: Identity
    session_id: str
    client_name: str | None
    upstream: str
    tool: str  # the upstream's own name
    public_name: str  # the name the client used
    arguments: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    progress: ProgressFn | None = None  # None when the client asked for no progress
    tool_info: dict[str, Any] | None = None  # the upstream's Tool (description, annotations, schemas)
    known: bool = True  # False: the upstream does not list this tool
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.monotonic)
    record: CallRecord = field(default_factory=CallRecord)
    verdict: Any = None  # the policy's Verdict, once the policy stage has decided
    # How to send this call to its upstream (set by the front that received it); the last stage's job.
    forward: Callable[[ToolCall], Awaitable[dict[str, Any]]] | None = None

    @property
    def has_output_schema(self) -> bool:
        return bool(self.tool_info and self.tool_info.get("outputSchema"))
