"""One Opus transcoder per stream, shared by every WebRTC viewer of it.

The feed subscribes to the stream once (not as a viewer), hands its AAC frames to a worker
thread (``StreamTranscoder``: AAC → PCM → 48 kHz stereo → Opus) and offers every Opus packet to
each viewer's ``AudioTrack``. It starts at the live edge: the cached GOP's audio would only
queue up in the browser's jitter buffer as delay. The last viewer to leave closes it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import av

from arcly.engine import FrameKind, StreamKey, Subscription
from arcly.media import flv

from .audio import AacToOpus, StreamTranscoder
from .tracks import AudioTrack

log = logging.getLogger("arcly.webrtc")

_AAC = 10  # FLV SoundFormat


class FlvAacToOpus:
    """FLV audio tag bodies → Opus packets; runs in the transcoder's thread. A new
    AudioSpecificConfig (the publisher changed its audio) starts a new decoder."""

    def __init__(self) -> None:
        self._asc = b""
        self._codec: AacToOpus | None = None
        self.unsupported = 0  # frames in a format other than AAC

    def __call__(self, body: bytes, timestamp: int) -> list[av.Packet[Any]]:
        if len(body) < 2 or body[0] >> 4 != _AAC:
            self.unsupported += 1
            return []
        if flv.is_audio_config(body):
            asc = bytes(body[2:])
            if asc != self._asc:
                self._asc = asc
                try:
                    self._codec = AacToOpus(asc)
                except (ValueError, av.FFmpegError) as exc:
                    log.info("webrtc unusable AAC configuration error=%s", exc)
                    self._codec = None
            return []
        if self._codec is None:
            return []
        return self._codec.transcode(body[2:], timestamp)


class AudioFeed:
    """The Opus side of one stream (see the module docstring)."""

    def __init__(self, key: StreamKey, sub: Subscription) -> None:
        self.key = key
        self.sub = sub
        self.tracks: set[AudioTrack] = set()
        self.converter = FlvAacToOpus()
        self.transcoder: StreamTranscoder[av.Packet[Any]] = StreamTranscoder(
            self.converter, self._deliver, name=f"opus-{key}")
        self._task = asyncio.create_task(self._pump(), name=f"webrtc-audio {key}")

    async def _pump(self) -> None:
        first = True
        try:
            while batch := await self.sub.next_batch():
                for frame in batch:
                    if frame.kind is FrameKind.AUDIO and (frame.config or not first):
                        self.transcoder.submit(frame.payload, frame.timestamp)
                first = False
        finally:
            for track in list(self.tracks):
                track.offer(None)

    def _deliver(self, packets: list[av.Packet[Any]]) -> None:
        for track in self.tracks:
            for packet in packets:
                track.offer(packet)

    def add(self, track: AudioTrack) -> None:
        self.tracks.add(track)

    def discard(self, track: AudioTrack) -> bool:
        """Drop a viewer's track; True when none is left (the caller closes the feed)."""
        self.tracks.discard(track)
        return not self.tracks

    @property
    def ended(self) -> bool:
        return self._task.done()

    async def close(self) -> None:
        self.sub.close("no webrtc viewers")
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await asyncio.to_thread(self.transcoder.close)

    def stats(self) -> dict[str, int | float]:
        t = self.transcoder
        return {"viewers": len(self.tracks), "frames_in": t.frames_in,
                "packets_out": t.packets_out, "dropped": t.dropped, "errors": t.errors,
                "cpu_seconds": round(t.cpu_seconds, 3)}

