"""Traces over OTLP/HTTP and the approval metrics, from a real gateway process.

An OTLP/HTTP receiver runs in the test on 127.0.0.1 and decodes what the gateway's OpenTelemetry
SDK exporter posts (opentelemetry-proto). The upstream is served over Streamable HTTP and logs the
`traceparent` header of each request it gets.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from aiohttp import web
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import ADMIN_TOKEN, PEOPLE, Admin, person_token
from tests.procs import PYTHON, ROOT, free_port, spawn, start_gateway, wait_port
from tests.test_lean_path import lean_answers

FIXTURE = str(ROOT / "tests" / "fixtures" / "changing_server.py")
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
META_TRACE = "0af7651916cd43dd8448eb211c80319c"
META_SPAN = "b7ad6b7169203331"
LEAN_TRACE = "5b8aa5a2d2c872e8321cf37308d69df2"
LEAN_SPAN = "051581bf3cb55c13"
RULE = "deploys need approval"


class Receiver:
    """A minimal OTLP/HTTP trace receiver: POST /v1/traces with an ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Span]] = []  # (resource attributes, span)
        self.posts = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        self.posts += 1
        for resource_spans in export.resource_spans:
            resource = attributes(resource_spans.resource)
            for scope_spans in resource_spans.scope_spans:
                self.spans += [(resource, span) for span in scope_spans.spans]
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def named(self, name: str) -> list[Span]:
        return [span for _, span in self.spans if span.name == name]

    async def wait_for(self, name: str, n: int = 1, timeout: float = 15.0) -> list[Span]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(found := self.named(name)) < n:
            names = sorted({s.name for _, s in self.spans})
            assert asyncio.get_running_loop().time() < deadline, f"{n} x {name!r} not received; got {names}"
            await asyncio.sleep(0.05)
        return found


def attributes(item: Any) -> dict[str, Any]:
    """A span's (or resource's) attributes as a plain dict."""
    out: dict[str, Any] = {}
    for kv in item.attributes:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def hexid(raw: bytes) -> str:
    return raw.hex()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
def http_fixture(tmp_path: Path) -> Any:
    """The changing fixture over Streamable HTTP, logging each request's traceparent header."""
    port = free_port()
    headers = tmp_path / "headers.jsonl"
    proc = spawn(
        [PYTHON, FIXTURE, "--http", str(port)], tmp_path / "fixture.log", env={"HEADER_LOG": str(headers)}
    )
    try:
        wait_port(port, 30, proc.popen)
        yield f"http://127.0.0.1:{port}/mcp", headers
    finally:
        proc.stop()


async def approve_for(
    admin: Admin, approval_id: str, user: str, seconds: float
) -> tuple[int, dict[str, Any]]:
    """Approve, and let the same call run without asking for `seconds` (a grant)."""
    headers = {"Authorization": f"Bearer {person_token(user)}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        r = await http.post(
            f"{admin.base}/api/approvals/{approval_id}/decide", json={"decision": "approve", "for": seconds}
        )
        return r.status_code, r.json()


def config(tmp_path: Path, upstream_url: str, timeout: str = "30s") -> dict[str, Any]:
    return {
        "upstreams": {"fixture": {"url": upstream_url}},
        "control": {"host": "127.0.0.1", "port": free_port(), "admin_token": ADMIN_TOKEN},
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
        "approvals": {"progress_interval": "0.5s"},
        "people": PEOPLE,
        "approvers": {"oncall": {"people": ["alice", "bob"]}},
        "policy": {
            "default": "allow",
            "rules": [
                {
                    "name": RULE,
                    "tools": "deploy",
                    "action": "require_approval",
                    "approval": {
                        "approvers": "oncall",
                        "timeout": timeout,
                        "grant": {"max": "10m", "same": ["build"]},
                    },
                }
            ],
        },
    }


@asynccontextmanager
async def gateway(cfg: dict[str, Any], tmp_path: Path, env: dict[str, str]) -> AsyncIterator[Any]:
    # In a thread: the gateway exports to the receiver in this loop while we wait for it to be ready.
    # Its own process: OpenTelemetry's tracer provider is one per process, set up from OTEL_* variables.
    gw = await asyncio.to_thread(start_gateway, cfg, tmp_path, env=env, own_process=True)
    try:
        yield gw
    finally:
        await asyncio.to_thread(gw.stop)


@asynccontextmanager
async def client_with_traceparent(url: str, **options: Any) -> AsyncIterator[Client]:
    """An MCP client whose HTTP requests carry a W3C `traceparent` header (as an instrumented agent's)."""
    http = httpx2.AsyncClient(
        headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}, timeout=httpx2.Timeout(30, read=60)
    )
    try:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy", **options) as client:
            yield client
    finally:
        await http.aclose()


OTEL = {
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    "OTEL_SERVICE_NAME": "signoff-under-test",
    "OTEL_BSP_SCHEDULE_DELAY": "100",  # export every 0.1 s instead of 5 s
}


async def test_a_call_is_traced_with_its_approval_and_the_context_flows(
    tmp_path: Path, receiver: Receiver, http_fixture: tuple[str, Path]
) -> None:
    upstream, headers = http_fixture
    env = {**OTEL, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}"}
    async with (
        gateway(config(tmp_path, upstream), tmp_path, env) as gw,
        client_with_traceparent(gw.mcp_url) as client,
    ):
        admin = Admin(gw.control_url)
        # The lean path knows a session once the SDK has handled its `notifications/initialized`,
        # which it does after answering 202: a first request makes sure, as a client's usually does.
        await client.list_tools()
        call = asyncio.create_task(client.call_tool("deploy", {"build": "b1"}))
        [request] = await admin.pending()
        await asyncio.sleep(0.3)  # an approval that takes a moment: time to decide > 0.3 s
        # Approved for a while: the same build runs again without asking, under the grant.
        assert (await approve_for(admin, request["id"], "alice", 600))[0] == 200
        assert not (await asyncio.wait_for(call, 10)).is_error
        assert not (await client.call_tool("deploy", {"build": "b1"})).is_error

        # The second call carries its trace context in `_meta` instead, and is denied.
        meta = {"traceparent": f"00-{META_TRACE}-{META_SPAN}-01"}
        denied_call = asyncio.create_task(client.session.call_tool("deploy", {"build": "b2"}, meta=meta))
        [second] = await admin.pending()
        await admin.decide(second["id"], "deny", "bob", "not now")
        assert (await asyncio.wait_for(denied_call, 10)).is_error

        # Allowed calls on an existing session take the lean HTTP path (no mcp SDK request span):
        # our span is the request's, parented by the header, or by `_meta` when the client sends one.
        lean_before = lean_answers(gw.control_url)
        assert not (await client.call_tool("get_status", {"target": "t1"})).is_error
        lean_meta = {"traceparent": f"00-{LEAN_TRACE}-{LEAN_SPAN}-01"}
        assert not (await client.session.call_tool("get_status", {"target": "t2"}, meta=lean_meta)).is_error
        assert lean_answers(gw.control_url) == lean_before + 2

        # A session the upstream may send requests to (elicitation) is served by the SDK.
        async with client_with_traceparent(gw.mcp_url, elicitation_callback=_never_asked) as asked:
            assert not (await asked.call_tool("get_status", {"target": "t3"})).is_error
        assert lean_answers(gw.control_url) == lean_before + 2

        calls = await receiver.wait_for("signoff tools/call", 6)
        await receiver.wait_for("signoff upstream")
        await receiver.wait_for("signoff approval", 3)

    resource = next(r for r, s in receiver.spans if s.name == "signoff tools/call")
    assert resource["service.name"] == "signoff-under-test"
    by_id = {hexid(s.span_id): s for _, s in receiver.spans}

    # 1. The client's HTTP traceparent is the root and our request span its child (a held call waits on
    #    a stream of the lean path: no SDK request span in between).
    approved = next(
        s
        for s in receiver.named("signoff approval")
        if attributes(s).get("signoff.approval.id") == request["id"]
    )
    first = by_id[hexid(approved.parent_span_id)]
    assert hexid(first.trace_id) == CLIENT_TRACE
    assert first.kind == Span.SPAN_KIND_SERVER and hexid(first.parent_span_id) == CLIENT_SPAN
    assert attributes(first)["gen_ai.tool.name"] == "deploy"
    assert (
        attributes(first)["signoff.outcome"] == "ok"
        and attributes(first)["signoff.approval.decided_by"] == "alice"
    )

    children = {s.name: s for _, s in receiver.spans if s.parent_span_id == first.span_id}
    assert set(children) == {"signoff policy", "signoff approval", "signoff upstream"}
    policy = attributes(children["signoff policy"])
    assert (policy["signoff.decision"], policy["signoff.rule"]) == ("require_approval", RULE)
    approval = attributes(children["signoff approval"])
    assert approval["signoff.approval.decision"] == "approved"
    assert approval["signoff.approval.decided_by"] == "alice"
    assert approval["signoff.approval.rule"] == RULE and approval["signoff.approval.id"] == request["id"]
    assert approval["signoff.approval.time_to_decide_s"] >= 0.3
    # The phases in order: decided before the upstream was called.
    assert (
        children["signoff approval"].end_time_unix_nano <= children["signoff upstream"].start_time_unix_nano
    )

    # The call the grant let through: its approval span names the grant, and who gave it.
    granted = [
        attributes(s)
        for s in receiver.named("signoff approval")
        if "signoff.approval.grant_id" in attributes(s)
    ]
    assert len(granted) == 1 and granted[0]["signoff.approval.grant_id"].startswith("gr_")
    assert (granted[0]["signoff.approval.decision"], granted[0]["signoff.approval.decided_by"]) == (
        "approved",
        "alice",
    )

    # 2. The upstream call: the SDK's client span nests in ours, and its context went out as the header.
    [send] = [s for _, s in receiver.spans if s.parent_span_id == children["signoff upstream"].span_id]
    assert send.name == "MCP send tools/call deploy" and send.kind == Span.SPAN_KIND_CLIENT
    sent = [json.loads(line)["traceparent"] for line in headers.read_text().splitlines()]
    assert f"00-{CLIENT_TRACE}-{hexid(send.span_id)}-01" in sent

    # 3. A `_meta` traceparent parents the request's spans too; the denial is on the approval span.
    second_call = next(s for s in calls if hexid(s.trace_id) == META_TRACE)
    assert hexid(second_call.parent_span_id) == META_SPAN
    refused = [s for _, s in receiver.spans if s.parent_span_id == second_call.span_id]
    assert {s.name for s in refused} == {"signoff policy", "signoff approval"}  # never reached the upstream
    denial = attributes(next(s for s in refused if s.name == "signoff approval"))
    assert (denial["signoff.approval.decision"], denial["signoff.approval.decided_by"]) == ("denied", "bob")
    assert attributes(second_call)["signoff.outcome"] == "denied"
    assert second_call.status.code == 2  # STATUS_CODE_ERROR

    # 4. The lean path: no SDK span in between, ours is the server span; through the SDK, its
    #    request span is the header's child and ours is under it.
    status_calls = [s for s in calls if attributes(s)["gen_ai.tool.name"] == "get_status"]
    [sdk_call] = [s for s in status_calls if hexid(s.parent_span_id) in by_id]
    sdk_span = by_id[hexid(sdk_call.parent_span_id)]
    assert sdk_span.name == "tools/call get_status" and sdk_span.kind == Span.SPAN_KIND_SERVER
    assert hexid(sdk_span.parent_span_id) == CLIENT_SPAN
    lean = [s for s in status_calls if s is not sdk_call]
    assert all(s.kind == Span.SPAN_KIND_SERVER for s in lean)
    assert {(hexid(s.trace_id), hexid(s.parent_span_id)) for s in lean} == {
        (CLIENT_TRACE, CLIENT_SPAN),
        (LEAN_TRACE, LEAN_SPAN),
    }
    for span in lean:
        names = {s.name for _, s in receiver.spans if s.parent_span_id == span.span_id}
        assert names == {"signoff policy", "signoff upstream"}


async def test_a_stdio_upstream_gets_the_trace_context_in_meta(tmp_path: Path, receiver: Receiver) -> None:
    """Shared stdio links speak raw JSON-RPC (`proxy.edge.rawpipe`): they put the context in `_meta` too."""
    exec_log = tmp_path / "exec.jsonl"
    cfg = config(tmp_path, "unused")
    cfg["upstreams"] = {"fixture": {"command": PYTHON, "args": [FIXTURE], "env": {"EXEC_LOG": str(exec_log)}}}
    cfg["policy"]["rules"][0]["tools"] = "wipe"  # `deploy` runs without asking
    env = {**OTEL, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}"}
    async with gateway(cfg, tmp_path, env) as gw, client_with_traceparent(gw.mcp_url) as client:
        assert not (await client.call_tool("deploy", {"build": "b1"})).is_error
        await receiver.wait_for("signoff upstream")
    [upstream_span] = receiver.named("signoff upstream")
    [run] = [json.loads(line) for line in exec_log.read_text().splitlines() if '"deploy"' in line]
    # The upstream's server span will be a child of our upstream span, in the client's trace.
    assert run["traceparent"] == f"00-{CLIENT_TRACE}-{hexid(upstream_span.span_id)}-01"


async def _never_asked(*_: Any) -> Any:
    raise AssertionError("the upstream asks nothing here")


def metrics(gw: Any) -> str:
    with urllib.request.urlopen(gw.control_url + "/metrics", timeout=5) as r:
        return r.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample (labels in any order), or None when absent."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or "")) == labels:
            return float(match.group(2))
    return None


async def test_approval_metrics_and_tracing_off(
    tmp_path: Path, receiver: Receiver, http_fixture: tuple[str, Path]
) -> None:
    upstream, headers = http_fixture
    # An endpoint, but the SDK switched off: nothing is exported, no header goes upstream.
    env = {
        **OTEL,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_SDK_DISABLED": "true",
    }
    cfg = config(tmp_path, upstream, timeout="1s")
    async with gateway(cfg, tmp_path, env) as gw, Client(gw.mcp_url, mode="legacy") as client:
        admin = Admin(gw.control_url)
        before = metrics(gw)
        assert "# TYPE signoff_approval_time_to_decide_seconds histogram" in before
        assert "# TYPE signoff_approval_decisions_total counter" in before

        expired = await client.call_tool("deploy", {"build": "late"})  # nobody decides within 1 s
        assert expired.is_error
        call = asyncio.create_task(client.call_tool("deploy", {"build": "b1"}))
        [request] = await admin.pending()
        assert sample(metrics(gw), "signoff_pending_approvals") == 1.0
        await admin.decide(request["id"], "approve", "alice")
        await asyncio.wait_for(call, 10)
        call = asyncio.create_task(client.call_tool("deploy", {"build": "b2"}))
        [request] = await admin.pending()
        await admin.decide(request["id"], "deny", "bob", "no")
        await asyncio.wait_for(call, 10)

        after = metrics(gw)
        assert sample(after, "signoff_approval_decisions_total", outcome="approved", channel="web") == 1.0
        assert sample(after, "signoff_approval_decisions_total", outcome="denied", channel="web") == 1.0
        assert sample(after, "signoff_approval_decisions_total", outcome="expired", channel="timeout") == 1.0
        assert sample(after, "signoff_approval_time_to_decide_seconds_count", outcome="approved") == 1.0
        waited = sample(after, "signoff_approval_time_to_decide_seconds_sum", outcome="expired")
        assert waited is not None and 1.0 <= waited < 5
        assert (
            sample(after, "signoff_approval_time_to_decide_seconds_bucket", outcome="expired", le="1.0")
            == 0.0
        )
        assert (
            sample(after, "signoff_approval_time_to_decide_seconds_bucket", outcome="expired", le="5.0")
            == 1.0
        )
        assert sample(after, "signoff_pending_approvals") == 0.0
    assert receiver.posts == 0
    assert all(not json.loads(line)["traceparent"] for line in headers.read_text().splitlines())
