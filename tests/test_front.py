"""The agent-facing front (`proxy.edge.front`): lean calls answered on the connection, the rest by uvicorn.

Raw sockets, so that what is on the wire is exactly what the test wrote: requests written at once
(pipelined), a connection that changes hands half-way, a chunked body, `Connection: close`, heads
that no parser should take, and a client that hangs up on a held call.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from proxy.edge.front import FrontProtocol
from tests.conftest import RAW_HEADERS, RAW_INIT, RAW_PROTOCOL, Admin, executions
from tests.test_clients import (
    GONE,
    TOKEN,
    assert_gone_and_late_approval_runs_nothing,
    delete_call,
    gateway,
    open_session,
)
from tests.test_lean_path import lean_answers


def echo(request_id: int, text: str) -> dict[str, Any]:
    params = {"name": "echo", "arguments": {"text": text}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def post(url: str, headers: dict[str, str], message: dict[str, Any], *extra: str) -> bytes:
    """One POST as a client writes it (`extra`: more header lines, as they are)."""
    body = orjson.dumps(message)
    parts = urlsplit(url)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()] + list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def message(self) -> dict[str, Any]:
        """The JSON-RPC message of a JSON body or of an SSE reply's last `data:` line."""
        if self.headers.get("content-type", "").startswith("text/event-stream"):
            data = [line[5:].strip() for line in self.body.split(b"\n") if line.startswith(b"data:")]
            return orjson.loads([d for d in data if d][-1])
        return orjson.loads(self.body)


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        chunks = []
        while size := int((await reader.readline()).strip(), 16):
            chunks.append(await reader.readexactly(size))
            await reader.readline()
        await reader.readline()
        body = b"".join(chunks)
    else:
        body = await reader.read()
    return Reply(int(status_line.split()[1]), headers, body)


async def exchange(url: str, data: bytes, replies: int) -> tuple[list[Reply], bytes]:
    """Write `data` at once on a new connection; read `replies` replies, then what follows until EOF (1 s)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(data)
        out = [await asyncio.wait_for(read_reply(reader), 30) for _ in range(replies)]
        try:
            rest = await asyncio.wait_for(reader.read(), 1.0)
        except TimeoutError:
            rest = b"(still open)"
        return out, rest
    finally:
        writer.close()


async def test_calls_written_at_once_are_answered_in_order_on_the_lean_front(
    tmp_path: Path, exec_log: Path
) -> None:
    with gateway(exec_log, tmp_path, grace="2s") as gw:
        headers = await open_session(gw.mcp_url)
        before = lean_answers(gw.control_url)
        data = b"".join(post(gw.mcp_url, headers, echo(i, f"call {i}")) for i in range(1, 4))
        replies, rest = await exchange(gw.mcp_url, data, 3)
        assert [r.status for r in replies] == [200] * 3
        assert [r.message()["id"] for r in replies] == [1, 2, 3]
        assert [r.message()["result"]["content"][0]["text"] for r in replies] == [
            "call 1",
            "call 2",
            "call 3",
        ]
        assert all(r.headers["mcp-session-id"] == headers["mcp-session-id"] for r in replies)
        assert rest == b"(still open)"  # kept alive for the next request
        assert lean_answers(gw.control_url) == before + 3
    assert [e["args"]["text"] for e in executions(exec_log, "echo")] == ["call 1", "call 2", "call 3"]


async def test_a_connection_handed_to_the_sdk_half_way_loses_nothing(tmp_path: Path, exec_log: Path) -> None:
    """A lean call, then (in the same write) requests only the SDK serves: every one answered, in order."""
    with gateway(exec_log, tmp_path, grace="2s") as gw:
        headers = await open_session(gw.mcp_url)
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        chunked_body = orjson.dumps(echo(3, "chunked"))
        chunked = post(gw.mcp_url, headers, echo(3, "chunked")).split(b"\r\n\r\n")[0].replace(
            f"Content-Length: {len(chunked_body)}".encode(), b"Transfer-Encoding: chunked"
        ) + b"\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(chunked_body), chunked_body)
        data = post(gw.mcp_url, headers, echo(1, "lean")) + post(gw.mcp_url, headers, ping) + chunked
        data += post(gw.mcp_url, headers, echo(4, "after"))
        replies, _ = await exchange(gw.mcp_url, data, 4)
        assert [r.status for r in replies] == [200] * 4, [r.body for r in replies]
        messages = [r.message() for r in replies]
        assert [m["id"] for m in messages] == [1, 2, 3, 4]
        assert messages[1]["result"] == {}
        assert [messages[i]["result"]["content"][0]["text"] for i in (0, 2, 3)] == [
            "lean",
            "chunked",
            "after",
        ]
    assert [e["args"]["text"] for e in executions(exec_log, "echo")] == ["lean", "chunked", "after"]


async def test_connection_close_is_honoured(tmp_path: Path, exec_log: Path) -> None:
    with gateway(exec_log, tmp_path, grace="2s") as gw:
        headers = await open_session(gw.mcp_url)
        [reply], rest = await exchange(
            gw.mcp_url, post(gw.mcp_url, headers, echo(1, "bye"), "Connection: close"), 1
        )
        assert reply.status == 200 and reply.message()["result"]["content"][0]["text"] == "bye"
        assert reply.headers.get("connection") == "close"
        assert rest == b""  # closed by the gateway


async def test_heads_no_parser_should_take_are_refused_and_run_nothing(
    tmp_path: Path, exec_log: Path
) -> None:
    with gateway(exec_log, tmp_path, grace="2s") as gw:
        headers = await open_session(gw.mcp_url)
        good = post(gw.mcp_url, headers, echo(1, "smuggled"))
        length = good.split(b"Content-Length: ")[1].split(b"\r\n")[0]
        for bad in (
            # Two lengths that disagree: which body is the request, and which the next one?
            good.replace(b"Content-Length: %b" % length, b"Content-Length: %b\r\nContent-Length: 5" % length),
            good.replace(
                b"Content-Length: %b" % length, b"Content-Length: %b\r\nTransfer-Encoding: chunked" % length
            ),
            good.replace(b"Content-Length: %b" % length, b"Content-Length: +%b" % length),
            b"POST /mcp HTTP/1.1\r\nHost\r\n\r\n",
        ):
            [reply], rest = await exchange(gw.mcp_url, bad, 1)
            assert reply.status == 400, (bad, reply.status, reply.body)
            assert rest == b"", bad
    assert executions(exec_log, "echo") == []


async def test_a_call_held_on_the_connection_that_opened_its_session_waits_on_the_front_and_a_hang_up_ends_it(
    tmp_path: Path, exec_log: Path
) -> None:
    """`initialize` is lent to uvicorn; the connection comes back, and the held call waits on the front."""
    with gateway(exec_log, tmp_path, grace="1s") as gw:
        admin = Admin(gw.control_url)
        parts = urlsplit(gw.mcp_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        headers = {**RAW_HEADERS, "Authorization": f"Bearer {TOKEN}"}
        writer.write(post(gw.mcp_url, headers, RAW_INIT))
        init = await asyncio.wait_for(read_reply(reader), 30)
        assert init.status == 200 and init.message()["result"]["protocolVersion"] == RAW_PROTOCOL
        headers |= {"Mcp-Session-Id": init.headers["mcp-session-id"], "Mcp-Protocol-Version": RAW_PROTOCOL}
        writer.write(post(gw.mcp_url, headers, {"jsonrpc": "2.0", "method": "notifications/initialized"}))
        assert (await asyncio.wait_for(read_reply(reader), 30)).status == 202
        # A session's first call may go through the SDK, which makes the session known to the lean path.
        writer.write(post(gw.mcp_url, headers, echo(2, "first")))
        assert (await asyncio.wait_for(read_reply(reader), 30)).message()["id"] == 2
        writer.write(post(gw.mcp_url, headers, delete_call(5, "left")))
        assert (await asyncio.wait_for(reader.readline(), 30)).startswith(b"HTTP/1.1 200")
        [pending] = await admin.pending()
        # The held call waits on the front's own connection, not on a uvicorn request cycle.
        connections = gw.http_connections()
        assert [type(c) for c in connections] == [FrontProtocol], connections
        assert connections[0].response is not None
        writer.close()
        await assert_gone_and_late_approval_runs_nothing(admin, gw.control_url, pending["id"])
        assert (await admin.get(pending["id"]))["reason"] == GONE
    assert executions(exec_log, "delete_thing") == []


async def test_a_bad_token_on_a_new_connection_is_refused_by_name(tmp_path: Path, exec_log: Path) -> None:
    with gateway(exec_log, tmp_path, grace="2s") as gw:
        headers = await open_session(gw.mcp_url)
        for value, said in ((f"Bearer {TOKEN}x", "invalid bearer token"), ("", "missing bearer token")):
            message = post(gw.mcp_url, {**headers, "Authorization": value}, echo(1, "no"))
            if not value:
                message = message.replace(b"Authorization: \r\n", b"")
            [reply], _ = await exchange(gw.mcp_url, message, 1)
            assert reply.status == 401 and said in reply.message()["error"]["message"], reply.body
        # Refused on its head: the body a client without a token announces is not waited for.
        head = post(gw.mcp_url, {**headers, "Authorization": "Bearer wrong"}, echo(1, "no")).split(
            b"\r\n\r\n"
        )[0]
        announced = head.replace(b"Content-Length: ", b"Content-Length: 9") + b"\r\n\r\n"
        [reply], _ = await exchange(gw.mcp_url, announced, 1)
        assert reply.status == 401 and "invalid bearer token" in reply.message()["error"]["message"]
    assert executions(exec_log, "echo") == []
