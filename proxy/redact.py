"""Masking secrets in tool-call arguments, in two strengths over one detector (`secret_finder`).

`display_mask` is for an approver: it replaces exactly each secret with `‹kind, N chars›` and keeps
every other byte, so what they approve is what runs. `redact` / `redact_text` are for the audit,
logs and Slack outcome replies: whole secret-named values and secret spans become `[REDACTED]`, and
an unterminated private key hides the rest of the string. Pure functions.
"""  # noqa: RUF002

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from proxy.secret_finder import MAX_SECRET, Finding, find_secrets, is_secret_key, secret_spans

__all__ = [
    "REDACTED",
    "Finding",
    "display_mask",
    "display_text",
    "find_secrets",
    "is_secret_key",
    "redact",
    "redact_text",
]

REDACTED = "[REDACTED]"
# The mask's brackets are single angle quotation marks (U+2039, U+203A): they read as a label and
# no argument's JSON or code uses them.
_OPEN, _CLOSE = "\u2039", "\u203a"
UNSHOWABLE = f"{_OPEN}arguments could not be shown{_CLOSE}"

_MAX_DEPTH = 64
# When a long string is cut, it is scanned this far past the cut, so a secret straddling the cut is
# recognised whole and no readable prefix of it survives.
_CUT_MARGIN = 8192
_WHITESPACE = re.compile(r"\s")


def _mask_label(kind: str, length: int) -> str:
    return f"{_OPEN}{kind}, {length} char{'' if length == 1 else 's'}{_CLOSE}"


def _replace(text: str, spans: list[tuple[int, int, str]], mask: Callable[[int, int, str], str]) -> str:
    if not spans:
        return text
    parts: list[str] = []
    pos = 0
    for start, end, kind in spans:
        parts.append(text[pos:start])
        parts.append(mask(start, end, kind))
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def _key_text(key: object) -> str:
    if isinstance(key, str):
        return key
    try:
        return str(key)
    except Exception:
        return ""


_NO_KEY = object()


def _pair_value_key(obj: dict[Any, Any]) -> object:
    """In a `{"name": "DB_PASSWORD", "value": …}` pair (Kubernetes env style), the key of the value."""
    named_secret = False
    value_key: object = _NO_KEY
    for k in obj:
        low = _key_text(k).lower()
        if low in ("name", "key") and isinstance(obj[k], str) and is_secret_key(obj[k]):
            named_secret = True
        elif low == "value":
            value_key = k
    return value_key if named_secret else _NO_KEY


def _looks_like_a_secret(value: str) -> bool:
    # A multi-line string or a statement under a secret-named key is scanned, not hidden whole,
    # so a payload cannot hide behind a key's name.
    return 0 < len(value) <= MAX_SECRET and _WHITESPACE.search(value) is None


# -- for the approver -----------------------------------------------------------------------------


def display_text(text: str) -> str:
    """`text` with each secret replaced by `‹kind, N chars›` and every other character kept."""  # noqa: RUF002
    return _replace(text, secret_spans(text), lambda start, end, kind: _mask_label(kind, end - start))


def _display_string(value: str, under_secret_key: bool) -> str:
    if under_secret_key and _looks_like_a_secret(value):
        return _mask_label("secret", len(value))
    return display_text(value)


def _display_copy(value: Any) -> Any:
    # Iterative, so arguments nested deeper than the recursion limit are still shown in full.
    root: list[Any] = [None]
    copies: dict[int, Any] = {}  # shared (or cyclic) containers map to one copy, as deepcopy does
    stack: list[tuple[Any, Any, Any, bool]] = [(root, 0, value, False)]
    while stack:
        parent, slot, item, under_secret_key = stack.pop()
        if isinstance(item, str):
            parent[slot] = _display_string(item, under_secret_key)
        elif isinstance(item, dict | list | tuple):
            if id(item) in copies:
                parent[slot] = copies[id(item)]
                continue
            copy: dict[Any, Any] | list[Any]
            if isinstance(item, dict):
                copy = {}
                pair_value = _pair_value_key(item)
                for k, v in item.items():
                    copy[k] = None  # keeps the key order; filled when popped
                    secret = k is pair_value or is_secret_key(_key_text(k))
                    stack.append((copy, k, v, secret))
            else:
                copy = [None] * len(item)
                # {"api_keys": ["k1", "k2"]}: a list's strings are what its key names
                stack.extend((copy, i, v, under_secret_key) for i, v in enumerate(item))
            copies[id(item)] = copy
            parent[slot] = copy
        else:
            parent[slot] = item
    return root[0]


def display_mask(value: Any) -> Any:
    """A copy of `value` to show an approver: each secret replaced by `‹kind, N chars›`, every other
    byte kept (tuples become lists). Never raises, never mutates, never cuts."""  # noqa: RUF002
    try:
        return _display_copy(value)
    except Exception:  # a hostile object (a dict whose items() raises): show nothing rather than fail
        return UNSHOWABLE


# -- for the audit, logs and outcome replies ------------------------------------------------------


def redact_text(text: str) -> str:
    """`text` with every secret, and any unterminated private key to the end, as `[REDACTED]`."""
    return _replace(text, secret_spans(text, cautious=True), _redacted)


def _redacted(start: int, end: int, kind: str) -> str:
    return REDACTED


def _redact_string(text: str, max_text: int | None) -> str:
    if max_text is None or len(text) <= max_text:
        return redact_text(text)
    window = text[: max_text + _CUT_MARGIN]
    kept = [
        (start, min(end, max_text), kind)
        for start, end, kind in secret_spans(window, cautious=True)
        if start < max_text
    ]
    return _replace(text[:max_text], kept, _redacted) + f"…[{len(text) - max_text} more characters]"


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict | tuple) and len(value) == 0)


def _redact(value: Any, max_text: int | None, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return "[TOO DEEP]"
    if isinstance(value, str):
        return _redact_string(value, max_text)
    if isinstance(value, dict):
        pair_value = _pair_value_key(value)
        out = {}
        for k, v in value.items():
            key = _key_text(k)
            if (k is pair_value or is_secret_key(key)) and not _is_empty(v):
                out[key] = REDACTED
            else:
                out[key] = _redact(v, max_text, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_redact(v, max_text, depth + 1) for v in value]
    return value


def redact(value: Any, max_text: int | None = None) -> Any:
    """A copy of `value` with secrets replaced by `[REDACTED]`; never raises, never mutates.

    With `max_text`, longer strings are cut (with a note of how much), so a huge argument neither
    bloats a record nor costs a scan of all of it.
    """
    try:
        return _redact(value, max_text, 0)
    except Exception:  # a hostile object: keep nothing of it rather than fail the audit
        return REDACTED
