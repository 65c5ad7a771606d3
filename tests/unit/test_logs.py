"""The log formatters: JSON Lines fields, and redaction of messages and tracebacks in both formats."""

from __future__ import annotations

import json
import logging
import sys

from proxy.logs import JsonFormatter, TextFormatter

TOKEN = "ghp_" + "a1B2c3D4e5" * 4


def record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("signoff.test", logging.ERROR, __file__, 1, message, args, exc_info)


def failure() -> BaseException:
    try:
        raise RuntimeError(f"upstream said: token {TOKEN} rejected")
    except RuntimeError:
        return sys.exc_info()[1]  # type: ignore[return-value]


def test_json_has_the_fields_and_redacts_message_arguments() -> None:
    entry = json.loads(JsonFormatter().format(record("calling %s with %s", "api", TOKEN)))
    assert entry["level"] == "ERROR" and entry["logger"] == "signoff.test"
    assert entry["message"] == "calling api with [REDACTED]"
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]
    assert "exception" not in entry


def test_json_carries_the_redacted_traceback_on_one_line() -> None:
    line = JsonFormatter().format(record("it failed", exc=failure()))
    assert "\n" not in line
    entry = json.loads(line)
    assert "RuntimeError: upstream said: token [REDACTED] rejected" in entry["exception"]
    assert "Traceback" in entry["exception"] and TOKEN not in line


def test_text_redacts_message_and_traceback() -> None:
    text = TextFormatter().format(record("calling %s", f"https://bob:{TOKEN}@host/x", exc=failure()))
    assert TOKEN not in text
    assert "calling https://bob:[REDACTED]@host/x" in text
    assert "ERROR signoff.test: " in text
