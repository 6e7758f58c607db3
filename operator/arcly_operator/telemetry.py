"""OpenTelemetry for the operator: one span per reconcile action, counters for what it did,
whether this replica leads. Exported like the nodes' (``arcly.observe.sdk``): Prometheus text
at the operator's ``/metrics``, and OTLP when an endpoint is configured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from opentelemetry import metrics, trace
from opentelemetry.metrics import Observation

from arcly.observe import sdk


def configure(*, prometheus: bool = True) -> sdk.Telemetry | None:
    """Install the SDK as the nodes do: Prometheus reader (the operator's ``/metrics``) and
    OTLP export when an endpoint is configured."""
    return sdk.configure("arcly-operator", {"arcly.node.role": "operator"},
                         prometheus=prometheus)


class Telemetry:
    def __init__(self, leading: Callable[[], bool] = lambda: False) -> None:
        self.tracer = trace.get_tracer("arcly.operator")
        meter = metrics.get_meter("arcly.operator")
        self.releases = meter.create_counter(
            "arcly.operator.releases", unit="{key}", description="keys released by the operator")
        self.reaps = meter.create_counter(
            "arcly.operator.reaps", unit="{stream}", description="streams reaped")
        self.transitions = meter.create_counter(
            "arcly.operator.node_transitions", unit="{transition}",
            description="node lifecycle transitions")
        meter.create_observable_gauge(
            "arcly.operator.leader", [lambda _: [Observation(int(leading()))]],
            description="1 on the replica that leads (acts), 0 on the others")

    @contextmanager
    def action(self, name: str, **attributes: str | int) -> Iterator[trace.Span]:
        with self.tracer.start_as_current_span(f"arcly.operator.{name}",
                                               attributes=attributes) as span:
            yield span
