"""OpenTelemetry traces, exported over OTLP/HTTP when the standard `OTEL_*` variables ask for it.

Off unless configured: with neither `OTEL_TRACES_EXPORTER=otlp` nor an `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`,
the SDK is never imported, no stage is added to the call path, and only the no-op API runs (the mcp
SDK's own spans). When on, every `tools/call` gets a `signoff tools/call` span — a child of the mcp
SDK's request span, not a second root — with `signoff policy`, `signoff approval` and `signoff
upstream` children (`proxy.stages.tracing`). Trace context comes from the client (the `_meta`
traceparent, read by the mcp SDK, or the HTTP `traceparent` header: `TraceContext`) and goes to the
upstreams (in `_meta`, put there by the mcp SDK or `proxy.edge.rawpipe`; `inject_headers` adds the HTTP
header for HTTP upstreams).

Configuration is the SDK's: `OTEL_EXPORTER_OTLP_ENDPOINT` (posts to `<endpoint>/v1/traces`),
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME` (default `signoff`), `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_BSP_*` for batching, `OTEL_SDK_DISABLED=true` to turn it all off.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from opentelemetry import context, propagate, trace

log = logging.getLogger("signoff.tracing")

TRACER_NAME = "signoff"
_provider: Any = None  # the SDK's TracerProvider, once `setup` has installed one


def configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether the `OTEL_*` variables ask for traces to be exported over OTLP."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return "otlp" in {e.strip().lower() for e in exporters.split(",")}
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(env: Mapping[str, str] | None = None) -> bool:
    """Install the SDK's tracer provider and OTLP/HTTP exporter if configured; True when tracing is on."""
    global _provider
    if _provider is not None:
        return True
    env = os.environ if env is None else env
    if not configured(env):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        log.warning(
            "OTEL_EXPORTER_OTLP_PROTOCOL=%s: signoff exports traces over http/protobuf only", protocol
        )
    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": "signoff"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("OpenTelemetry: exporting traces over OTLP/HTTP")
    return True


def enabled() -> bool:
    """Whether `setup` turned tracing on in this process."""
    return _provider is not None


async def shutdown() -> None:
    """Export what is still buffered (the exporter blocks, so off the event loop)."""
    if _provider is not None:
        await asyncio.to_thread(_provider.force_flush)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


async def inject_headers(request: Any) -> None:
    """httpx request hook: the current trace context as `traceparent` (and `tracestate`) headers.

    The mcp SDK sends each upstream request from a task that runs in the caller's context, inside
    its "MCP send" span, so the header names that span as the parent.
    """
    propagate.inject(request.headers)


def http_event_hooks() -> dict[str, list[Callable[[Any], Awaitable[None]]]] | None:
    """Event hooks for an HTTP upstream's client (none when tracing is off)."""
    return {"request": [inject_headers]} if enabled() else None


class TraceContext:
    """ASGI middleware: a client's HTTP `traceparent` header becomes the parent of the request's spans.

    The mcp SDK reads a traceparent from `_meta` only; this makes the header count too (the SDK's
    request span then starts under it, since the session runs handlers in the sender's context).
    A `_meta` traceparent, when the client sends both, still wins.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers") or ()
            if k in (b"traceparent", b"tracestate")
        }
        if "traceparent" not in carrier:
            await self.app(scope, receive, send)
            return
        token = context.attach(propagate.extract(carrier))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)
