"""OpenTelemetry: traces and metrics of stream sessions (an ``Observer``, outside the kernel).

Trace design — one stream session reads as one story:

- ``publish {app}/{stream}`` (SERVER) on the node that receives the publish: open for the whole
  session, ended with the end reason. A ``publish started`` child span ends at once, so a
  session shows up in the backend within seconds, not when it ends.
- ``relay {app}/{stream}`` (CONSUMER) on every edge that relays the stream: a child of the
  publish span, whose ``traceparent`` the origin sends in the relay call's initial metadata
  (and stores in the stream's registry record, for late joiners). Also with a ``started`` child.
- ``play {app}/{stream}`` (SERVER) per viewer session, linked to the publish (origin/single) or
  relay (edge) span of the stream, with protocol and peer.

No span, event or attribute is created per frame. Metrics: publishers, viewers by protocol,
bytes/frames in and GOP cache size per stream, reaped streams, slow-viewer skips, relay lag.

Configured by the standard ``OTEL_*`` variables (endpoint, protocol, service name, resource
attributes, sampler); off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable

from opentelemetry import context, metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from arcly.engine import (
    RELAYED,
    AuthError,
    AuthGrant,
    AuthProvider,
    AuthRequest,
    CloseReason,
    Engine,
    NullObserver,
    Stream,
    StreamKey,
)

log = logging.getLogger("arcly.observe")

_INTERNAL = {"hls": "hls", "record": "record", "relay": "relay"}


def configure(service_name: str, attributes: dict[str, str]) -> Callable[[], None] | None:
    """Install the SDK with OTLP exporters when an endpoint is configured. Returns a function
    that flushes and shuts them down, or None when telemetry stays off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or \
            not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if protocol != "grpc":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; using grpc", protocol)
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                               service_name), **attributes})
    resource = resource.merge(OTELResourceDetector().detect())
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    meter_provider = MeterProvider(resource=resource, metric_readers=[
        PeriodicExportingMetricReader(OTLPMetricExporter())])
    metrics.set_meter_provider(meter_provider)
    # Registry commands (claims, renewals, heartbeats: seconds apart, never per frame) get the
    # official Redis instrumentation. The relay is deliberately not wrapped by the gRPC
    # interceptors: it is one long stream per key whose context flows origin -> edge (see the
    # relay span), and its messages must stay free of per-frame telemetry work.
    try:
        from opentelemetry.instrumentation.redis import RedisInstrumentor
    except ImportError:
        log.info("opentelemetry-instrumentation-redis not installed; registry calls untraced")
    else:
        RedisInstrumentor().instrument()
    log.info("telemetry on endpoint=%s service=%s", os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"],
             resource.attributes.get("service.name"))

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return shutdown


class OtelObserver(NullObserver):
    """Spans and event-driven metrics for one node (per-stream figures: ``StreamMetrics``)."""

    def __init__(self, *, node_id: str, role: str,
                 remote_parent: Callable[[StreamKey], str | None] | None = None,
                 on_session: Callable[[StreamKey, str], None] | None = None,
                 relay_lag: Callable[[], float] | None = None) -> None:
        self.node_id = node_id
        self.role = role
        self.remote_parent = remote_parent
        self.on_session = on_session
        self.tracer = trace.get_tracer("arcly")
        self._sessions: dict[StreamKey, trace.Span] = {}
        self._plays: dict[tuple[StreamKey, str, str], trace.Span] = {}
        meter = metrics.get_meter("arcly")
        self.publishers = meter.create_up_down_counter(
            "arcly.publishers", unit="{publisher}", description="live publish sessions")
        self.viewers = meter.create_up_down_counter(
            "arcly.viewers", unit="{viewer}", description="live viewers by protocol")
        self.reaped = meter.create_counter(
            "arcly.streams.reaped", unit="{stream}", description="idle streams reaped")
        self.first_frame = meter.create_histogram(
            "arcly.play.time_to_first_frame", unit="s",
            description="from subscribing to the first frames handed to the viewer's socket")
        self.skips = meter.create_counter(
            "arcly.viewer.skips", unit="{skip}",
            description="times a slow viewer skipped to the next keyframe")
        self.dropped = meter.create_counter(
            "arcly.viewer.dropped_frames", unit="{frame}",
            description="frames not delivered to viewers that fell behind")
        self._dropped_seen: dict[tuple[StreamKey, str, str], int] = {}
        if relay_lag is not None:
            lag = relay_lag
            meter.create_observable_gauge(
                "arcly.relay.lag", [lambda _: [Observation(lag() / 1000)]], unit="s",
                description="origin-to-edge delay of the latest relayed frame")

    # -- spans --------------------------------------------------------------------------------

    def _attributes(self, key: StreamKey, protocol: str, peer: str) -> dict[str, str]:
        attributes = {"arcly.stream.key": str(key), "arcly.stream.app": key.app,
                      "arcly.node.id": self.node_id, "arcly.node.role": self.role,
                      "network.protocol.name": protocol}
        if peer:
            attributes["client.address"] = peer.rpartition(":")[0] or peer
        return attributes

    def traceparent(self, key: StreamKey) -> str | None:
        """The W3C ``traceparent`` of ``key``'s session span (for relay metadata)."""
        span = self._sessions.get(key)
        if span is None:
            return None
        carrier: dict[str, str] = {}
        inject(carrier, context=trace.set_span_in_context(span))
        return carrier.get("traceparent")

    def on_publish_start(self, key: StreamKey, protocol: str, peer: str) -> None:
        attributes = self._attributes(key, protocol, peer)
        if protocol == RELAYED:  # an edge relaying from the stream's origin
            remote = self.remote_parent(key) if self.remote_parent else None
            parent = extract({"traceparent": remote}) if remote else context.Context()
            name = f"relay {key}"
            span = self.tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER,
                                          attributes=attributes)
        else:
            name = f"publish {key}"
            span = self.tracer.start_span(name, context=context.Context(),
                                          kind=SpanKind.SERVER, attributes=attributes)
            self.publishers.add(1, {"network.protocol.name": protocol})
        self._sessions[key] = span
        started = self.tracer.start_span(f"{name} started",
                                         context=trace.set_span_in_context(span),
                                         attributes=attributes)
        started.end()
        if self.on_session is not None and protocol != RELAYED:
            traceparent = self.traceparent(key)
            if traceparent:
                self.on_session(key, traceparent)

    def on_publish_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        span = self._sessions.pop(key, None)
        if protocol != RELAYED:
            self.publishers.add(-1, {"network.protocol.name": protocol})
        if span is not None:
            span.set_attribute("arcly.end_reason", reason)
            span.end()

    def on_play_start(self, key: StreamKey, protocol: str, peer: str) -> None:
        if protocol in _INTERNAL:
            return  # segmenters, recorders and relay subscriptions are not viewers
        self.viewers.add(1, {"network.protocol.name": protocol})
        session = self._sessions.get(key)
        links = [Link(session.get_span_context())] if session is not None else []
        self._plays[(key, protocol, peer)] = self.tracer.start_span(
            f"play {key}", context=context.Context(), kind=SpanKind.SERVER, links=links,
            attributes=self._attributes(key, protocol, peer))

    def on_play_first_frame(self, key: StreamKey, protocol: str, peer: str,
                            seconds: float) -> None:
        if protocol in _INTERNAL:
            return
        self.first_frame.record(seconds, {"network.protocol.name": protocol})
        span = self._plays.get((key, protocol, peer))
        if span is not None:
            span.set_attribute("arcly.play.first_frame_seconds", seconds)
            span.add_event("first frame")

    def on_play_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        if protocol in _INTERNAL:
            return
        self.viewers.add(-1, {"network.protocol.name": protocol})
        self._dropped_seen.pop((key, protocol, peer), None)
        span = self._plays.pop((key, protocol, peer), None)
        if span is not None:
            span.set_attribute("arcly.end_reason", reason)
            if reason == CloseReason.SLOW_VIEWER:
                span.set_status(Status(StatusCode.ERROR, reason))
            span.end()

    def on_handshake(self, protocol: str, peer: str, style: str, seconds: float) -> None:
        end = time.time_ns()
        span = self.tracer.start_span(f"{protocol} handshake", context=context.Context(),
                                      start_time=end - int(seconds * 1e9), attributes={
                                          "arcly.node.id": self.node_id,
                                          "network.protocol.name": protocol,
                                          "arcly.handshake.style": style,
                                          "client.address": peer.rpartition(":")[0] or peer})
        span.end(end_time=end)

    def on_stream_reaped(self, key: StreamKey) -> None:
        self.reaped.add(1)

    def on_viewer_skipped(self, key: StreamKey, protocol: str, peer: str, dropped: int) -> None:
        attributes = {"network.protocol.name": protocol}
        self.skips.add(1, attributes)
        viewer = (key, protocol, peer)
        self.dropped.add(max(0, dropped - self._dropped_seen.get(viewer, 0)), attributes)
        self._dropped_seen[viewer] = dropped


class StreamMetrics:
    """Per-stream figures read from the kernel when the SDK's reader collects (a few times a
    minute; nothing per frame): bytes and frames in and out, GOP cache size."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        meter = metrics.get_meter("arcly")
        meter.create_observable_counter("arcly.stream.bytes_in", [self._bytes_in], unit="By",
                                        description="bytes received per live stream")
        meter.create_observable_counter("arcly.stream.frames_in", [self._frames_in],
                                        unit="{frame}", description="frames per live stream")
        meter.create_observable_counter("arcly.stream.bytes_out", [self._bytes_out], unit="By",
                                        description="bytes handed to subscribers per stream")
        meter.create_observable_counter("arcly.stream.frames_out", [self._frames_out],
                                        unit="{frame}",
                                        description="frames handed to subscribers per stream")
        meter.create_observable_gauge("arcly.gop_cache.size", [self._gop_bytes], unit="By",
                                      description="GOP cache bytes per live stream")

    def _per_stream(self, value: Callable[[Stream], float]) -> Iterable[Observation]:
        return [Observation(value(s), {"arcly.stream.key": str(s.key)})
                for s in self.engine.streams()]

    def _bytes_in(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._per_stream(lambda s: s.bytes_in)

    def _frames_in(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._per_stream(lambda s: s.frames_in)

    def _bytes_out(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._per_stream(lambda s: s.bytes_out)

    def _frames_out(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._per_stream(lambda s: s.frames_out)

    def _gop_bytes(self, _: CallbackOptions) -> Iterable[Observation]:
        return self._per_stream(lambda s: s.gop.bytes)


class TracedAuth:
    """Wraps an ``AuthProvider``: a short span per decision (allowed, refused, takeover)."""

    def __init__(self, inner: AuthProvider, *, node_id: str) -> None:
        self.inner = inner
        self.node_id = node_id
        self.tracer = trace.get_tracer("arcly.auth")

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)  # e.g. PerApp.webhooks, PerApp.open

    async def authorize(self, request: AuthRequest) -> AuthGrant | None:
        attributes = {"arcly.stream.key": str(request.key), "arcly.node.id": self.node_id,
                      "arcly.auth.action": request.action.value,
                      "network.protocol.name": request.protocol,
                      "arcly.auth.provider": type(self.inner).__name__}
        with self.tracer.start_as_current_span(f"auth {request.action.value}",
                                               context=context.Context(),
                                               attributes=attributes) as span:
            try:
                grant = await self.inner.authorize(request)
            except AuthError as exc:
                span.set_attribute("arcly.auth.allowed", False)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                raise
            span.set_attribute("arcly.auth.allowed", True)
            span.set_attribute("arcly.auth.takeover", bool(grant and grant.takeover))
            return grant
