"""Cutting a stream into MPEG-TS segments, sans-I/O.

Boundaries and sequence numbers come from the frames' ``SegmentMark``s (decided once by the
publishing node, see ``arcly.engine.timeline``); the TS bytes of a segment depend only on its
frames and the codec configuration. A segmenter that starts late therefore produces the same
URIs and bytes as one that ran from the start, for every segment both hold. A segment whose
start the segmenter did not see is skipped, never served partially.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from arcly.engine import Frame, FrameKind, ProtocolError, SegmentMark
from arcly.media import codecs
from arcly.media.mpegts import TsMuxer

log = logging.getLogger("arcly.hls")


@dataclass(frozen=True, slots=True)
class Part:
    """A part of a segment (Low-Latency HLS, fMP4 only): one ``moof`` + ``mdat``."""

    sequence: int
    index: int
    session: int
    start: int
    duration: float
    independent: bool
    data: bytes = field(repr=False)

    @property
    def uri(self) -> str:
        return f"{self.session}-{self.sequence}.{self.index}.m4s"


@dataclass(frozen=True, slots=True)
class Segment:
    """A media segment: MPEG-TS (``ext`` "ts"), or fMP4 (``m4s``: its ``parts`` back to back,
    decoded with the init segment named ``init``)."""

    sequence: int
    discontinuity: int
    session: int
    start: int
    duration: float
    data: bytes = field(repr=False)
    ext: str = "ts"
    init: str = ""
    parts: tuple[Part, ...] = ()

    @property
    def uri(self) -> str:
        return f"{self.session}-{self.sequence}.{self.ext}"


class ConfiguredIn:
    """Which segments a configuration frame was stamped in. A late joiner gets the latest
    configuration before the cached GOP (the kernel's snapshot): if that configuration came
    during the segment it is about to start, the node that saw the segment from its start cut
    it with the earlier configuration — starting it here would give other bytes under the same
    URIs. Such a segment is skipped (the timeline starts the next one at the next keyframe)."""

    __slots__ = ("_marks",)

    def __init__(self) -> None:
        self._marks: set[tuple[int, int]] = set()

    def note(self, mark: SegmentMark | None) -> None:
        if mark is not None:
            if len(self._marks) > 16:
                self._marks.clear()
            self._marks.add((mark.session, mark.sequence))

    def during(self, mark: SegmentMark) -> bool:
        return (mark.session, mark.sequence) in self._marks


class _Open:
    __slots__ = ("last_delta", "last_ts", "mark", "muxer", "parts")

    def __init__(self, mark: SegmentMark, muxer: TsMuxer) -> None:
        self.mark = mark
        self.muxer = muxer
        self.parts: list[bytes] = [muxer.tables()]
        self.last_ts = mark.start
        self.last_delta = 0


class Segmenter:
    """Feed frames in order; collect completed segments from ``feed`` and ``finish``."""

    def __init__(self) -> None:
        self.video_config: codecs.VideoConfig | None = None
        self.audio_config: codecs.AacConfig | None = None
        self._open: _Open | None = None
        self._skipping: SegmentMark | None = None  # a segment joined mid-way
        self._configured_in = ConfiguredIn()
        self.errors = 0

    def abandon(self) -> None:
        """Frames were lost (this subscriber fell behind): drop the segment in progress and
        wait for the next one."""
        self._open = None

    def feed(self, frame: Frame) -> Segment | None:
        mark = frame.mark
        if frame.config:
            self._configure(frame)
            self._configured_in.note(mark)
            return None
        if mark is None or frame.kind is FrameKind.DATA:
            return None
        done: Segment | None = None
        current = self._open
        if current is None or mark is not current.mark:
            if current is not None and mark.sequence == current.mark.sequence \
                    and mark.session == current.mark.session:
                pass  # same segment, different object (a part, or relayed): keep going
            else:
                if current is not None and mark.session == current.mark.session:
                    done = self._close(current, next_start=mark.start
                                       if mark.discontinuity == current.mark.discontinuity
                                       else None)
                # (a new session mid-subscription — an edge following its stream to another
                # origin — drops the segment: how the old session ended is not known here)
                self._open = None
                if not self._starts(frame, mark) or self._configured_in.during(mark):
                    self._skipping = mark
                    return done
                self._skipping = None
                self._open = _Open(mark, TsMuxer(
                    video=self.video_config.codec if self.video_config else None,
                    audio=self.audio_config is not None))
        self._write(frame)
        return done

    def _starts(self, frame: Frame, mark: SegmentMark) -> bool:
        return (frame.kind is FrameKind.VIDEO and frame.keyframe and frame.timestamp == mark.start
                and self.video_config is not None)

    def finish(self) -> Segment | None:
        """The stream ended: close the segment in progress."""
        current, self._open = self._open, None
        return self._close(current, next_start=None) if current is not None else None

    def _configure(self, frame: Frame) -> None:
        try:
            if frame.kind is FrameKind.VIDEO:
                packet = codecs.parse_video(frame.payload)
                config = codecs.parse_video_config(packet)
                if config is not None:
                    self.video_config = config
            elif frame.kind is FrameKind.AUDIO and frame.payload[0] >> 4 == 10:
                self.audio_config = codecs.parse_aac_config(frame.payload[2:])
        except ProtocolError as exc:
            self.errors += 1
            log.warning("hls: unusable codec configuration error=%s", exc)

    def _write(self, frame: Frame) -> None:
        current = self._open
        assert current is not None
        try:
            if frame.kind is FrameKind.VIDEO:
                config = self.video_config
                if config is None:
                    return
                packet = codecs.parse_video(frame.payload)
                if not packet.is_frame:
                    return
                annexb = codecs.to_annexb(packet.data, config, keyframe=frame.keyframe)
                current.parts.append(current.muxer.video_frame(annexb, frame.timestamp,
                                                               packet.cts, frame.keyframe))
                if frame.timestamp > current.last_ts:
                    current.last_delta = frame.timestamp - current.last_ts
                current.last_ts = max(current.last_ts, frame.timestamp)
            elif frame.kind is FrameKind.AUDIO:
                aac = self.audio_config
                body = frame.payload
                if aac is None or len(body) < 3 or body[0] >> 4 != 10 or body[1] != 1:
                    return
                raw = body[2:]
                current.parts.append(current.muxer.audio_frame(aac.adts_header(len(raw)) + raw,
                                                               frame.timestamp))
        except ProtocolError as exc:
            self.errors += 1
            log.warning("hls: frame skipped ts=%d error=%s", frame.timestamp, exc)

    @staticmethod
    def _close(current: _Open, *, next_start: int | None) -> Segment:
        mark = current.mark
        if next_start is not None and next_start > mark.start:
            duration_ms = next_start - mark.start
        else:
            duration_ms = current.last_ts - mark.start + current.last_delta
        return Segment(mark.sequence, mark.discontinuity, mark.session, mark.start,
                       max(duration_ms, 1) / 1000, b"".join(current.parts))
