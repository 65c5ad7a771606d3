"""Human durations ("30s", "10m", "1h30m", "90") as float seconds, plain or as a pydantic field type."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# One "<number><unit>" component; "ms" is listed before "m" so "500ms" is not read as "500m" + "s".
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
_PLAIN_NUMBER = re.compile(r"\s*\d+(?:\.\d+)?\s*")
_HELP = 'expected seconds or <number><unit> with units ms, s, m, h, d (e.g. "30s", "10m", "1h30m")'


def parse_duration(value: str | int | float) -> float:
    """Return the duration in seconds; raise ValueError naming the bad value if it is not a duration."""
    if isinstance(value, bool):  # bool is an int subclass, but `timeout: true` is a mistake
        raise ValueError(f"invalid duration {value!r}: {_HELP}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise ValueError(f"invalid duration {value!r}: {_HELP}")
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be a finite number of seconds >= 0")
    return seconds


def _parse_text(text: str) -> float:
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"invalid duration {text!r}: {_HELP}")
    return total


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"invalid duration {value!r}: must be greater than zero")
    return seconds


# A pydantic field type: accepts 30, 2.5, "30s", "1h30m"; stores float seconds; zero is refused
# because every duration in the config (timeouts, windows) would be meaningless at zero.
Duration = Annotated[float, BeforeValidator(_positive_duration)]
