"""Observer cost per frame: the same fan-out with telemetry off and on.

An in-process engine publishes FRAMES frames to VIEWERS subscribers that drain every batch;
the run is repeated with the NullObserver, the logging observer, and the OpenTelemetry observer
(SDK installed, spans and metrics kept in memory). Observers are called per session, never per
frame, so the ratio should stay ~1.0.

    .venv/bin/python bench/observer.py [--frames 20000] [--viewers 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "services"))

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from arcly.engine import Engine, EngineConfig, Frame, FrameKind, NullObserver, Observer, StreamKey
from arcly.observe import LoggingObserver
from arcly.observe.otel import OtelObserver, StreamMetrics


async def run(observer_kind: str, frames: int, viewers: int) -> float:
    observer: Observer = NullObserver()
    if observer_kind == "logging":
        observer = LoggingObserver()
    elif observer_kind == "otel":
        observer = OtelObserver(node_id="bench", role="single")
    engine = Engine(EngineConfig(idle_timeout=None), observer=observer)
    if observer_kind == "otel":
        StreamMetrics(engine)
    key = StreamKey("bench", "s")
    handle = await engine.start_publish(key, protocol="rtmp", peer="127.0.0.1:1")
    subs = [await engine.subscribe(key, protocol="rtmp", peer=f"127.0.0.1:{i}")
            for i in range(viewers)]
    payload = bytes(4000)
    started = time.process_time()
    for n in range(frames):
        handle.publish_frame(Frame(FrameKind.VIDEO, n * 33, payload, keyframe=n % 60 == 0))
        if n % 4 == 3:
            for sub in subs:
                await sub.next_batch()
    elapsed = time.process_time() - started
    for sub in subs:
        sub.close("bench over")
    await engine.end_publish(key)
    return elapsed / frames * 1e6  # CPU microseconds per frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    results: dict[str, float] = {}
    for kind in ("null", "logging", "otel"):
        samples = [asyncio.run(run(kind, args.frames, args.viewers)) for _ in range(args.rounds)]
        results[kind] = statistics.median(samples)
    for kind, value in results.items():
        print(f"{kind:8s} {value:8.2f} CPU-us per frame ({args.viewers} viewers)  "
              f"ratio vs off: {value / results['null']:.3f}")
    out = REPO / "bench" / "results" / "observer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "observer", **vars(args),
                               "cpu_us_per_frame": results}, indent=2))


if __name__ == "__main__":
    main()
