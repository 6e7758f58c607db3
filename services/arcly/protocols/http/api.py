"""The JSON management API under ``/api/v1``: documents of the kernel's streams and the node,
and kicking a stream (``DELETE /api/v1/streams/{app}/{stream}``).

With an API token every call needs ``Authorization: Bearer <token>``; without one, reading is
open and changes are accepted from loopback only. ``/api/v1/openapi.json`` (the contract,
checked against the server by schemathesis in the tests) is always open.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from arcly.engine import Engine, InvalidStreamKey, ProtocolError, Stream, StreamKey
from arcly.media import amf0, codecs
from arcly.protocols.listener import Admission, is_loopback

from .exchange import JSON, Exchange
from .router import Resolved, Router

log = logging.getLogger("arcly.http")

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
            for field in ("width", "height"):  # AMF0 numbers are doubles; pixels are not
                value = meta.get(field)
                if isinstance(value, float) and value.is_integer() and value > 0:
                    found[field] = int(value)
            if isinstance(meta.get("framerate"), float):
                found["framerate"] = meta["framerate"]
    except (ProtocolError, IndexError):
        pass
    return found

# API names of subscriber protocols (the kernel says "http-flv"; users say "flv").
_API_PROTOCOL = {"http-flv": "flv"}


def stream_summary(engine: Engine, stream: Stream, hls_players: int = 0) -> dict[str, Any]:
    """``viewers`` counts people, as the ``arcly_viewers`` metric and the node's load do: the
    subscriptions of players by protocol, and ``hls_players`` (clients that polled a playlist
    lately; HLS has no sessions). ``relay``: edges relaying the stream (not in ``total``).
    Segmenters, recorders and transcoders are subscribers, not viewers."""
    counts = Counter(_API_PROTOCOL.get(s.protocol, s.protocol)
                     for s in stream.subscribers if s.viewer)
    viewers: dict[str, int] = {"rtmp": 0, "flv": 0, "hls": 0}
    viewers.update(counts)
    viewers["hls"] += hls_players
    viewers["total"] = sum(viewers.values())
    viewers["relay"] = sum(1 for s in stream.subscribers if s.protocol == "relay")
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


def stream_detail(engine: Engine, stream: Stream, hls_players: int = 0) -> dict[str, Any]:
    detail = stream_summary(engine, stream, hls_players)
    describe = getattr(engine.upstream, "describe", None)
    if describe is not None:  # an edge: where the stream is relayed from
        detail["upstream"] = describe(stream.key)
    detail["subscribers"] = sorted(
        ({"protocol": _API_PROTOCOL.get(s.protocol, s.protocol), "peer": s.peer,
          "delivered_frames": s.delivered, "dropped_frames": s.dropped}
         for s in stream.subscribers), key=lambda s: (s["protocol"], s["peer"]))
    return detail


def streams_document(engine: Engine,
                     hls_players: Mapping[StreamKey, int] | None = None) -> dict[str, Any]:
    players = hls_players or {}
    return {"streams": [stream_summary(engine, s, players.get(s.key, 0))
                        for s in sorted(engine.streams(), key=lambda s: str(s.key))]}


def openapi_document() -> bytes:
    return Path(__file__).with_name("openapi.json").read_bytes()


def runtime() -> dict[str, Any]:
    """The process: asyncio tasks, and threads by kind (pools and per-stream transcoders);
    what a leak would show in."""
    kinds = Counter(re.sub(r"[-_ ]?\d+$", "", t.name).split(" ")[0].split("-")[0]
                    for t in threading.enumerate())
    return {"tasks": len(asyncio.all_tasks()), "threads": threading.active_count(),
            "thread_kinds": dict(sorted(kinds.items()))}


class ManagementApi:
    """``/api/v1/...``: mounted on the node's router as one prefix route."""

    METHODS = "GET, HEAD, DELETE"

    def __init__(self, engine: Engine, admission: Admission, *,
                 node: Callable[[], dict[str, Any]], token: str = "",
                 webrtc: Callable[[], dict[str, Any]] | None = None,
                 srt: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
                 hls_viewers: Callable[[], Mapping[StreamKey, int]] | None = None) -> None:
        self.engine = engine
        self.hls_viewers = hls_viewers  # HLS players per key, when the node serves HLS
        self.srt = srt  # the SRT connections' figures, when the node serves SRT
        self.webrtc = webrtc  # the WebRTC sessions' summary, when the node serves WebRTC
        self.admission = admission
        self.node = node  # the node's identity and figures (id, role, ...)
        self.token = token
        self.public = Router()
        self.public.add("GET", "/openapi.json", self.openapi)
        self.routes = Router()
        self.routes.add("GET", "/streams", self.streams)
        self.routes.add("GET", "/node", self.node_document)
        self.routes.add("GET", "/webrtc", self.webrtc_document)
        self.routes.add("GET", "/srt", self.srt_document)
        self.routes.add("GET", "/streams/{app}/{stream}", self.stream)
        self.routes.add("DELETE", "/streams/{app}/{stream}", self.kick)

    def allowed(self, exchange: Exchange) -> bool:
        if self.token:
            offered = exchange.request.headers.get("authorization", "")
            return hmac.compare_digest(offered.encode(), f"Bearer {self.token}".encode())
        return exchange.request.method in ("GET", "HEAD") or is_loopback(exchange.ip)

    async def handle(self, exchange: Exchange, params: dict[str, str]) -> None:
        method, path = exchange.request.method, params["path"]
        found = self.public.resolve(method, path)
        if isinstance(found, Resolved):
            await found.handler(exchange, found.params)
            return
        if not self.allowed(exchange):
            exchange.json(401, {"error": "unauthorized"},
                          {"WWW-Authenticate": 'Bearer realm="arcly"'})
            return
        found = self.routes.resolve(method, path)
        if isinstance(found, Resolved):
            await found.handler(exchange, found.params)
        elif method in ("GET", "HEAD"):
            exchange.json(404, {"error": "not found"})
        else:
            exchange.json(405, {"error": "method not allowed"}, {"Allow": self.METHODS})

    async def openapi(self, exchange: Exchange, params: dict[str, str]) -> None:
        exchange.respond(200, openapi_document(), JSON)

    def _hls_players(self) -> Mapping[StreamKey, int]:
        return self.hls_viewers() if self.hls_viewers is not None else {}

    async def streams(self, exchange: Exchange, params: dict[str, str]) -> None:
        exchange.json(200, streams_document(self.engine, self._hls_players()))

    async def node_document(self, exchange: Exchange, params: dict[str, str]) -> None:
        streams = self.engine.streams()
        document = {**self.node(), "draining": self.admission.draining,
                    "connections": self.admission.connections,
                    "limits_hit": dict(self.admission.refused),
                    "streams": len(streams),
                    "viewers": sum(1 for s in streams for sub in s.subscribers if sub.viewer)
                    + sum(self._hls_players().values()),
                    "runtime": runtime()}
        if self.webrtc is not None:
            summary = self.webrtc()
            document["webrtc"] = {"sessions": len(summary["sessions"]),
                                  "audio_transcoders": len(summary["audio_transcoders"])}
        exchange.json(200, document)

    async def srt_document(self, exchange: Exchange, params: dict[str, str]) -> None:
        if self.srt is None:
            exchange.json(404, {"error": "SRT is off on this node"})
        else:
            exchange.json(200, {"connections": await self.srt()})

    async def webrtc_document(self, exchange: Exchange, params: dict[str, str]) -> None:
        if self.webrtc is None:
            exchange.json(404, {"error": "WebRTC is off on this node"})
        else:
            exchange.json(200, self.webrtc())

    def _stream(self, params: dict[str, str]) -> Stream | None:
        try:
            return self.engine.stream(StreamKey(params["app"], params["stream"]))
        except InvalidStreamKey:
            return None

    async def stream(self, exchange: Exchange, params: dict[str, str]) -> None:
        stream = self._stream(params)
        if stream is None:
            exchange.json(404, {"error": "not found"})
        else:
            exchange.json(200, stream_detail(self.engine, stream,
                                             self._hls_players().get(stream.key, 0)))

    async def kick(self, exchange: Exchange, params: dict[str, str]) -> None:
        """End the publish: the publisher is disconnected, viewers get the end of the
        stream."""
        stream = self._stream(params)
        if stream is None or not await self.engine.end_publish(
                stream.key, f"kicked via API by {exchange.peer}"):
            exchange.json(404, {"error": "not found"})
            return
        log.info("stream kicked stream=%s by=%s", stream.key, exchange.peer)
        exchange.json(200, {"kicked": str(stream.key)})
