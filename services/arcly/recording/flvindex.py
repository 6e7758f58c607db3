"""An index of a recorded FLV: where its sync points and sequence headers are, how long it is.

Playback cuts recordings at keyframes and remuxes byte ranges of them, so it needs to know where
the keyframes are without reading the media. ``scan`` reads only the 11-byte tag headers (and
the first bytes of audio/video bodies, which say keyframe or sequence header) and seeks over
the rest. A recording being written, or left by a crash, ends at its last complete tag; a
recording that grew since its last scan is scanned on from where the last scan stopped
(``IndexCache``), since FLV is append-only (the finalization patch rewrites two numbers of the
metadata tag and moves no tag).

Blocking file I/O: call from a worker thread.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arcly.engine import FrameKind, ProtocolError
from arcly.media import amf0, flv

AUDIO_SYNC_MS = 1000  # audio-only recordings: a sync point at most every second
_MAX_METADATA = 64 * 1024


@dataclass(frozen=True, slots=True)
class SyncPoint:
    """Where a decoder can start: a video keyframe (an audio frame in audio-only files)."""

    timestamp: int
    offset: int


@dataclass(frozen=True, slots=True)
class ConfigTag:
    """A sequence header (AVC/HEVC decoder configuration, AAC AudioSpecificConfig)."""

    kind: FrameKind
    timestamp: int
    offset: int
    size: int  # of the whole tag: header, body and PreviousTagSize


@dataclass(frozen=True, slots=True)
class FlvIndex:
    """What a scan of one FLV found. Timestamps are the file's (milliseconds)."""

    inode: int
    size: int          # the file's size when scanned
    mtime_ns: int
    data_start: int    # offset of the first tag
    end: int           # offset after the last complete tag: a cut never reads past it
    metadata: dict[str, Any] = field(compare=False)
    keyframes: tuple[SyncPoint, ...] = ()
    audio_points: tuple[SyncPoint, ...] = ()
    configs: tuple[ConfigTag, ...] = ()
    has_video: bool = False
    has_audio: bool = False
    video_ts: int = -1   # the last video frame's timestamp (-1: none)
    video_step: int = 0  # and the step to it from the one before (its duration, near enough)
    audio_ts: int = -1
    audio_step: int = 0

    @property
    def sync_points(self) -> tuple[SyncPoint, ...]:
        return self.keyframes if self.has_video else self.audio_points

    @property
    def end_ts(self) -> int:
        """Where the media ends: after its last frame (the recorder's finalized duration
        agrees to within a frame)."""
        return max(self.video_ts + self.video_step, self.audio_ts + self.audio_step, 0)

    @property
    def duration(self) -> float:
        return self.end_ts / 1000

    def sync_at_or_before(self, timestamp: float) -> SyncPoint | None:
        points = self.sync_points
        at = bisect.bisect_right(points, timestamp, key=lambda p: p.timestamp)
        return points[at - 1] if at else None

    def sync_at_or_after(self, timestamp: float) -> SyncPoint | None:
        points = self.sync_points
        at = bisect.bisect_left(points, timestamp, key=lambda p: p.timestamp)
        return points[at] if at < len(points) else None

    def configs_before(self, offset: int) -> tuple[ConfigTag, ...]:
        """The sequence headers in force at ``offset``: the latest video and audio ones before
        it, in file order."""
        latest: dict[FrameKind, ConfigTag] = {}
        for config in self.configs:
            if config.offset >= offset:
                break
            latest[config.kind] = config
        return tuple(sorted(latest.values(), key=lambda c: c.offset))


class _Scan:
    """The scanner's state: seeded from an earlier index to scan on from its end."""

    def __init__(self, previous: FlvIndex | None) -> None:
        self.keyframes = list(previous.keyframes) if previous else []
        self.audio_points = list(previous.audio_points) if previous else []
        self.configs = list(previous.configs) if previous else []
        self.has_video = previous.has_video if previous else False
        self.has_audio = previous.has_audio if previous else False
        # The last frame's timestamp and step, by kind.
        self.last = {FrameKind.VIDEO: (previous.video_ts, previous.video_step),
                     FrameKind.AUDIO: (previous.audio_ts, previous.audio_step)} \
            if previous else {FrameKind.VIDEO: (-1, 0), FrameKind.AUDIO: (-1, 0)}

    def tag(self, tag_type: int, timestamp: int, offset: int, size: int, head: bytes) -> None:
        """One audio or video tag: ``head`` is up to the first 5 bytes of its body."""
        kind = FrameKind.VIDEO if tag_type == flv.TAG_VIDEO else FrameKind.AUDIO
        if kind is FrameKind.VIDEO:
            self.has_video = True
            if flv.is_video_config(head):
                self.configs.append(ConfigTag(kind, timestamp, offset, size + 15))
                return
            if flv.is_video_keyframe(head):
                self.keyframes.append(SyncPoint(timestamp, offset))
        else:
            self.has_audio = True
            if flv.is_audio_config(head):
                self.configs.append(ConfigTag(kind, timestamp, offset, size + 15))
                return
            if not self.audio_points or \
                    timestamp - self.audio_points[-1].timestamp >= AUDIO_SYNC_MS:
                self.audio_points.append(SyncPoint(timestamp, offset))
        last, _ = self.last[kind]
        if timestamp > last:
            self.last[kind] = (timestamp, timestamp - last if last >= 0 else 0)


def _metadata(fd: int, offset: int, size: int) -> dict[str, Any]:
    """The fields of an ``onMetaData`` tag at ``offset`` (empty when it is something else)."""
    if size > _MAX_METADATA:
        return {}
    body = os.pread(fd, size, offset + 11)
    if not flv.is_metadata(body):
        return {}
    try:
        values = amf0.decode(body)
    except ProtocolError:
        return {}
    return dict(values[1]) if len(values) > 1 and isinstance(values[1], dict) else {}


def scan(path: Path, previous: FlvIndex | None = None) -> FlvIndex:
    """Index the FLV at ``path``; with ``previous`` (an index of the same file, when it was
    shorter), scan only what was appended since. Raises ``ProtocolError`` when it is not an
    FLV, ``OSError`` when it cannot be read."""
    with path.open("rb") as handle:
        fd = handle.fileno()
        stat = os.fstat(fd)
        size = stat.st_size
        if previous is not None:
            data_start, offset, metadata = previous.data_start, previous.end, previous.metadata
        else:
            data_start = offset = flv.parse_header(os.pread(fd, 13, 0))
            metadata = {}
        state = _Scan(previous)
        while offset + 11 <= size:
            head = os.pread(fd, 16, offset)
            if len(head) < 11:
                break
            tag_type, body_size, timestamp = flv.tag_head(head)
            if offset + 15 + body_size > size:
                break  # a tag still being written (or cut by a crash)
            if tag_type not in (flv.TAG_AUDIO, flv.TAG_VIDEO, flv.TAG_SCRIPT):
                break  # not ours: the file ends here as far as playback goes
            if tag_type == flv.TAG_SCRIPT:
                if offset == data_start:
                    metadata = _metadata(fd, offset, body_size)
            elif body_size:
                state.tag(tag_type, timestamp, offset, body_size, head[11:11 + body_size])
            offset += 15 + body_size
        if previous is not None:
            # The finalization patch changes the metadata's duration: read it again.
            metadata = _refresh_metadata(fd, data_start, size) or metadata
    return FlvIndex(
        inode=stat.st_ino, size=size, mtime_ns=stat.st_mtime_ns, data_start=data_start,
        end=offset, metadata=metadata, keyframes=tuple(state.keyframes),
        audio_points=tuple(state.audio_points), configs=tuple(state.configs),
        has_video=state.has_video, has_audio=state.has_audio,
        video_ts=state.last[FrameKind.VIDEO][0], video_step=state.last[FrameKind.VIDEO][1],
        audio_ts=state.last[FrameKind.AUDIO][0], audio_step=state.last[FrameKind.AUDIO][1])


def _refresh_metadata(fd: int, offset: int, size: int) -> dict[str, Any]:
    head = os.pread(fd, 11, offset)
    if len(head) < 11 or head[0] & 0x1F != flv.TAG_SCRIPT:
        return {}
    body_size = int.from_bytes(head[1:4], "big")
    return _metadata(fd, offset, body_size) if offset + 15 + body_size <= size else {}


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``onMetaData`` fields of the FLV at ``path`` (its first tag), without a scan."""
    with path.open("rb") as handle:
        fd = handle.fileno()
        start = flv.parse_header(os.pread(fd, 13, 0))
        return _refresh_metadata(fd, start, os.fstat(fd).st_size)


class IndexCache:
    """Indexes of recently used recordings, by path. A file that did not change (same inode,
    size and modification time) is not scanned again; one that grew is scanned on from where
    the last scan stopped. Thread-safe: requests scan on worker threads."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._indexes: OrderedDict[Path, FlvIndex] = OrderedDict()
        self._lock = threading.Lock()
        self.scans = 0  # full or partial scans done (what the cache saved shows in tests)

    def get(self, path: Path) -> FlvIndex:
        stat = path.stat()
        with self._lock:
            cached = self._indexes.get(path)
            if cached is not None:
                self._indexes.move_to_end(path)
        if cached is not None and cached.inode == stat.st_ino:
            if cached.size == stat.st_size and cached.mtime_ns == stat.st_mtime_ns:
                return cached
            if stat.st_size < cached.size:
                cached = None  # not the file it was: scan it whole
        else:
            cached = None
        index = scan(path, cached)
        with self._lock:
            self.scans += 1
            self._indexes[path] = index
            self._indexes.move_to_end(path)
            while len(self._indexes) > self.capacity:
                self._indexes.popitem(last=False)
        return index
