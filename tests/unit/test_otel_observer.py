"""The OpenTelemetry observer's bookkeeping, with in-memory readers (no network)."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from arcly.engine import StreamKey
from arcly.observe import otel


def test_dropped_frames_count_deltas_per_viewer() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    observer = otel.OtelObserver(node_id="n", role="single")
    meter = provider.get_meter("arcly")
    observer.dropped = meter.create_counter("arcly.viewer.dropped_frames")
    key = StreamKey("live", "x")
    observer.on_viewer_skipped(key, "rtmp", "a:1", 10)
    observer.on_viewer_skipped(key, "rtmp", "a:1", 25)  # cumulative per viewer
    observer.on_viewer_skipped(key, "rtmp", "b:2", 5)
    data = reader.get_metrics_data()
    points = [p for rm in data.resource_metrics for sm in rm.scope_metrics
              for m in sm.metrics if m.name == "arcly.viewer.dropped_frames"
              for p in m.data.data_points]
    assert sum(p.value for p in points) == 30
