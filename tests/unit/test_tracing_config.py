"""When traces are exported (proxy/tracing.py): only when the standard OTEL_* variables say so."""

from __future__ import annotations

from proxy.tracing import configured


def test_off_unless_an_otlp_exporter_is_configured() -> None:
    assert not configured({})
    assert not configured({"OTEL_SERVICE_NAME": "signoff"})
    assert configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert configured({"OTEL_TRACES_EXPORTER": "otlp"})  # the SDK's default endpoint
    assert not configured({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
    assert not configured({"OTEL_TRACES_EXPORTER": "console"})  # never stdout: it is the stdio front's
    assert not configured({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
