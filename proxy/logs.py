"""Log output for the CLI: plain text, or JSON Lines for log shippers (`--log-format json`).

Each JSON line is one object: time (ISO 8601, UTC), level, logger, message, and `exception` with the
traceback text when there is one. In both formats the message and traceback are redacted with
`proxy.redact.redact_text` (an upstream URL's password, a bearer token in an error, …).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from proxy.redact import redact_text

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_LOGGERS = ("httpx", "httpx2", "mcp", "uvicorn.error", "aiohttp.access")


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, redacted."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return redact_text(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return redact_text(super().formatException(ei))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = redact_text(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact_text(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact_text(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(verbose: bool = False, fmt: str = "text") -> None:
    """Log to stderr (stdout may be the MCP channel) in `fmt`: "text" or "json"."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # -v is signoff's own debug output only: libraries log what passes through them at DEBUG (SSE
    # chunks with tool results, SQL parameters with arguments), which is not ours to print.
    logging.getLogger("signoff").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
