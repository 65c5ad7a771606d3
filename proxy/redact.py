"""Secret redaction for arguments shown in Slack and written to the audit log.

Two signals: the key's name (`password`, `api_key`, `authorization`, …) and the value's shape
(JWTs, bearer headers, well-known token prefixes, PEM keys, URLs with passwords). Pure functions.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"

_SECRET_KEY = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|api[-_]?key|apikey|auth(orization)?|credential|private[-_]?key"
    r"|access[-_]?key|session[-_]?(id|key)|cookie|signature|client[-_]?secret|bearer|otp|pin)$",
    re.IGNORECASE,
)
# Key names that end like a secret but are not one.
_NOT_SECRET_KEY = re.compile(
    r"(max|num|count|total)[-_]?tokens?$|token[-_]?(count|type|limit)$", re.IGNORECASE
)

_SECRET_VALUE = re.compile(
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{12,}"  # Authorization header values
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|xapp-[A-Za-z0-9-]{10,}"  # Slack
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"  # GitHub
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|sk-[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic style
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|rpa_[A-Za-z0-9]{20,}"  # RunPod
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"
)
# Bounded repetitions keep this linear: an unbounded `[a-z0-9+.-]*` before `://` backtracks
# quadratically on long runs of letters (a 100 KB argument took over a minute).
_URL_PASSWORD = re.compile(
    r"(?P<scheme>\b[a-z][a-z0-9+.-]{0,31}://)(?P<user>[^/\s:@]{1,256}):(?P<pw>[^/\s@]{1,1024})@",
    re.IGNORECASE,
)

_MAX_DEPTH = 64


def is_secret_key(key: str) -> bool:
    """Whether an argument named `key` holds a secret."""
    return bool(_SECRET_KEY.search(key)) and not _NOT_SECRET_KEY.search(key)


def redact_text(text: str) -> str:
    """Replace secret-shaped substrings of a string."""
    if len(text) < 12:
        return text
    text = _SECRET_VALUE.sub(REDACTED, text)
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)


def redact(value: Any, max_text: int | None = None, _depth: int = 0) -> Any:
    """A copy of `value` with secrets replaced by `[REDACTED]`; never raises, never mutates.

    With `max_text`, longer strings are cut (with a note of how much), so a huge argument neither
    bloats a record nor costs a regex scan of all of it.
    """
    if _depth > _MAX_DEPTH:
        return "[TOO DEEP]"
    if isinstance(value, str):
        if max_text is not None and len(value) > max_text:
            return redact_text(value[:max_text]) + f"…[{len(value) - max_text} more characters]"
        return redact_text(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = str(k)
            if is_secret_key(key) and v not in (None, "", [], {}):
                out[key] = REDACTED
            else:
                out[key] = redact(v, max_text, _depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [redact(v, max_text, _depth + 1) for v in value]
    return value
