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

The SDK (OTLP export, the Prometheus reader behind ``/metrics``) is installed by
``arcly.observe.sdk``; without it every call here is the OpenTelemetry API's no-op.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

from opentelemetry import context, metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from arcly.engine import (
    RELAYED,
    CloseReason,
    Engine,
    NullObserver,
    Stream,
    StreamKey,
)

from .tracing import Part, SessionParts

log = logging.getLogger("arcly.observe")

_INTERNAL = {"hls": "hls", "record": "record", "relay": "relay"}
VIEWER_PROTOCOLS = ("rtmp", "http-flv")  # always reported, zero included
# Seconds: start-up is measured in milliseconds on a healthy node, seconds on a sick one.
TTFF_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
        self.parts = SessionParts(self.tracer)  # what happened before each session started
        self._sessions: dict[StreamKey, trace.Span] = {}
        self._plays: dict[tuple[StreamKey, str, str], trace.Span] = {}
        meter = metrics.get_meter("arcly")
        self.publishers = meter.create_up_down_counter(
            "arcly.publishers", unit="{publisher}", description="live publish sessions")
        self.reaped = meter.create_counter(
            "arcly.streams.reaped", unit="{stream}", description="idle streams reaped")
        self.first_frame = meter.create_histogram(
            "arcly.play.time_to_first_frame", unit="s",
            description="from subscribing to the first frames handed to the viewer's socket",
            explicit_bucket_boundaries_advisory=TTFF_BUCKETS)
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

    def session_attributes(self, key: StreamKey, protocol: str, peer: str) -> dict[str, str]:
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
        attributes = self.session_attributes(key, protocol, peer)
        if protocol == RELAYED:  # an edge relaying from the stream's origin
            remote = self.remote_parent(key) if self.remote_parent else None
            parent = extract({"traceparent": remote}) if remote else context.Context()
            name = f"relay {key}"
            span = self.parts.start_session(name, parts=(), kind=SpanKind.CONSUMER,
                                            attributes=attributes, parent=parent)
        else:  # its handshake, auth decision and ownership claim become its first children
            name = f"publish {key}"
            span = self.parts.start_session(name, parts=self.parts.take(peer, key),
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

    def on_publish_refused(self, key: StreamKey, protocol: str, peer: str,
                           reason: str) -> None:
        self.parts.refused(f"publish {key}", parts=self.parts.take(peer, key),
                           attributes=self.session_attributes(key, protocol, peer),
                           reason=reason)

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
        session = self._sessions.get(key)
        links = [Link(session.get_span_context())] if session is not None else []
        # Each viewer is a trace of its own (a stream with 100k viewers is not one trace),
        # linked to the stream's publish (origin) or relay (edge) span.
        self._plays[(key, protocol, peer)] = self.parts.start_session(
            f"play {key}", parts=self.parts.take(peer), kind=SpanKind.SERVER, links=links,
            attributes=self.session_attributes(key, protocol, peer))

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
        self._dropped_seen.pop((key, protocol, peer), None)
        span = self._plays.pop((key, protocol, peer), None)
        if span is not None:
            span.set_attribute("arcly.end_reason", reason)
            if reason == CloseReason.SLOW_VIEWER:
                span.set_status(Status(StatusCode.ERROR, reason))
            span.end()

    def on_handshake(self, protocol: str, peer: str, style: str, seconds: float) -> None:
        end = time.time_ns()
        self.parts.add(peer, Part(f"{protocol} handshake", end - int(seconds * 1e9), end, {
            "arcly.node.id": self.node_id, "network.protocol.name": protocol,
            "arcly.handshake.style": style,
            "client.address": peer.rpartition(":")[0] or peer}))

    def on_stream_reaped(self, key: StreamKey) -> None:
        self.reaped.add(1)

    def on_viewer_skipped(self, key: StreamKey, protocol: str, peer: str, dropped: int) -> None:
        attributes = {"network.protocol.name": protocol}
        self.skips.add(1, attributes)
        viewer = (key, protocol, peer)
        self.dropped.add(max(0, dropped - self._dropped_seen.get(viewer, 0)), attributes)
        self._dropped_seen[viewer] = dropped


class StreamMetrics:
    """Figures read from the kernel when a metric reader collects (a Prometheus scrape, an OTLP
    export: a few times a minute; nothing per frame): bytes and frames in and out, viewers and
    GOP cache size per stream, and connections refused per limit (``refused``: the node's
    counts)."""

    def __init__(self, engine: Engine, *,
                 refused: Callable[[], Mapping[str, int]] | None = None,
                 hls_viewers: Callable[[], Mapping[StreamKey, int]] | None = None,
                 hls_sent: Callable[[], int] | None = None) -> None:
        self.engine = engine
        self.refused = refused
        self.hls_viewers = hls_viewers  # HLS has no sessions: an estimate from playlist polls
        self.hls_sent = hls_sent
        meter = metrics.get_meter("arcly")
        meter.create_observable_gauge(
            "arcly.viewers", [self._viewers_by_protocol], unit="{viewer}",
            description="live viewers by protocol (HLS: clients that polled a playlist lately)")
        meter.create_observable_counter("arcly.stream.received", [self._bytes_in], unit="By",
                                        description="bytes received per live stream")
        meter.create_observable_counter("arcly.stream.frames_in", [self._frames_in],
                                        unit="{frame}", description="frames per live stream")
        meter.create_observable_counter("arcly.stream.sent", [self._bytes_out], unit="By",
                                        description="bytes handed to subscribers per stream")
        meter.create_observable_counter("arcly.stream.frames_out", [self._frames_out],
                                        unit="{frame}",
                                        description="frames handed to subscribers per stream")
        meter.create_observable_gauge("arcly.gop_cache.size", [self._gop_bytes], unit="By",
                                      description="GOP cache bytes per live stream")
        meter.create_observable_gauge(
            "arcly.stream.viewers", [self._viewers], unit="{viewer}",
            description="viewers per live stream on this node (segmenters, recorders and "
                        "relays to edges are not viewers)")
        if hls_sent is not None:
            sent = hls_sent
            meter.create_observable_counter(
                "arcly.hls.sent", [lambda _: [Observation(sent())]], unit="By",
                description="HLS playlist and segment bytes served by this node")
        if refused is not None:
            meter.create_observable_counter(
                "arcly.limits.refused", [self._refused], unit="{refusal}",
                description="connections and sessions refused, by the limit that was hit")

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

    def _hls(self) -> Mapping[StreamKey, int]:
        return self.hls_viewers() if self.hls_viewers is not None else {}

    def _viewers(self, _: CallbackOptions) -> Iterable[Observation]:
        hls = self._hls()
        return self._per_stream(
            lambda s: sum(1 for sub in s.subscribers if sub.viewer) + hls.get(s.key, 0))

    def _viewers_by_protocol(self, _: CallbackOptions) -> Iterable[Observation]:
        counts = dict.fromkeys(VIEWER_PROTOCOLS, 0)
        for stream in self.engine.streams():
            for sub in stream.subscribers:
                if sub.viewer:
                    counts[sub.protocol] = counts.get(sub.protocol, 0) + 1
        if self.hls_viewers is not None:
            counts["hls"] = sum(self._hls().values())
        return [Observation(n, {"network.protocol.name": p}) for p, n in sorted(counts.items())]

    def _refused(self, _: CallbackOptions) -> Iterable[Observation]:
        assert self.refused is not None
        return [Observation(count, {"arcly.limit": limit})
                for limit, count in sorted(self.refused().items())]
