"""JSON for the control port's API: strict (never `NaN`), and errors as `{"error": "…"}`."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from aiohttp import web


def dumps(value: Any) -> str:
    """Strict JSON that any browser parses: NaN and ±Infinity become null, huge integers strings."""
    try:
        return orjson.dumps(value).decode()  # NaN → null
    except (TypeError, orjson.JSONEncodeError):
        # Integers beyond 64 bits (or odd types) in old rows: slower, but never invalid JSON.
        return json.dumps(_plain(value), allow_nan=False, default=str)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(value), status=status, content_type="application/json")


def json_error(
    kind: type[web.HTTPException], message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    """An aiohttp HTTP error whose body is `{"error": message}`; raise it."""
    return kind(text=dumps({"error": message}), content_type="application/json", headers=headers)
