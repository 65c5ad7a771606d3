"""The demo's terminal output: lines, numbered steps, tables, and a held call's progress."""

from __future__ import annotations

import sys
import time


class _Line:
    partial = False  # a progress line is being rewritten in place (on a terminal)


def say(text: str = "") -> None:
    """Print a line (after finishing a progress line being rewritten in place)."""
    if _Line.partial:  # finish the progress line first, so this text starts on a line of its own
        sys.stdout.write("\n")
        _Line.partial = False
    print(text, flush=True)


def step(n: int, title: str, total: int = 5) -> None:
    """A blank line, then `n/total  title`."""
    say()
    say(f"{n}/{total}  {title}")


class Progress:
    """Prints a held call's progress messages: in place on a terminal, else a line when the text changes."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.count = 0
        self.last = ""
        self.last_printed = 0.0

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.count += 1
        text = f"     ... {message or 'still waiting'}"
        if self.tty:
            sys.stdout.write("\r\033[K" + f"{text} [{progress:.0f}s]")
            sys.stdout.flush()
            _Line.partial = True
        elif message != self.last and (self.count == 1 or time.monotonic() - self.last_printed >= 10):
            say(text)
            self.last_printed = time.monotonic()
        self.last = message or ""

    def done(self) -> None:
        if _Line.partial:
            sys.stdout.write("\n")
            sys.stdout.flush()
            _Line.partial = False


def table(rows: list[list[str]], indent: str = "     ") -> None:
    """Print rows as left-aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        say(indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def cut(text: str | None, width: int) -> str:
    """`text` on one line, shortened to `width` characters with an ellipsis."""
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"
