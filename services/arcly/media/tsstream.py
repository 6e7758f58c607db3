"""A continuous MPEG-TS stream from frames (SRT readers), sans-I/O.

HLS cuts self-contained segments (``mpegts.TsMuxer`` per segment); a reader of a live transport
stream wants one unbroken stream instead: continuity counters that keep counting, PAT/PMT
before every keyframe (a receiver that tunes in or loses packets finds its footing there), and
a start on a keyframe. A change of codec configuration (a new publisher) starts new tables.
"""

from __future__ import annotations

from arcly.engine import Frame, FrameKind, ProtocolError

from . import codecs
from .mpegts import PACKET, TsMuxer

_AAC = 10  # FLV SoundFormat
MESSAGE = 7 * PACKET  # 1316 bytes: what one SRT live-mode message carries


class TsStreamWriter:
    """Frames in, transport-stream bytes out (see the module docstring)."""

    def __init__(self) -> None:
        self.video: codecs.VideoConfig | None = None
        self.audio: codecs.AacConfig | None = None
        self._muxer: TsMuxer | None = None
        self._keyed = False  # video started on a keyframe
        self.skipped = 0  # frames that could not be written (no configuration, bad data)

    def write(self, frame: Frame) -> bytes:
        """The TS bytes for ``frame`` (possibly none)."""
        try:
            if frame.config:
                self._configure(frame)
                return b""
            if frame.kind is FrameKind.VIDEO:
                return self._video(frame)
            if frame.kind is FrameKind.AUDIO:
                return self._audio(frame)
        except ProtocolError:
            self.skipped += 1
        return b""

    def _configure(self, frame: Frame) -> None:
        if frame.kind is FrameKind.VIDEO:
            config = codecs.parse_video_config(codecs.parse_video(frame.payload))
            if config is not None and config != self.video:
                self.video = config
                self._restart()
        elif frame.kind is FrameKind.AUDIO and frame.payload[:1] and \
                frame.payload[0] >> 4 == _AAC:
            aac = codecs.parse_aac_config(frame.payload[2:])
            if aac != self.audio:
                self.audio = aac
                self._restart()

    def _restart(self) -> None:
        self._muxer = None
        self._keyed = False

    def _open(self) -> TsMuxer:
        if self._muxer is None:
            self._muxer = TsMuxer(video=self.video.codec if self.video else None,
                                  audio=self.audio is not None)
        return self._muxer

    def _video(self, frame: Frame) -> bytes:
        config = self.video
        if config is None or not (frame.keyframe or self._keyed):
            self.skipped += 1
            return b""
        packet = codecs.parse_video(frame.payload)
        if not packet.is_frame:
            return b""
        muxer = self._open()
        head = muxer.tables() if frame.keyframe else b""
        self._keyed = True
        annexb = codecs.to_annexb(packet.data, config, keyframe=frame.keyframe)
        return head + muxer.video_frame(annexb, frame.timestamp, packet.cts, frame.keyframe)

    def _audio(self, frame: Frame) -> bytes:
        aac = self.audio
        body = frame.payload
        if aac is None or len(body) < 3 or body[0] >> 4 != _AAC or body[1] != 1:
            self.skipped += 1
            return b""
        if self.video is not None and not self._keyed:
            return b""  # audio joins the video's first keyframe
        muxer = self._open()
        head = b""
        if self.video is None and not self._keyed:  # audio only: tables once, up front
            head = muxer.tables()
            self._keyed = True
        raw = body[2:]
        return head + muxer.audio_frame(aac.adts_header(len(raw)) + raw, frame.timestamp)


def messages(data: bytes, size: int = MESSAGE) -> list[bytes]:
    """``data`` (whole TS packets) in messages of at most ``size`` bytes."""
    return [data[i:i + size] for i in range(0, len(data), size)]
