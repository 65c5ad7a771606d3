"""Real processes for tests: free ports, child processes that are always reaped, a running gateway."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import yaml

if TYPE_CHECKING:
    from tests.inprocess import InProcessGateway

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SIGNOFF = [PYTHON, "-m", "proxy.cli"]


# Below Linux's ephemeral range (32768-60999): a port the kernel picked with bind(0) is also what it
# hands the next outgoing connection, and the suite makes thousands, so a server starting a moment
# later could find its port taken. Each pytest-xdist worker takes ports from its own slice of this
# range, in turn, so two workers never pick the same port either.
PORTS = range(20000, 32000)
SLICES = 8


def _slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % SLICES if worker.isdigit() else 0
    size = len(PORTS) // SLICES
    return range(PORTS.start + index * size, PORTS.start + (index + 1) * size)


_ours = _slice()
# From a random place in the slice: two test runs at once (rare) then rarely meet.
_next = itertools.cycle([*_ours[(start := random.randrange(len(_ours))) :], *_ours[:start]])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago: the next bindable one of this worker's slice."""
    for _ in range(len(_ours)):
        port = next(_next)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_ours.start}-{_ours.stop - 1}")


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `proc` died."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception as e:
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


@dataclass
class Proc:
    """A child process with its log file; `stop()` terminates it and its group."""

    popen: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        return self.popen.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Proc:
    """Start `cmd` in its own process group, stdout+stderr to `log`."""
    full_env = {**os.environ, **(env or {})}
    fh = open(log, "ab")  # noqa: SIM115 - the child owns it
    popen = subprocess.Popen(
        cmd,
        stdout=fh,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )
    fh.close()
    return Proc(popen, log)


@dataclass
class Gateway(Proc):
    """A running `signoff serve` with its agent-facing and control URLs."""

    config_path: Path = Path()
    mcp_url: str = ""
    control_url: str = ""


# What start_gateway hands back: the same URLs, stop/kill and output, on a thread or a process.
RunningGateway: TypeAlias = "Gateway | InProcessGateway"


def write_config(config: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_gateway(
    config: dict[str, Any],
    tmp_path: Path,
    env: dict[str, str] | None = None,
    name: str = "gateway",
    ready_timeout: float = 30.0,
    ready_path: str = "/readyz",
    own_process: bool = False,
) -> RunningGateway:
    """Write `config` (listen/control ports filled in when absent), start the gateway, wait until ready.

    It runs on a thread of this process (`tests.inprocess`): most tests are of what the gateway does
    over its sockets. `own_process`: a `signoff serve` process, for tests of the process itself (its
    command line, log, signals, exit, children).
    """
    ours = "listen" not in config and "control" not in config
    for _ in range(3):
        try:
            return _start_gateway(config, tmp_path, env, name, ready_timeout, ready_path, own_process)
        except PortTaken:
            if not ours:
                raise
            (tmp_path / f"{name}.log").unlink(missing_ok=True)  # the retry's log without this attempt
    return _start_gateway(config, tmp_path, env, name, ready_timeout, ready_path, own_process)


class PortTaken(RuntimeError):
    """The gateway could not listen: a port picked as free was taken before it started."""


def _start_gateway(
    config: dict[str, Any],
    tmp_path: Path,
    env: dict[str, str] | None,
    name: str,
    ready_timeout: float,
    ready_path: str,
    own_process: bool,
) -> RunningGateway:
    config = dict(config)
    config.setdefault("listen", {"host": "127.0.0.1", "port": free_port()})
    config.setdefault("control", {"host": "127.0.0.1", "port": free_port()})
    config.setdefault("database_url", f"sqlite+aiosqlite:///{tmp_path / (name + '.db')}")
    path = write_config(config, tmp_path / f"{name}.yaml")
    if not own_process:
        return _start_in_process(config, path, env, ready_timeout, ready_path)
    proc = spawn([*SIGNOFF, "serve", "--config", str(path)], tmp_path / f"{name}.log", env=env)
    listen, control = config["listen"], config["control"]
    gw = Gateway(
        proc.popen,
        proc.log,
        config_path=path,
        mcp_url=f"http://{listen['host']}:{listen['port']}/mcp",
        control_url=f"http://{control['host']}:{control['port']}",
    )
    try:
        wait_http(gw.control_url + ready_path, ready_timeout, gw.popen)
    except Exception as e:
        gw.stop()
        output = gw.output()
        kind = PortTaken if "Address already in use" in output else RuntimeError
        raise kind(f"gateway did not become ready: {e}\n--- log ---\n{output}") from e
    return gw


def _start_in_process(
    config: dict[str, Any], path: Path, env: dict[str, str] | None, ready_timeout: float, ready_path: str
) -> InProcessGateway:
    from tests.inprocess import InProcessGateway

    listen, control = config["listen"], config["control"]
    gw = InProcessGateway(
        path,
        env or {},
        mcp_url=f"http://{listen['host']}:{listen['port']}/mcp",
        control_url=f"http://{control['host']}:{control['port']}",
    )
    try:
        gw.start(ready_timeout)
        wait_http(gw.control_url + ready_path, ready_timeout)
    except Exception as e:
        gw.stop()
        raise (PortTaken if "Address already in use" in str(e) else RuntimeError)(str(e)) from e
    return gw


@contextlib.contextmanager
def running_gateway(config: dict[str, Any], tmp_path: Path, **kw: Any) -> Iterator[RunningGateway]:
    gw = start_gateway(config, tmp_path, **kw)
    try:
        yield gw
    finally:
        gw.stop()
