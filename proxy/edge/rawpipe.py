"""A stdio upstream spoken to in raw JSON-RPC: one child process, one line per message, orjson.

The SDK's client validates every message into pydantic models and moves it through memory
streams and task groups; a gateway forwarding a result untouched needs none of that. This is
the shared link's session for stdio upstreams (a client session that can take sampling,
elicitation or roots requests keeps the SDK's client, which relays them). It speaks just what a
client must: the `initialize` handshake, requests with our own ids and progress tokens, progress
and other notifications, `notifications/cancelled` when a request is given up, and an answer to
every request the server sends (`ping`; anything else is refused, as the SDK's client does when
it has no handler).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, METHOD_NOT_FOUND, REQUEST_TIMEOUT
from opentelemetry import propagate

from proxy import tracing
from proxy.timers import later

log = logging.getLogger("signoff.upstream")

PROTOCOL = "2025-11-25"  # what the SDK's client offers in the handshake (mode="legacy")
LINE_LIMIT = 256 * 1024 * 1024  # one message per line; results can be large
# As the SDK's stdio client: a child inherits only these from our environment (secrets go in `env`).
INHERITED = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER")

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
NotifyFn = Callable[[str, dict[str, Any] | None], Awaitable[None]]


class RawStdio:
    """One child process and the requests in flight on its pipe."""

    def __init__(self, on_notification: NotifyFn) -> None:
        self.on_notification = on_notification
        self.capabilities: dict[str, Any] = {}
        self.closed = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._progress: dict[int, ProgressFn] = {}
        self._reader: asyncio.Task[None] | None = None
        # What the server said, handled in order: a result never overtakes the progress before it.
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def open(
        self, command: str, args: list[str], env: dict[str, str], cwd: str, client_info: dict[str, Any]
    ) -> None:
        """Start the child and do the handshake; raises what starting or the handshake raised."""
        inherited = {
            k: os.environ[k] for k in INHERITED if k in os.environ and not os.environ[k].startswith("()")
        }
        self._proc = await asyncio.create_subprocess_exec(
            command,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**inherited, **env},
            cwd=cwd,
            limit=LINE_LIMIT,
        )
        self._reader = asyncio.create_task(self._read(), name="upstream-stdout")
        self._worker = asyncio.create_task(self._work(), name="upstream-inbox")
        result = await self.request(
            "initialize", {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": client_info}
        )
        self.capabilities = result.get("capabilities") or {}
        await self.notify("notifications/initialized", None)

    async def close(self) -> None:
        """Stop the child: close its stdin, then terminate, then kill (as the SDK's client does)."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 2)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 2)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        for task in (self._reader, self._worker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._fail_all()

    # -- traffic ----------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        timeout: float | None = None,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """The raw result of one request; a JSON-RPC error raises MCPError as the SDK's client does."""
        if self.closed.is_set():
            raise MCPError(CONNECTION_CLOSED, "Connection closed")
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if on_progress is not None or tracing.enabled():
            meta = {**((params or {}).get("_meta") or {})}
            if on_progress is not None:
                meta["progressToken"] = request_id
                self._progress[request_id] = on_progress
            # As the SDK's client does (SEP-414): the upstream's spans join the call's trace.
            propagate.inject(meta)
            params = {**(params or {}), "_meta": meta}
        if params is not None:
            message["params"] = params
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        # A heap entry that fails the answer, not wait_for's waiter, handle and callbacks per call.
        timer = later(timeout, _time_out, answer) if timeout is not None else None
        try:
            self._write(message)
            return await answer
        except TimeoutError:
            self._cancel(request_id, "timed out")
            raise MCPError(REQUEST_TIMEOUT, f"Timed out while waiting for response to {method}") from None
        except asyncio.CancelledError:
            self._cancel(request_id, "the client cancelled the call")
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._waiting.pop(request_id, None)
            self._progress.pop(request_id, None)

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        if not self.closed.is_set():
            self._write(message)

    def _write(self, message: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            raise MCPError(CONNECTION_CLOSED, "Connection closed")
        proc.stdin.write(orjson.dumps(message) + b"\n")

    def _cancel(self, request_id: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            self._write(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": request_id, "reason": reason},
                }
            )

    # -- reading ----------------------------------------------------------------------------------

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        try:
            while line := await stdout.readline():
                try:
                    message = orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.debug("upstream wrote a line that is not JSON: %r", line[:200])
                    continue
                if isinstance(message, dict):
                    self._inbox.put_nowait(message)
        except (ValueError, OSError) as e:  # a line over LINE_LIMIT, a broken pipe
            log.warning("upstream's stdout failed: %s", e)
        finally:
            self._inbox.put_nowait(None)

    async def _work(self) -> None:
        while (message := await self._inbox.get()) is not None:
            try:
                await self._dispatch(message)
            except Exception as e:
                log.debug("upstream message handler failed: %s", e)
        self.closed.set()
        self._fail_all()

    async def _dispatch(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method is None:  # a response
            answer = self._waiting.get(message.get("id"))  # type: ignore[arg-type]
            if answer is None or answer.done():
                return
            error = message.get("error")
            if isinstance(error, dict):
                answer.set_exception(
                    MCPError(error.get("code", -32603), error.get("message", ""), error.get("data"))
                )
            else:
                answer.set_result(message.get("result") or {})
            return
        if "id" in message:  # a request from the server
            self._answer_server_request(message)
            return
        params = message.get("params")
        if method == "notifications/progress" and isinstance(params, dict):
            report = self._progress.get(params.get("progressToken"))  # type: ignore[arg-type]
            if report is not None:
                await report(params.get("progress", 0), params.get("total"), params.get("message"))
            return
        await self.on_notification(method, params if isinstance(params, dict) else None)

    def _answer_server_request(self, message: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if message.get("method") == "ping":
            reply["result"] = {}
        else:
            # This link serves clients that cannot take server requests (else they get their own).
            reply["error"] = {
                "code": METHOD_NOT_FOUND,
                "message": f"Method not found: {message.get('method')}",
            }
        with contextlib.suppress(MCPError):
            self._write(reply)

    def _fail_all(self) -> None:
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(MCPError(CONNECTION_CLOSED, "Connection closed"))


def _time_out(answer: asyncio.Future[Any]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())
