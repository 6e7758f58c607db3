"""Installing the OpenTelemetry SDK for a node or the operator: one set of instruments, read
by up to two readers.

- **Prometheus** (``prometheus=True``, the nodes' ``--metrics``, on by default): a reader on a
  registry of our own; ``Telemetry.prometheus_text()`` renders it for ``GET /metrics``. Nothing
  is computed per frame: counters move on session events, per-stream figures are read from the
  kernel when Prometheus scrapes.
- **OTLP** (when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set): traces and metrics pushed to a
  collector over ``OTEL_EXPORTER_OTLP_PROTOCOL`` = ``grpc`` (default) or ``http/protobuf``.

The standard variables apply (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER[_ARG]``, ...); ``OTEL_SDK_DISABLED=true`` turns all of it off,
``/metrics`` included.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace

from .tracing import ChildSpansOnly

log = logging.getLogger("arcly.observe")

PROTOCOLS = ("grpc", "http/protobuf")
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class TelemetryConfigError(ValueError):
    """An ``OTEL_*`` setting we cannot honour; the process refuses to start with it."""


@dataclass(slots=True)
class Telemetry:
    """What ``configure`` installed; ``shutdown`` flushes the exporters."""

    tracing: bool
    meter_provider: Any
    tracer_provider: Any = None
    prometheus: Any = None  # a prometheus_client CollectorRegistry

    def prometheus_text(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.prometheus)) if self.prometheus is not None else b""

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _exporters(protocol: str) -> tuple[Any, Any]:
    """The (span, metric) exporters of an OTLP protocol (each reads its ``OTEL_*`` vars)."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc import metric_exporter, trace_exporter
    else:
        from opentelemetry.exporter.otlp.proto.http import (  # type: ignore[no-redef]
            metric_exporter,
            trace_exporter,
        )
    return trace_exporter.OTLPSpanExporter(), metric_exporter.OTLPMetricExporter()


def configure(service_name: str, attributes: dict[str, str], *, prometheus: bool,
              env: Mapping[str, str] | None = None) -> Telemetry | None:
    """Install the SDK (tracer and meter providers, globally) as the environment and
    ``prometheus`` say. Returns None when everything stays off."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if not endpoint and not prometheus:
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").strip() or "grpc"
    if endpoint and protocol not in PROTOCOLS:
        raise TelemetryConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported "
                                   f"(use {' or '.join(PROTOCOLS)})")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", service_name),
                                **attributes})
    resource = resource.merge(OTELResourceDetector().detect())
    readers: list[MetricReader] = []
    registry = None
    if prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=True)
        readers.append(PrometheusMetricReader(registry=registry))
    tracer_provider = None
    if endpoint:
        span_exporter, metric_exporter = _exporters(protocol)
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        trace.set_tracer_provider(tracer_provider)
        readers.append(PeriodicExportingMetricReader(metric_exporter))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(meter_provider)
    if endpoint:
        _instrument_redis()
    log.info("telemetry on service=%s otlp=%s protocol=%s prometheus=%s",
             resource.attributes.get("service.name"), endpoint or "off", protocol,
             "/metrics" if prometheus else "off")
    return Telemetry(tracing=bool(endpoint), meter_provider=meter_provider,
                     tracer_provider=tracer_provider, prometheus=registry)


def _instrument_redis() -> None:
    """Registry commands inside a traced operation get the official Redis instrumentation. The
    relay is deliberately not wrapped by the gRPC interceptors: it is one long stream per key
    whose context flows origin → edge (the relay span), and its messages must stay free of
    per-frame telemetry work."""
    try:
        from opentelemetry.instrumentation.redis import RedisInstrumentor
    except ImportError:
        log.info("opentelemetry-instrumentation-redis not installed; registry calls untraced")
    else:  # only inside a parent span: heartbeats and renewals are nobody's story
        RedisInstrumentor().instrument(
            tracer_provider=ChildSpansOnly(trace.get_tracer_provider()))
