"""Files that hold secrets (the generated admin token, the SQLite database): owner-only, always.

`os.open(..., 0o600)` only sets the mode of a file it creates; a file that already existed keeps
whatever mode it had (0666 included), so the mode is set explicitly every time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

OWNER_ONLY = 0o600


def make_private(path: Path) -> None:
    """Create `path` if missing and make it readable and writable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, OWNER_ONLY)
    try:
        os.fchmod(fd, OWNER_ONLY)
    finally:
        os.close(fd)


def read_or_create_secret(path: Path, make: Callable[[], str]) -> str:
    """The secret kept in `path`, or a new one from `make()` written there first (0600, race-free)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_ONLY)
    except FileExistsError:
        with contextlib.suppress(OSError):
            os.chmod(path, OWNER_ONLY)
        existing = path.read_text().strip()
        if existing:
            return existing
        # An empty file: another process is between creating and writing it, or a crash left it.
        value = make()
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, OWNER_ONLY)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        os.replace(tmp, path)
        return path.read_text().strip() or value
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), OWNER_ONLY)
        fh.write(value := make())
    return value


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for another database or an in-memory one)."""
    if not url.startswith("sqlite") or ":memory:" in url or "///" not in url:
        return None
    return Path(url.split("///", 1)[1].split("?", 1)[0])


def admin_token_path(database_url: str) -> Path | None:
    """Where a generated admin token is kept: beside the SQLite file (none for other databases)."""
    db = sqlite_path(database_url)  # absolute: the config anchors relative SQLite paths
    return db.with_name(db.name + ".admin-token") if db is not None else None
