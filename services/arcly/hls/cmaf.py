"""Cutting a stream into fMP4 (CMAF) parts and segments for (Low-Latency) HLS, sans-I/O.

Parts and segments follow the frames' ``SegmentMark``s, decided once by the publishing node
(``arcly.engine.timeline``): a part is one ``moof`` + ``mdat`` of the frames marked with it, a
segment is its parts back to back, and the bytes depend only on those frames, the codec
configuration and the first frame of the next part (where the part ends). Every node — an
edge that joined late included — therefore serves the same URIs with the same bytes, so a
player behind a load balancer may fetch consecutive parts from different nodes. A segment whose
start a segmenter did not see is skipped with all its parts, never served partially.
"""

from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

from arcly.engine import Frame, FrameKind, ProtocolError, SegmentMark
from arcly.media import codecs
from arcly.media.fmp4 import Fmp4Writer, Sample

from .segmenter import ConfiguredIn, Part, Segment

log = logging.getLogger("arcly.hls")

INITS_KEPT = 4  # init segments remembered (a new one per codec change or publish session)
MAX_FRAME_GAP_MS = 1000  # a longer wait for the next part's first frame is a timestamp jump


@dataclass(frozen=True, slots=True)
class InitSegment:
    uri: str
    data: bytes


@dataclass(slots=True)
class _OpenPart:
    mark: SegmentMark
    samples: list[Sample] = field(default_factory=list)


@dataclass(slots=True)
class _OpenSegment:
    mark: SegmentMark
    init: InitSegment
    writer: Fmp4Writer
    audio: bool  # the init segment has an audio track (a later AAC config waits for the next)
    parts: list[Part] = field(default_factory=list)
    duration_ms: int = 0  # of its closed parts
    part: _OpenPart | None = None
    last_ts: int = 0     # timestamp of the latest frame
    last_delta: int = 0  # the latest step forward between frames (not a jump)


class CmafSegmenter:
    """Feed frames in order; ``feed`` and ``finish`` return the parts and segments they
    completed, in order (a segment comes right after its last part)."""

    def __init__(self) -> None:
        self.video_config: codecs.VideoConfig | None = None
        self.audio_config: codecs.AacConfig | None = None
        self._init: InitSegment | None = None
        self._writer: Fmp4Writer | None = None
        self._init_audio = False
        self._inits: OrderedDict[str, bytes] = OrderedDict()  # the latest few, by URI
        self._open: _OpenSegment | None = None
        self._configured_in = ConfiguredIn()
        self.errors = 0

    @property
    def pending(self) -> _OpenSegment | None:
        """The segment being cut (its completed parts are served before it completes)."""
        return self._open

    def init_segment(self, uri: str) -> bytes | None:
        """An init segment this segmenter named (one of the latest few)."""
        return self._inits.get(uri)

    def abandon(self) -> None:
        """Frames were lost (this subscriber fell behind): drop the segment in progress — its
        remaining parts would differ from other nodes' — and wait for the next one."""
        self._open = None

    def feed(self, frame: Frame) -> list[Part | Segment]:
        mark = frame.mark
        if frame.config:
            self._configure(frame)
            self._configured_in.note(mark)
            return []
        if mark is None or frame.kind is FrameKind.DATA:
            return []
        done: list[Part | Segment] = []
        current = self._open
        if current is not None and mark.session != current.mark.session:
            # The stream moved to a new publish session mid-subscription (an edge followed
            # its stream to another origin): how the old one ended is not known here.
            current = self._open = None
        elif current is not None and mark.sequence != current.mark.sequence:
            continuous = mark.discontinuity == current.mark.discontinuity
            done += self._close(current, end=frame.timestamp if continuous else None)
            current = self._open = None
        if current is None:
            if not self._starts(frame, mark) or self._configured_in.during(mark):
                return done  # joined mid-segment: wait for the next one
            init = self._init_segment(mark)
            assert init is not None and self._writer is not None
            current = self._open = _OpenSegment(mark, init, self._writer,
                                                self._init_audio, last_ts=frame.timestamp)
        part = current.part
        if part is not None and mark.part != part.mark.part:
            done += self._close_part(current, part, end=frame.timestamp)
            part = None
        if part is None:
            part = current.part = _OpenPart(mark)
        self._add(current, part, frame)
        return done

    def finish(self) -> list[Part | Segment]:
        """The stream ended: close the part and segment in progress."""
        current, self._open = self._open, None
        return self._close(current, end=None) if current is not None else []

    # -- internals ----------------------------------------------------------------------------

    def _starts(self, frame: Frame, mark: SegmentMark) -> bool:
        return (frame.kind is FrameKind.VIDEO and frame.keyframe and frame.timestamp == mark.start
                and mark.part == 0 and self.video_config is not None)

    def _configure(self, frame: Frame) -> None:
        try:
            if frame.kind is FrameKind.VIDEO:
                config = codecs.parse_video_config(codecs.parse_video(frame.payload))
                if config is not None and config != self.video_config:
                    self.video_config = config
                    self._init = None
            elif frame.kind is FrameKind.AUDIO and frame.payload[0] >> 4 == 10:
                audio = codecs.parse_aac_config(frame.payload[2:])
                if audio != self.audio_config:
                    self.audio_config = audio
                    self._init = None
        except ProtocolError as exc:
            self.errors += 1
            log.warning("hls: unusable codec configuration error=%s", exc)

    def _init_segment(self, mark: SegmentMark) -> InitSegment | None:
        """The init segment for the current configuration (named by a checksum of it, so every
        node names it alike; a new configuration gets a new one at the next segment)."""
        if self._init is None or not self._init.uri.startswith(f"init-{mark.session}-"):
            writer = Fmp4Writer(self.video_config, self.audio_config)
            data = writer.init_segment()
            self._init = InitSegment(f"init-{mark.session}-{zlib.crc32(data):08x}.mp4", data)
            self._inits[self._init.uri] = data
            while len(self._inits) > INITS_KEPT:
                self._inits.popitem(last=False)
            self._writer = writer
            self._init_audio = self.audio_config is not None
        return self._init

    def _add(self, current: _OpenSegment, part: _OpenPart, frame: Frame) -> None:
        try:
            sample = self._sample(frame)
        except ProtocolError as exc:
            self.errors += 1
            log.warning("hls: frame skipped ts=%d error=%s", frame.timestamp, exc)
            return
        if sample is None or (not sample.video and not current.audio):
            return
        part.samples.append(sample)
        step = frame.timestamp - current.last_ts
        if 0 < step <= MAX_FRAME_GAP_MS:
            current.last_delta = step
        current.last_ts = frame.timestamp  # the latest frame's (a jump included)

    def _sample(self, frame: Frame) -> Sample | None:
        if frame.kind is FrameKind.VIDEO:
            if self.video_config is None:
                return None
            packet = codecs.parse_video(frame.payload)
            if not packet.is_frame:
                return None
            return Sample(True, frame.timestamp, packet.cts, frame.keyframe, packet.data)
        body = frame.payload
        if self.audio_config is None or len(body) < 3 or body[0] >> 4 != 10 or body[1] != 1:
            return None
        return Sample(False, frame.timestamp, 0, True, body[2:])

    def _close_part(self, current: _OpenSegment, part: _OpenPart, *, end: int) -> list[Part]:
        """The finished part (none when no frame of it was usable)."""
        current.part = None
        if not part.samples:
            return []
        mark = part.mark
        gap = _span(current.last_ts, end)
        if gap is None or gap > MAX_FRAME_GAP_MS:  # a timestamp jump (or the stream's end)
            end = current.last_ts + max(current.last_delta, 1)
        duration = max(_span(mark.part_start, end) or 1, 1)
        current.duration_ms += duration
        # INDEPENDENT: a player may start decoding at this part (its first video frame is a
        # keyframe; audio-only: always).
        independent = next((s.keyframe for s in part.samples if s.video),
                           self.video_config is None)
        done = Part(mark.sequence, mark.part, mark.session, mark.part_start, duration / 1000,
                    independent,
                    current.writer.fragment(_fragment_number(mark), part.samples, end=end))
        current.parts.append(done)
        return [done]

    def _close(self, current: _OpenSegment, *, end: int | None) -> list[Part | Segment]:
        """Close the segment; ``end``: where the next one starts (None: unknown — the stream
        ended or jumped — so the last frame lasts as long as the one before it). A segment
        lasts as long as its parts."""
        if end is None:
            end = current.last_ts + max(current.last_delta, 1)
        done: list[Part | Segment] = []
        if current.part is not None:
            done += self._close_part(current, current.part, end=end)
        mark = current.mark
        parts = tuple(current.parts)
        done.append(Segment(mark.sequence, mark.discontinuity, mark.session, mark.start,
                            max(current.duration_ms, 1) / 1000,
                            b"".join(p.data for p in parts), ext="m4s", init=current.init.uri,
                            parts=parts))
        return done


def _span(start: int, end: int) -> int | None:
    """Milliseconds from ``start`` to ``end`` on the 32-bit RTMP timeline (across a wrap);
    None when ``end`` comes before ``start``."""
    span = (end - start) & 0xFFFF_FFFF
    return span if span < 0x8000_0000 else None


def _fragment_number(mark: SegmentMark) -> int:
    """The ``mfhd`` sequence number of a part: grows with every part, the same on every node."""
    return ((mark.sequence << 10) + mark.part + 1) & 0xFFFFFFFF
