"""The JSON management API's views of the kernel (read-only for now)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from arcly.engine import Engine, Stream

# API names of subscriber protocols (the kernel says "http-flv"; users say "flv").
_API_PROTOCOL = {"http-flv": "flv"}


def stream_summary(engine: Engine, stream: Stream) -> dict[str, Any]:
    counts = Counter(_API_PROTOCOL.get(s.protocol, s.protocol) for s in stream.subscribers)
    viewers: dict[str, int] = {"rtmp": 0, "flv": 0, "hls": 0, "relay": 0}
    viewers.update(counts)
    viewers["total"] = sum(counts.values())
    return {
        "key": str(stream.key),
        "publisher": {"protocol": stream.protocol, "peer": stream.peer},
        "session": stream.token,
        "viewers": viewers,
        "uptime_seconds": round(engine.clock() - stream.started_at, 3),
        "frames_in": stream.frames_in,
        "bytes_in": stream.bytes_in,
        "gop_cache_bytes": stream.gop.bytes,
    }


def stream_detail(engine: Engine, stream: Stream) -> dict[str, Any]:
    detail = stream_summary(engine, stream)
    detail["subscribers"] = sorted(
        ({"protocol": _API_PROTOCOL.get(s.protocol, s.protocol), "peer": s.peer,
          "delivered_frames": s.delivered, "dropped_frames": s.dropped}
         for s in stream.subscribers), key=lambda s: (s["protocol"], s["peer"]))
    return detail


def streams_document(engine: Engine) -> dict[str, Any]:
    return {"streams": [stream_summary(engine, s)
                        for s in sorted(engine.streams(), key=lambda s: str(s.key))]}
