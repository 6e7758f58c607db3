"""One FLV cut out of a key's recordings for a wall-clock window ``[start, start + duration)``.

A cut starts at the last sync point (video keyframe) at or before ``start`` — a decoder needs
one — and leaves out every tag at or after the window's end: decode order keeps each frame's
references before it, so a cut may end between keyframes, and the cut is longer than the
window by less than one GOP. A window that spans recordings continues in the next one at its
first keyframe; timestamps stay continuous (the gap between the recordings is left out) and the
next recording's sequence headers are sent again before its first tag.

``plan_cut`` decides from indexes alone (no media is read); ``CutReader`` produces the bytes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arcly.media import amf0, flv

from .flvindex import ConfigTag, FlvIndex, SyncPoint

CHUNK = 256 * 1024
_SCALARS = (float, bool, str)


@dataclass(frozen=True, slots=True)
class Source:
    """A recording a cut may use: its file, the Unix time of its timestamp 0, its index."""

    path: Path
    start: float
    index: FlvIndex


@dataclass(frozen=True, slots=True)
class Piece:
    """One recording's share of a cut. Output timestamp = file timestamp - ``first.timestamp``
    + ``shift``."""

    path: Path
    first: SyncPoint   # reading starts at this tag
    stop: int          # and stops at this offset
    end_ts: int        # tags at or after this timestamp are left out
    shift: int
    configs: tuple[ConfigTag, ...]  # the sequence headers in force at ``first``

    @property
    def length(self) -> int:
        return self.end_ts - self.first.timestamp


@dataclass(frozen=True, slots=True)
class Cut:
    pieces: tuple[Piece, ...]
    start: float  # Unix time of the cut's timestamp 0 (its first keyframe)
    metadata: dict[str, Any] = field(compare=False)  # the first recording's onMetaData
    has_audio: bool = True
    has_video: bool = True

    @property
    def duration(self) -> float:
        last = self.pieces[-1]
        return (last.shift + last.length) / 1000


def plan_cut(sources: Sequence[Source], start: float, duration: float) -> Cut | None:
    """The cut of ``sources`` for the window, or None when no recording has media in it."""
    pieces: list[Piece] = []
    shift = 0
    cut_start = 0.0
    window_end = start + duration
    used: list[Source] = []
    for source in sorted(sources, key=lambda s: s.start):
        index = source.index
        points = index.sync_points
        since = (start - source.start) * 1000      # the window in this file's timestamps
        until = (window_end - source.start) * 1000
        if not points or until <= points[0].timestamp or since >= index.end_ts:
            continue
        first = index.sync_at_or_before(since) or points[0]
        inside = until < index.end_ts  # the window ends in this recording
        if inside:
            end_ts = math.ceil(until)
            after = index.sync_at_or_after(until)
            stop = after.offset if after is not None else index.end
        else:
            end_ts, stop = index.end_ts, index.end
        if end_ts <= first.timestamp:
            continue
        if not pieces:
            cut_start = source.start + first.timestamp / 1000
        pieces.append(Piece(source.path, first, stop, end_ts, shift,
                            index.configs_before(first.offset)))
        used.append(source)
        shift += end_ts - first.timestamp
        if inside:
            break
    if not pieces:
        return None
    return Cut(tuple(pieces), cut_start, dict(used[0].index.metadata),
               has_audio=any(s.index.has_audio for s in used),
               has_video=any(s.index.has_video for s in used))


def metadata_tag(cut: Cut) -> bytes:
    """The cut's ``onMetaData``: its duration and start, then the publisher's plain fields
    (dimensions, codecs, frame rate) from the first recording."""
    fields = amf0.EcmaArray(duration=cut.duration, arclyStart=cut.start)
    for name, value in cut.metadata.items():
        if name not in fields and name != "filesize" and isinstance(value, _SCALARS):
            fields[name] = value
    return flv.encode_tag(flv.TAG_SCRIPT, 0, amf0.encode("onMetaData", fields))


class CutReader:
    """The bytes of a cut, a chunk at a time: ``read`` returns the next chunk, ``b""`` at the
    end. Blocking reads: call ``read`` (and ``close``) from a worker thread, one call at a time.
    Raises ``OSError`` when a recording is shorter than its index said."""

    def __init__(self, cut: Cut, chunk_size: int = CHUNK) -> None:
        self.cut = cut
        self.chunk_size = chunk_size
        self._chunks = self._generate()

    def read(self) -> bytes:
        return next(self._chunks, b"")

    def close(self) -> None:
        self._chunks.close()

    def _generate(self) -> Generator[bytes, None, None]:
        cut = self.cut
        yield flv.file_header(audio=cut.has_audio, video=cut.has_video) + metadata_tag(cut)
        for piece in cut.pieces:
            with piece.path.open("rb") as handle:
                yield from self._piece(handle.fileno(), piece)

    def _piece(self, fd: int, piece: Piece) -> Generator[bytes, None, None]:
        out = bytearray()
        for config in piece.configs:
            tag = _pread_exactly(fd, config.size, config.offset)
            out += flv.tag_header(tag[0] & 0x1F, piece.shift, len(tag) - 15)
            out += tag[11:]
        position, want = piece.first.offset, self.chunk_size
        while position < piece.stop:
            data = _pread_exactly(fd, min(want, piece.stop - position), position)
            used = _retime(data, piece, out)
            if used == 0:  # one tag larger than a chunk: read it whole
                whole = 15 + int.from_bytes(data[1:4], "big") if len(data) >= 11 else 0
                if whole <= len(data) or position + whole > piece.stop:
                    raise OSError(f"{piece.path}: broken tag at byte {position}")
                want = whole
                continue
            position += used
            want = self.chunk_size
            if len(out) >= self.chunk_size:
                yield bytes(out)
                out.clear()
        if out:
            yield bytes(out)


def _retime(data: bytes, piece: Piece, out: bytearray) -> int:
    """Append the complete tags of ``data`` that fall in the piece, with output timestamps;
    return how many bytes of ``data`` were whole tags."""
    view = memoryview(data)
    offset = 0
    base, end_ts, shift = piece.first.timestamp, piece.end_ts, piece.shift
    while offset + 11 <= len(data):
        tag_type, size, ts = flv.tag_head(data, offset)
        end = offset + 15 + size
        if end > len(data):
            break
        if base <= ts < end_ts and tag_type in (flv.TAG_AUDIO, flv.TAG_VIDEO, flv.TAG_SCRIPT) \
                and not (tag_type == flv.TAG_SCRIPT and flv.is_metadata(data[offset + 11:end])):
            out += flv.tag_header(tag_type, ts - base + shift, size)
            out += view[offset + 11:end]
        offset = end
    return offset


def _pread_exactly(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(f"recording ended at byte {offset + len(data)}, expected {offset + size}")
    return data
