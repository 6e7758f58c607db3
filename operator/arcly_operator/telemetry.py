"""OpenTelemetry for the operator: one span per reconcile action, counters for what it did.

Uses the OpenTelemetry API; with no SDK configured (no ``OTEL_EXPORTER_OTLP_ENDPOINT``) it is a
no-op. With an endpoint set, spans and metrics are exported over OTLP like the nodes'.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import metrics, trace

from arcly.observe import otel


def configure() -> None:
    """Install the SDK exporters when an OTLP endpoint is configured (shared with the nodes)."""
    otel.configure("arcly-operator", {"arcly.node.role": "operator"})


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
