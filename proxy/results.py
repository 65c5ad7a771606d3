"""Tool results the gateway writes itself: refusals an agent can read and a client can classify."""

from __future__ import annotations

from typing import Any

# Namespaced per MCP's `_meta` key rules; clients look here to tell a policy refusal from a tool failure.
META_KEY = "dev.signoff/decision"

REASONS = (
    "denied",
    "expired",
    "withdrawn",
    "not_authorized",
    "rate_limited",
    "approval_unavailable",
    "approval_pending",
    "upstream_unavailable",
    "upstream_timeout",
    "arguments_too_large",
    "invalid_arguments",
    "store_unavailable",
)


def refusal(reason: str, text: str, *, has_output_schema: bool = False, **details: Any) -> dict[str, Any]:
    """An `isError` tool result saying why the call did not run, machine-readable in `_meta`.

    `structuredContent` is added only when the tool declares no output schema: a refusal
    shaped differently from the declared schema would make a strict client reject it.
    """
    assert reason in REASONS, reason
    info = {"reason": reason, **{k: v for k, v in details.items() if v is not None}}
    result: dict[str, Any] = {
        "content": [{"type": "text", "text": text}],
        "isError": True,
        "_meta": {META_KEY: info},
    }
    if not has_output_schema:
        result["structuredContent"] = {"signoff": info}
    return result


class Refused(Exception):
    """The call ends here with this result; nothing reaches the upstream."""

    def __init__(self, result: dict[str, Any], outcome: str) -> None:
        self.result = result
        self.outcome = outcome
