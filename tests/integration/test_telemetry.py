"""OpenTelemetry: the span structure of a session across origin and edge, and real OTLP export."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from arcly.engine import ShutdownToken
from arcly.node.config import Address, NodeConfig
from arcly.node.server import run_node
from tests.support.flv_reader import HttpFlvReader
from tests.support.media import load_tags
from tests.support.processes import FfmpegPublisher, Node, RedisServer
from tests.support.rtmp_client import RtmpClient
from tests.support.wait import eventually, wait_until

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def in_memory_exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.skip("a tracer provider was installed earlier in this process")
    return exporter


def test_publish_relay_play_spans_form_one_story(redis_server: RedisServer,
                                                 source_flv: Path) -> None:
    exporter = in_memory_exporter()
    tags = load_tags(source_flv)[:150]
    ports = {name: free_port() for name in ("o_rtmp", "o_http", "o_grpc", "e_rtmp", "e_http")}

    def config(node_id: str, rtmp: int, http: int, grpc_port: int = 0) -> NodeConfig:
        return NodeConfig(rtmp_listen=Address("127.0.0.1", rtmp),
                          http_listen=Address("127.0.0.1", http),
                          grpc_listen=Address("127.0.0.1", grpc_port or free_port()),
                          redis_url=redis_server.url, node_id=node_id, relay_token="t",
                          hls=False, drain_timeout=1, srt_listen=None)

    async def scenario() -> None:
        tokens = [ShutdownToken(), ShutdownToken()]
        nodes = [asyncio.create_task(run_node("origin", config(
                     "o1", ports["o_rtmp"], ports["o_http"], ports["o_grpc"]),
                     tokens[0], telemetry=True)),
                 asyncio.create_task(run_node("edge", config(
                     "e1", ports["e_rtmp"], ports["e_http"]), tokens[1], telemetry=True))]
        async def listening() -> bool:
            return all([await accepts(ports[p]) for p in ("o_rtmp", "o_grpc", "e_http")])

        await eventually(listening, message="the nodes never listened")
        publisher = await RtmpClient.connect("127.0.0.1", ports["o_rtmp"], "live")
        assert (await publisher.publish("tel")).code == "NetStream.Publish.Start"
        for tag in tags:
            publisher.send_media(tag.tag_type, tag.timestamp, tag.body)
        await publisher.writer.drain()
        await eventually(lambda: "00-" in redis_server.command(
            "HGET", "arcly:stream:live/tel", "trace"),
            message="the session's trace context never reached its registry record")
        viewer = await HttpFlvReader.open(ports["e_http"], "/live/tel.flv")
        assert viewer.status == 200
        await viewer.read_header()
        for _ in range(10):
            await viewer.next_tag()
        await viewer.close()
        await publisher.close()
        await eventually(lambda: {"publish live/tel", "relay live/tel", "play live/tel"} <= {
            span.name for span in exporter.get_finished_spans()},
            message="the sessions' spans never ended")
        for token in tokens:
            token.cancel()
        await asyncio.wait_for(asyncio.gather(*nodes), 30)

    asyncio.run(scenario())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    publish = spans["publish live/tel"]
    relay = spans["relay live/tel"]
    play = spans["play live/tel"]
    started = spans["publish live/tel started"]
    assert publish.kind is SpanKind.SERVER and publish.parent is None
    assert publish.attributes["arcly.node.id"] == "o1"
    assert publish.attributes["network.protocol.name"] == "rtmp"
    assert publish.attributes["arcly.stream.key"] == "live/tel"
    assert started.parent.span_id == publish.context.span_id
    assert relay.kind is SpanKind.CONSUMER and relay.attributes["arcly.node.id"] == "e1"
    assert relay.context.trace_id == publish.context.trace_id, "the edge joins the trace"
    assert relay.parent.span_id == publish.context.span_id
    assert play.attributes["network.protocol.name"] == "http-flv"
    assert play.attributes["arcly.node.id"] == "e1"
    assert [link.context.span_id for link in play.links] == [relay.context.span_id]
    assert play.attributes["arcly.play.first_frame_seconds"] < 1.0
    assert any(event.name == "first frame" for event in play.events)
    # What happened before the session existed is part of it, not a trace of its own.
    handshake = spans["rtmp handshake"]
    assert handshake.attributes["arcly.handshake.style"] == "simple"
    assert handshake.attributes["arcly.node.id"] == "o1"
    assert handshake.parent.span_id == publish.context.span_id
    auth = {s.name: s for s in exporter.get_finished_spans() if s.name.startswith("auth ")}
    assert auth["auth publish"].parent.span_id == publish.context.span_id
    assert auth["auth publish"].attributes["arcly.auth.allowed"] is True
    assert auth["auth play"].parent.span_id == play.context.span_id, "the viewer's, on e1"
    assert auth["auth play"].attributes["arcly.node.id"] == "e1"
    claim = spans["ownership claim"]
    assert claim.parent.span_id == publish.context.span_id
    assert claim.attributes["arcly.node.id"] == "o1" and claim.attributes["arcly.fencing_token"]
    assert publish.start_time <= handshake.start_time, "the session starts with its parts"
    assert "arcly.end_reason" in publish.attributes
    roots = {s.name for s in exporter.get_finished_spans() if s.parent is None}
    assert roots == {"publish live/tel", "play live/tel"}


class Collector(trace_service_pb2_grpc.TraceServiceServicer,
                metrics_service_pb2_grpc.MetricsServiceServicer):
    """An in-process OTLP/gRPC receiver, enough of an OpenTelemetry collector for tests."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, Any]] = []
        self.metric_names: set[str] = set()

    def Export(self, request: Any, context: Any) -> Any:
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            for resource_spans in request.resource_spans:
                self.resources.append({kv.key: kv.value.string_value
                                       for kv in resource_spans.resource.attributes})
                for scope in resource_spans.scope_spans:
                    self.spans.extend(scope.spans)
            return trace_service_pb2.ExportTraceServiceResponse()
        for resource_metrics in request.resource_metrics:
            for scope in resource_metrics.scope_metrics:
                self.metric_names.update(metric.name for metric in scope.metrics)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def test_a_real_node_exports_spans_and_metrics_over_otlp_grpc(
        node_factory: Callable[..., Node], publish: Callable[[Node, str], FfmpegPublisher]
        ) -> None:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        node = node_factory(env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000", "OTEL_RESOURCE_ATTRIBUTES": "deployment=test"})
        publisher = publish(node, "live/otlp")

        async def play() -> None:
            viewer = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
            assert (await viewer.play("otlp")).code == "NetStream.Play.Start"
            for _ in range(20):
                await viewer.read_message()
            await viewer.close()

        asyncio.run(play())
        wait_until(lambda: {"arcly.publishers", "arcly.viewers", "arcly.stream.received",
                            "arcly.play.time_to_first_frame"} <= collector.metric_names,
                   message="no metrics exported")
        publisher.stop()
        node.wait_for_log(r"publish end stream=live/otlp ")
        assert node.terminate() == 0  # flushes the exporters
    finally:
        server.stop(grace=1)
    names = {span.name for span in collector.spans}
    assert {"publish live/otlp", "publish live/otlp started", "play live/otlp"} <= names
    assert any(r.get("service.name") == "arcly-single" and r.get("deployment") == "test"
               and r.get("arcly.node.role") == "single" for r in collector.resources)
    assert {"arcly.publishers", "arcly.viewers", "arcly.stream.received",
            "arcly.gop_cache.size", "arcly.play.time_to_first_frame", "arcly.stream.sent",
            "arcly.stream.frames_out", "arcly.limits.refused"} <= collector.metric_names



def test_a_backend_sees_sessions_as_roots_and_no_background_noise(
        node_factory: Callable[..., Node], publish: Callable[[Node, str], FfmpegPublisher],
        redis_server: RedisServer) -> None:
    """Origin + edge exporting to an OTLP receiver for ~10 s (registry sessions of 3 s: many
    renewals and heartbeats meanwhile) with a stream, viewers of every kind and a refused
    publish: the only root spans are sessions (publish, relay, play); the parts before a
    session (handshake, auth, claim) hang under it; heartbeats, session renewals and other
    registry commands make no span."""
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "200",
           "OTEL_METRIC_EXPORT_INTERVAL": "5000", "ARCLY_RELAY_TOKEN": "t"}
    try:
        origin = node_factory("--redis-url", redis_server.url, "--node-id", "o1",
                              "--drain-timeout", "1", "--session-ttl", "3", role="origin",
                              env=env)
        edge = node_factory("--redis-url", redis_server.url, "--node-id", "e1",
                            "--drain-timeout", "1", "--session-ttl", "3", role="edge", env=env)
        publish(origin, "live/quiet")
        started = time.monotonic()

        async def viewers() -> None:
            flv = await HttpFlvReader.open(edge.http, "/live/quiet.flv")
            await flv.read_header()
            rtmp = await RtmpClient.connect("127.0.0.1", edge.rtmp, "live")
            assert (await rtmp.play("quiet")).code == "NetStream.Play.Start"
            busy = await RtmpClient.connect("127.0.0.1", origin.rtmp, "live")
            assert (await busy.publish("quiet")).code == "NetStream.Publish.BadName"
            await busy.close()
            for _ in range(3):  # HLS: requests, not sessions
                await asyncio.to_thread(
                    lambda: urllib.request.urlopen(
                        f"http://127.0.0.1:{edge.http}/live/quiet/index.m3u8", timeout=15).read())
            while time.monotonic() - started < 10:  # background work runs meanwhile
                await flv.next_tag(10)
                await rtmp.read_message(10)
            await flv.close()
            await rtmp.close()

        asyncio.run(viewers())
        assert origin.terminate() == 0 and edge.terminate() == 0  # flushes the exporters
    finally:
        server.stop(grace=1)
    spans = collector.spans
    roots = [s for s in spans if not s.parent_span_id]
    print(f"\n{len(spans)} spans in ~10 s, {len(roots)} roots: "
          f"{sorted({s.name for s in roots})}")
    assert roots and all(s.name.startswith(("publish ", "relay ", "play ")) for s in roots), \
        sorted({s.name for s in roots})
    by_id = {s.span_id: s for s in spans}
    parts = [s for s in spans if s.name in ("rtmp handshake", "ownership claim")
             or s.name.startswith("auth ")]
    assert {s.name for s in parts} >= {"rtmp handshake", "auth publish", "auth play",
                                       "ownership claim"}
    assert all(s.parent_span_id in by_id for s in parts), "every part hangs under its session"
    refused = [s for s in roots if s.name == "publish live/quiet" and s.status.code == 2]
    assert refused, "the refused publish is a session of its own, marked as an error"
    assert not [s for s in spans if s.name.split()[0].isupper()], "no bare Redis command spans"
