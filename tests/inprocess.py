"""A gateway run inside the test process, on its own thread and event loop.

For tests that exercise the gateway over its sockets but not its process (its start-up command,
signals, stderr, children): it skips the ≈ 1.8 s of CPU a `signoff serve` process spends importing
its libraries, the largest single cost of the suite. Same `App`, same config file, same ports.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from proxy.app import App
from proxy.config import load_config
from proxy.logs import QUIET_LOGGERS, TextFormatter

# The gateway whose task is running: its log records go to its own output, as a process's would.
_serving: contextvars.ContextVar[InProcessGateway | None] = contextvars.ContextVar("gateway", default=None)


class _ToItsGateway(logging.Handler):
    """Hands a record to the in-process gateway that logged it, formatted as `signoff serve` does."""

    def emit(self, record: logging.LogRecord) -> None:
        gateway = _serving.get()
        if gateway is not None:
            gateway.lines.append(self.format(record))


def _capture_logs() -> None:
    """Once per test process: the levels `signoff serve` sets, and the handler above."""
    root = logging.getLogger()
    if any(isinstance(h, _ToItsGateway) for h in root.handlers):
        return
    handler = _ToItsGateway()
    handler.setFormatter(TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("signoff").setLevel(logging.INFO)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


class InProcessGateway:
    """`App` serving HTTP on a thread; the same URLs as a `tests.procs.Gateway`."""

    def __init__(self, config_path: Path, env: dict[str, str], mcp_url: str, control_url: str) -> None:
        self.config_path = config_path
        self.mcp_url = mcp_url
        self.control_url = control_url
        self._env = env
        self.lines: list[str] = []
        self._saved: dict[str, str | None] = {}
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._app: App | None = None
        self._thread = threading.Thread(target=self._run, name=f"gateway {config_path.stem}", daemon=True)

    def start(self, timeout: float) -> None:
        """Start serving; raise what stopped the start (a config error, a taken port) if it failed."""
        # The gateway reads token and secret variables from the environment, as its process would.
        for key, value in self._env.items():
            self._saved[key] = os.environ.get(key)
            os.environ[key] = value
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"the in-process gateway did not start within {timeout}s")
        if self._error is not None:
            self.stop()
            raise RuntimeError(f"gateway did not start: {self._error}") from self._error

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        """Stop as SIGTERM would (held calls withdrawn, audit flushed, upstreams stopped)."""
        if sig != signal.SIGTERM:
            raise NotImplementedError(f"an in-process gateway cannot be sent {sig!r}; use own_process=True")
        if self._loop is not None and self._app is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._app.stopping.set)
        self._thread.join(timeout)
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved.clear()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        _capture_logs()
        _serving.set(self)  # every task and thread the gateway starts inherits this
        try:
            config = load_config(self.config_path)
            self._app = app = App(config)
            app.front = "http"
            sock = app.bind_http()
        except BaseException as e:
            self._error = e
            self._started.set()
            return
        try:
            await app.start()
            self._started.set()
            await app.serve_http(sock)
        except BaseException as e:
            self._error = e
        finally:
            self._started.set()
            await app.stop()

    def http_connections(self) -> list[Any]:
        """The HTTP front's open connections (their protocol objects, as uvicorn tracks them)."""
        assert self._loop is not None and self._app is not None
        app = self._app

        async def read() -> list[Any]:
            return list(app._http.server_state.connections)

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(10)

    def kill(self) -> None:
        raise NotImplementedError("an in-process gateway cannot be killed; use own_process=True")

    def output(self) -> str:
        """What the gateway logged (not its upstreams' stderr, nor anything printed: a process has those)."""
        return "\n".join(self.lines) + "\n" if self.lines else ""

    @property
    def popen(self) -> Any:
        raise NotImplementedError("an in-process gateway has no process; use own_process=True")
