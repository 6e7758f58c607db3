"""The JSON management API's views of the kernel (read-only for now)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from arcly.engine import Engine, ProtocolError, Stream
from arcly.media import amf0, codecs

_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025,
                 8000, 7350)


def stream_codecs(stream: Stream) -> dict[str, Any]:
    """What the publisher sends, from the GOP cache's configuration frames and metadata."""
    found: dict[str, Any] = {}
    gop = stream.gop
    try:
        if gop.video_config is not None:
            found["video"] = codecs.parse_video(gop.video_config.payload).codec or "other"
        if gop.audio_config is not None and gop.audio_config.payload[0] >> 4 == 10:
            aac = codecs.parse_aac_config(gop.audio_config.payload[2:])
            found["audio"] = "aac"
            found["sample_rate"] = _SAMPLE_RATES[aac.frequency_index]
            found["channels"] = aac.channels
        if gop.metadata is not None:
            values = amf0.decode(gop.metadata.payload)
            meta = values[1] if len(values) > 1 and isinstance(values[1], dict) else {}
            for field in ("width", "height", "framerate"):
                if isinstance(meta.get(field), float):
                    found[field] = meta[field]
    except (ProtocolError, IndexError):
        pass
    return found

# API names of subscriber protocols (the kernel says "http-flv"; users say "flv").
_API_PROTOCOL = {"http-flv": "flv"}


def stream_summary(engine: Engine, stream: Stream) -> dict[str, Any]:
    counts = Counter(_API_PROTOCOL.get(s.protocol, s.protocol) for s in stream.subscribers)
    viewers: dict[str, int] = {"rtmp": 0, "flv": 0, "hls": 0, "relay": 0}
    viewers.update(counts)
    viewers["total"] = sum(counts.values())
    uptime = max(engine.clock() - stream.started_at, 1e-3)
    return {
        "key": str(stream.key),
        "publisher": {"protocol": stream.protocol, "peer": stream.peer},
        "session": stream.token,
        "viewers": viewers,
        "codecs": stream_codecs(stream),
        "bitrate_kbps": round(stream.bytes_in * 8 / uptime / 1000, 1),
        "uptime_seconds": round(uptime, 3),
        "frames_in": stream.frames_in,
        "bytes_in": stream.bytes_in,
        "frames_out": stream.frames_out,
        "bytes_out": stream.bytes_out,
        "gop_cache_bytes": stream.gop.bytes,
    }


def stream_detail(engine: Engine, stream: Stream) -> dict[str, Any]:
    detail = stream_summary(engine, stream)
    describe = getattr(engine.upstream, "describe", None)
    if describe is not None:  # an edge: where the stream is relayed from
        detail["upstream"] = describe(stream.key)
    detail["subscribers"] = sorted(
        ({"protocol": _API_PROTOCOL.get(s.protocol, s.protocol), "peer": s.peer,
          "delivered_frames": s.delivered, "dropped_frames": s.dropped}
         for s in stream.subscribers), key=lambda s: (s["protocol"], s["peer"]))
    return detail


def streams_document(engine: Engine) -> dict[str, Any]:
    return {"streams": [stream_summary(engine, s)
                        for s in sorted(engine.streams(), key=lambda s: str(s.key))]}
