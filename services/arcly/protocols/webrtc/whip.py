"""A WHIP publisher: H.264 and Opus in, a normal stream out.

Video passes through: each access unit (Annex-B off the wire) becomes an AVC frame in FLV form,
its SPS/PPS an AVC sequence header, so RTMP, HTTP-FLV, HLS, recording and the relay take it as
they take an RTMP publish. Browsers send a keyframe only when asked: the session asks (RTCP PLI)
every ``keyframe_interval`` seconds, which gives the GOP cache and HLS their GOPs. Opus becomes
AAC once, in a worker thread. Timestamps: each track's RTP clock, anchored on the arrival time of
its first frame, so audio and video line up as they arrived.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from arcly.engine import Frame, FrameKind, ProtocolError, PublishHandle, StreamKey
from arcly.media import codecs, flv

from .audio import OpusToAac, StreamTranscoder
from .passthrough import EncodedFrame, pass_through, request_keyframe
from .session import Session, prefer

log = logging.getLogger("arcly.webrtc")

_NAL_IDR, _NAL_SPS, _NAL_PPS, _NAL_AUD = 5, 7, 8, 9
_AUDIO_HELD_MS = 80
_VIDEO_HELD_MS = 33


class H264ToFlv:
    """Annex-B access units → FLV video tag bodies (sans-I/O)."""

    def __init__(self) -> None:
        self.sps = b""
        self.pps = b""
        self._sent_config = b""
        self.keyed = False

    def convert(self, data: bytes) -> list[tuple[bytes, bool, bool]]:
        """(body, keyframe, config) for one access unit: a sequence header first when the
        parameter sets are new. Nothing until the first keyframe with SPS and PPS."""
        units = []
        keyframe = False
        for unit in codecs.split_annexb(data):
            nal_type = unit[0] & 0x1F
            if nal_type == _NAL_SPS:
                self.sps = unit
            elif nal_type == _NAL_PPS:
                self.pps = unit
            elif nal_type != _NAL_AUD:
                keyframe |= nal_type == _NAL_IDR
                units.append(unit)
        out: list[tuple[bytes, bool, bool]] = []
        if self.sps and self.pps:
            record = codecs.avc_config_record(self.sps, self.pps)
            if record != self._sent_config:
                self._sent_config = record
                out.append((b"\x17\x00\x00\x00\x00" + record, False, True))
        if not units or not self._sent_config or not (keyframe or self.keyed):
            return out
        self.keyed = True
        head = b"\x17\x01\x00\x00\x00" if keyframe else b"\x27\x01\x00\x00\x00"
        out.append((head + codecs.length_prefixed(units), keyframe, False))
        return out


class WhipSession(Session):
    """Publishes what a browser (or OBS) sends into ``handle``'s stream."""

    kind = "whip"

    def __init__(self, key: StreamKey, peer: str, pc: RTCPeerConnection,
                 handle: PublishHandle, *, kinds: set[str], end_publish: Callable[[str], Any],
                 connect_timeout: float, keyframe_interval: float,
                 on_closed: Callable[[Session], None]) -> None:
        super().__init__(key, peer, pc, connect_timeout=connect_timeout, on_closed=on_closed)
        self.handle = handle
        self._end_publish = end_publish
        self._keyframe_interval = keyframe_interval
        # Only the kinds the offer has: a transceiver of ours without an m-line fails the answer.
        self.video = pc.addTransceiver("video", direction="recvonly") if "video" in kinds \
            else None
        if self.video is not None:
            prefer(self.video, "video/H264")
        self.audio = pc.addTransceiver("audio", direction="recvonly") if "audio" in kinds \
            else None
        if self.audio is not None:
            prefer(self.audio, "audio/opus")
        self.h264 = H264ToFlv()
        self.aac: StreamTranscoder[tuple[bytes, int]] | None = None
        self._opus: OpusToAac | None = None
        self._anchor_ms: dict[str, float] = {}
        self._last_video_ms = 0
        self._last_audio_ms = -1
        self.late_fragments = 0
        self.frames_in = 0
        self.spawn(self._watch_publish(), "publish watch")

    def accept_media(self) -> None:
        """After the offer is applied: take the encoded frames of both receivers."""
        for transceiver in (self.video, self.audio):
            if transceiver is not None and transceiver.receiver.track is not None:
                pass_through(transceiver.receiver)

    def on_connected(self) -> None:
        if self.video is not None and self.video.receiver.track is not None:
            self.spawn(self._pump(self.video.receiver.track, self._on_video), "video")
            self.spawn(self._ask_keyframes(self.video.receiver), "keyframes")
        if self.audio is not None and self.audio.receiver.track is not None:
            self._opus = OpusToAac()
            # The AAC configuration goes out before any video: HLS and recordings that open
            # on the first keyframe then have both tracks from their first segment.
            config = b"\xaf\x00" + self._opus.audio_specific_config
            self.handle.publish_frame(flv.make_frame(FrameKind.AUDIO, 0, config))
            self.aac = StreamTranscoder(self._opus.transcode, self._on_aac,
                                        name=f"aac-{self.key}")
            self.spawn(self._pump(self.audio.receiver.track, self._on_opus), "audio")

    async def _pump(self, track: MediaStreamTrack,
                    take: Callable[[EncodedFrame], None]) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                self.end("publisher left")
                return
            if isinstance(frame, EncodedFrame):
                take(frame)

    def _timestamp(self, kind: str, frame: EncodedFrame) -> int:
        anchor = self._anchor_ms.get(kind)
        if anchor is None:
            # aiortc's jitter buffers hand a frame over late: audio after 4 more packets
            # (80 ms of 20 ms packets), video when the next frame starts (~1 frame).
            held = _AUDIO_HELD_MS if kind == "audio" else _VIDEO_HELD_MS
            anchor = (self.loop.time() - self.started_at) * 1000 - held
            anchor = self._anchor_ms[kind] = max(0.0, anchor)
        return int(anchor + frame.timestamp * 1000 / frame.clock_rate)

    def _on_video(self, frame: EncodedFrame) -> None:
        timestamp = self._timestamp("video", frame)
        if timestamp == self._last_video_ms and self.frames_in:
            # A second piece of an access unit already handed over (aiortc's jitter buffer
            # emits packets that arrive after their frame as a frame of their own): drop it,
            # a frame with the same time would make downstream decode times repeat.
            self.late_fragments += 1
            return
        if timestamp < self._last_video_ms:
            # RTP carries presentation times: going back means B-frames, which FLV, HLS and
            # WebRTC viewers downstream cannot take without decode times we do not have.
            self.end("B-frames over WHIP are not supported (send without B-frames)")
            return
        self._last_video_ms = timestamp
        try:
            converted = self.h264.convert(frame.data)
        except ProtocolError as exc:
            log.info("webrtc whip bad access unit stream=%s error=%s", self.key, exc)
            return
        for body, keyframe, config in converted:
            self.frames_in += 1
            if not self.handle.publish_frame(Frame(FrameKind.VIDEO, timestamp, body,
                                                   keyframe=keyframe, config=config)):
                self.end(self.handle.end_reason or "publish ended")

    def _on_opus(self, frame: EncodedFrame) -> None:
        if self.aac is not None:
            self.aac.submit(frame.data, self._timestamp("audio", frame))

    def _on_aac(self, frames: list[tuple[bytes, int]]) -> None:
        if self.closed:
            return
        for raw, timestamp in frames:
            # The converter re-anchors on input gaps; downstream decode times must not repeat.
            stamp = max(timestamp, self._last_audio_ms + 1)
            self._last_audio_ms = stamp
            self.handle.publish_frame(Frame(FrameKind.AUDIO, stamp, b"\xaf\x01" + raw))

    async def _ask_keyframes(self, receiver: RTCRtpReceiver) -> None:
        while True:
            await asyncio.sleep(0.2 if not self.h264.keyed else self._keyframe_interval)
            await request_keyframe(receiver)

    async def _watch_publish(self) -> None:
        await self.handle.ended.wait()
        self.end(self.handle.end_reason or "publish ended")

    async def release(self) -> None:
        if self.aac is not None:
            await asyncio.to_thread(self.aac.close)
        await self._end_publish(self.close_reason)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["frames_in"] = self.frames_in
        out["late_fragments"] = self.late_fragments
        return out
