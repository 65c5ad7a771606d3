"""A demo gateway as a child process (`signoff serve`), and the ports it listens on."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def port_free(host: str, port: int) -> bool:
    """Whether `port` on `host` can be bound right now."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def any_free_port(host: str) -> int:
    """A port on `host` that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the demo dies without stopping the gateway (Linux only)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class GatewayProcess:
    """`signoff serve --config …` in its own process group, its output in `log_path`."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=config_path.parent,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops the gateway in order
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )

    def wait_ready(self, control_url: str, timeout: float = 30.0) -> None:
        """Poll /readyz until the gateway and its upstream are up; raise if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"the gateway exited with status {self.popen.returncode}")
            try:
                with urllib.request.urlopen(f"{control_url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:  # 503: an upstream is not up yet
                last = e.read().decode(errors="replace")
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise RuntimeError(f"the gateway was not ready after {timeout:.0f}s ({last})")

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the gateway's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM: the gateway withdraws held calls and flushes the audit log, then exits."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        return self.popen.returncode
