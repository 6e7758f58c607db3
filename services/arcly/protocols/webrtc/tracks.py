"""What WHEP viewers are sent: H.264 access units straight from the stream, Opus from the
stream's one transcoder.

Video is never re-encoded: each frame's AVCC NAL units become Annex-B once per frame (shared by
every viewer, in ``Frame.encodings``), with SPS/PPS before every keyframe since the SDP carries
none, and aiortc packetizes them (RFC 6184). A viewer starts on the GOP cache's keyframe; the
cached frames are sent at once with their timestamps squeezed together, so the browser shows the
live picture within a frame or two of the keyframe instead of replaying the GOP at its own pace
(which would leave it a GOP behind live for good).

Browsers do not play B-frames over WebRTC (frames reordered by composition time): a stream that
has them is refused (``has_reordering``).
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import struct
from collections.abc import Iterable
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from arcly.engine import Frame, FrameKind, ProtocolError, Subscription
from arcly.media import codecs

log = logging.getLogger("arcly.webrtc")

VIDEO_CLOCK = fractions.Fraction(1, 90000)
_BURST_STEP_MS = 1  # spacing of the cached GOP's frames when sent at once
_MAX_STEP_MS = 5000  # a larger timestamp jump (publisher clock reset) counts as one frame
_ENCODING = "webrtc-h264"


class BFramesError(ProtocolError):
    """The stream reorders frames (B-frames): WebRTC players cannot show it."""


def presentation_ms(frame: Frame) -> int | None:
    """A video frame's presentation time (decode time + composition offset), ``None`` for a
    non-picture frame."""
    if frame.kind is not FrameKind.VIDEO or frame.config:
        return None
    try:
        packet = codecs.parse_video(frame.payload)
    except ProtocolError:
        return None
    return frame.timestamp + packet.cts if packet.is_frame else None


def video_codec(frame: Frame) -> str | None:
    """The codec of a video frame (``codecs.H264``, ``codecs.HEVC``, None: other/unknown)."""
    try:
        return codecs.parse_video(frame.payload).codec
    except ProtocolError:
        return None


def has_reordering(frames: Iterable[Frame]) -> bool:
    """Whether presentation times ever go backwards (B-frames) among ``frames``."""
    last: int | None = None
    for frame in frames:
        pts = presentation_ms(frame)
        if pts is None:
            continue
        if last is not None and pts < last:
            return True
        last = pts
    return False


class VideoTrack(MediaStreamTrack):
    """One viewer's video: reads its subscription, yields ``av.Packet``s of Annex-B H.264."""

    kind = "video"

    def __init__(self, sub: Subscription) -> None:
        super().__init__()
        self.sub = sub
        self.end_reason = ""
        # (frame, part of the start burst): the first batch is the configuration + cached GOP
        self._pending: collections.deque[tuple[Frame, bool]] = collections.deque()
        self._started = False
        self._config: codecs.VideoConfig | None = None
        self._keyed = False  # a keyframe went out: inter frames may follow
        self._last_src: int | None = None
        self._out_ms = 0
        self._last_pts: int | None = None
        self.frames_sent = 0
        self.first_frame_at: float | None = None  # loop time of the first picture handed out

    async def recv(self) -> av.Packet[Any]:
        while True:
            frame, burst = await self._next()
            if frame.config:
                self._configure(frame)
                continue
            packet = self._packet(frame, burst)
            if packet is not None:
                return packet

    async def _next(self) -> tuple[Frame, bool]:
        while not self._pending:
            if self.readyState != "live":
                raise MediaStreamError
            batch = await self.sub.next_batch()
            if not batch:
                self.end_reason = self.sub.close_reason or "ended"
                self.stop()
                raise MediaStreamError
            burst = not self._started
            self._started = True
            self._pending.extend((f, burst) for f in batch if f.kind is FrameKind.VIDEO)
        return self._pending.popleft()

    def _configure(self, frame: Frame) -> None:
        try:
            packet = codecs.parse_video(frame.payload)
            config = codecs.parse_video_config(packet)
        except ProtocolError as exc:
            log.info("webrtc bad video configuration stream=%s error=%s", self.sub.key, exc)
            return
        if config is None or config.codec != codecs.H264:
            self.end_reason = "video codec is not H.264"
            self.stop()
            return
        self._config = config

    def _packet(self, frame: Frame, burst: bool) -> av.Packet[Any] | None:
        config = self._config
        if config is None or (not frame.keyframe and not self._keyed):
            return None  # a decoder starts at a keyframe
        # Built once per frame for every viewer: the composition offset (4 bytes, for the
        # B-frame check) then the Annex-B access unit; b"" for a frame that carries no picture.
        encoded = frame.encodings.get(_ENCODING)
        if encoded is None:
            try:
                packet = codecs.parse_video(frame.payload)
                encoded = (struct.pack(">i", packet.cts) + codecs.to_annexb(
                    packet.data, config, keyframe=frame.keyframe, delimiter=False)
                    if packet.is_frame else b"")
            except ProtocolError as exc:
                log.info("webrtc bad video frame stream=%s error=%s", self.sub.key, exc)
                encoded = b""
            frame.encodings[_ENCODING] = encoded
        if not encoded:
            return None
        (cts,) = struct.unpack_from(">i", encoded)
        pts = frame.timestamp + cts
        if self._last_pts is not None and pts < self._last_pts:
            self.end_reason = "B-frames appeared"
            self.stop()
            return None
        self._last_pts = pts
        self._keyed = True
        self._advance(frame.timestamp, burst)
        # (PyAV takes any buffer; its stubs say bytes: a slice would copy once more)
        out = av.Packet(memoryview(encoded)[4:])  # type: ignore[arg-type]
        out.pts = out.dts = self._out_ms * 90
        out.time_base = VIDEO_CLOCK
        self.frames_sent += 1
        if self.first_frame_at is None:
            self.first_frame_at = asyncio.get_running_loop().time()
        return out

    def _advance(self, timestamp: int, burst: bool) -> None:
        """The output clock: the start burst squeezed, then the stream's own spacing."""
        last = self._last_src
        self._last_src = timestamp
        if last is None:
            return
        if burst:
            self._out_ms += _BURST_STEP_MS
        else:
            step = timestamp - last
            self._out_ms += step if 0 <= step <= _MAX_STEP_MS else 33


class AudioTrack(MediaStreamTrack):
    """One viewer's audio: Opus packets from the stream's shared transcoder (``AudioFeed``)."""

    kind = "audio"

    def __init__(self, capacity: int = 100) -> None:
        super().__init__()
        self._queue: asyncio.Queue[av.Packet[Any] | None] = asyncio.Queue(capacity)

    def offer(self, packet: av.Packet[Any] | None) -> None:
        """Queue a packet (``None``: the stream ended); a viewer too slow to take them loses
        the oldest."""
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(packet)

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        return packet
