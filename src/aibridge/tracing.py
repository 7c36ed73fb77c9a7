"""OpenTelemetry spans: one per interception, one child per upstream attempt.

Off by default; on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set or the config says
``tracing: {enabled: true}``. When off, the gateway holds ``None`` instead of a
tracer and the request path pays one ``is None`` check per request and attempt.
The OpenTelemetry packages are imported only when tracing is on.
"""

import os
from contextlib import AbstractContextManager
from typing import Any


class Tracing:
    """Starts spans with aibridge's attribute names on a given OpenTelemetry tracer."""

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer

    def interception(self, name: str, attributes: dict[str, Any]) -> Any:
        """A started (not current) span for one request; end it with ``end_interception``."""
        return self._tracer.start_span(name, attributes=attributes)

    def attempt(self, parent: Any, number: int, key_hint: str) -> AbstractContextManager[Any]:
        from opentelemetry import trace

        context = trace.set_span_in_context(parent)
        span: AbstractContextManager[Any] = self._tracer.start_as_current_span(
            "upstream attempt",
            context=context,
            attributes={"aibridge.attempt": number, "aibridge.key_hint": key_hint},
        )
        return span

    @staticmethod
    def end_interception(span: Any, status: int, attributes: dict[str, Any]) -> None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("http.response.status_code", status)
        for name, value in attributes.items():
            if value is not None:
                span.set_attribute(name, value)
        if status >= 500 or status == 0:
            span.set_status(Status(StatusCode.ERROR))
        span.end()


def tracing_enabled(config_enabled: bool) -> bool:
    return config_enabled or bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup_tracing(config_enabled: bool, tracer_provider: Any = None) -> Tracing | None:
    """A Tracing when enabled (and the packages are installed), else None."""
    if tracer_provider is None and not tracing_enabled(config_enabled):
        return None
    try:
        from opentelemetry import trace
    except ImportError as err:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "tracing is enabled but OpenTelemetry is not installed: pip install 'aibridge[tracing]'"
        ) from err
    if tracer_provider is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tracer_provider = TracerProvider(resource=Resource.create({"service.name": "aibridge"}))
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(tracer_provider)
    return Tracing(tracer_provider.get_tracer("aibridge"))
