"""HLS VOD of a recorded FLV, made on request (recordings made without ``--record-hls``).

The playlist cuts the recording at keyframes by the live timeline's rule (a keyframe at least
three quarters of the target after the segment's start opens the next one), from the index
alone. A segment is remuxed when asked for: its byte range of the FLV goes through the same
MPEG-TS ``Segmenter`` live HLS uses, after the sequence headers in force at its start. Segment
timestamps are the recording's, so segments join without gaps.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from arcly.engine import FrameKind, ProtocolError, SegmentMark
from arcly.hls.playlist import render_playlist
from arcly.hls.segmenter import Segment, Segmenter
from arcly.media import flv

from .flvindex import FlvIndex, SyncPoint

SESSION = 0  # generated segments are named "0-{sequence}.ts"


@dataclass(frozen=True, slots=True)
class VodSegment:
    sequence: int
    first: SyncPoint  # the keyframe it starts with
    stop: int         # the offset where its tags end
    duration: float   # seconds

    @property
    def uri(self) -> str:
        return f"{SESSION}-{self.sequence}.ts"


def vod_segments(index: FlvIndex, target: float, *, complete: bool = True) -> list[VodSegment]:
    """The segments of a recording with video (none without). ``complete=False``: the
    recording is still being written, so its last segment (still growing) is left out."""
    keyframes = index.keyframes
    target_ms = target * 1000 * 3 / 4
    starts = [keyframes[0]] if keyframes else []
    for keyframe in keyframes[1:]:
        if keyframe.timestamp - starts[-1].timestamp >= target_ms:
            starts.append(keyframe)
    segments = []
    for sequence, first in enumerate(starts):
        nxt = starts[sequence + 1] if sequence + 1 < len(starts) else None
        if nxt is None and not complete:
            break
        end_ts, stop = (nxt.timestamp, nxt.offset) if nxt else (index.end_ts, index.end)
        segments.append(VodSegment(sequence, first, stop,
                                   max(end_ts - first.timestamp, 1) / 1000))
    return segments


def vod_playlist(segments: list[VodSegment], target: float, *, ended: bool,
                 suffix: str = "") -> str:
    """The playlist: ``VOD`` with ``#EXT-X-ENDLIST`` once the recording is finished, ``EVENT``
    while it is being written. ``suffix`` (a query) is added to every segment URI."""
    listed = [Segment(s.sequence, 0, SESSION, s.first.timestamp, s.duration, b"")
              for s in segments]
    return render_playlist(listed, target=target, ended=ended, suffix=suffix,
                           playlist_type="VOD" if ended else "EVENT")


def segment_sequence(name: str) -> int | None:
    """The sequence number a generated segment URI names (None: not one of ours)."""
    prefix = f"{SESSION}-"
    number = name.removeprefix(prefix).removesuffix(".ts")
    if not (name.startswith(prefix) and name.endswith(".ts") and number.isascii()
            and number.isdigit() and len(number) <= 9):
        return None
    return int(number)


def remux_segment(path: Path, index: FlvIndex, segment: VodSegment) -> bytes:
    """The MPEG-TS bytes of ``segment``. Blocking: call from a worker thread. Raises
    ``ProtocolError`` when the range holds no decodable media, ``OSError`` when the file
    cannot be read."""
    segmenter = Segmenter()
    mark = SegmentMark(segment.sequence, 0, segment.first.timestamp, SESSION)
    with path.open("rb") as handle:
        fd = handle.fileno()
        for config in index.configs_before(segment.first.offset):
            raw = os.pread(fd, config.size, config.offset)
            segmenter.feed(flv.make_frame(config.kind, config.timestamp, raw[11:-4]))
        size = segment.stop - segment.first.offset
        data = os.pread(fd, size, segment.first.offset)
    if len(data) != size:
        raise OSError(f"{path}: ended at byte {segment.first.offset + len(data)}")
    tags, _ = flv.parse_tags(data)
    for tag in tags:
        if tag.tag_type in (flv.TAG_AUDIO, flv.TAG_VIDEO):
            frame = flv.make_frame(FrameKind(tag.tag_type), tag.timestamp, tag.body)
            segmenter.feed(dataclasses.replace(frame, mark=mark))
    done = segmenter.finish()
    if done is None:
        raise ProtocolError(f"{path}: no media at byte {segment.first.offset}")
    return done.data
