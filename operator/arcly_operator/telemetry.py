"""OpenTelemetry for the operator: one span per reconcile action, counters for what it did.

Uses the OpenTelemetry API; with no SDK configured (no ``OTEL_EXPORTER_OTLP_ENDPOINT``) it is a
no-op. With an endpoint set and the OTLP exporter installed, spans and metrics are exported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import metrics, trace

log = logging.getLogger("arcly.operator")


def configure() -> None:
    """Install the SDK exporters when an OTLP endpoint is configured."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or \
            os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTLP exporter not installed; operator telemetry stays local")
        return
    provider = TracerProvider(resource=Resource.create({"service.name": "arcly-operator"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


class Telemetry:
    def __init__(self) -> None:
        self.tracer = trace.get_tracer("arcly.operator")
        meter = metrics.get_meter("arcly.operator")
        self.releases = meter.create_counter(
            "arcly.operator.releases", unit="{key}", description="keys released by the operator")
        self.reaps = meter.create_counter(
            "arcly.operator.reaps", unit="{stream}", description="streams reaped")
        self.transitions = meter.create_counter(
            "arcly.operator.node_transitions", unit="{transition}",
            description="node lifecycle transitions")

    @contextmanager
    def action(self, name: str, **attributes: str | int) -> Iterator[trace.Span]:
        with self.tracer.start_as_current_span(f"arcly.operator.{name}",
                                               attributes=attributes) as span:
            yield span
