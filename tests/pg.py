"""A throwaway PostgreSQL server for tests: initdb into a temp dir, start on a free port, stop at the end.

`initdb` refuses to run as root, so as root the cluster belongs to the `postgres` user (Debian's
package creates it). Missing binaries make the tests fail with a clear message — never skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.procs import free_port


class PostgresMissing(RuntimeError):
    pass


def pg_bindir() -> Path:
    """Where initdb/pg_ctl live (Debian keeps them out of PATH)."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise PostgresMissing(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's `postgresql` package "
        "(`apt-get install -y postgresql`; .ci/run does this)"
    )


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@dataclass
class PgServer:
    """A running throwaway cluster; `new_database()` gives each test its own database."""

    root: Path
    port: int
    bindir: Path

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-At",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr}")
        return out.stdout.strip()

    def new_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "stop"]),
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        log = self.root / "log"
        cmd = [
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-l",
            str(log),
            "-w",
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            "start",
        ]
        out = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed: {out.stdout}{out.stderr}\n{log.read_text(errors='replace')}"
            )


def start_postgres() -> PgServer:
    """initdb + start a cluster on 127.0.0.1 (about a second)."""
    bindir = pg_bindir()
    root = Path(tempfile.mkdtemp(prefix="signoff-pg-"))
    os.chmod(root, 0o777)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    out = subprocess.run(
        _as_postgres(
            [
                str(bindir / "initdb"),
                "-D",
                str(root / "data"),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"initdb failed: {out.stdout}{out.stderr}")
    server = PgServer(root, free_port(), bindir)
    server.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            server.psql("SELECT 1")
            return server
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def remove(server: PgServer) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)
