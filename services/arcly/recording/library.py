"""The recordings on disk, read back: which streams have recordings, and each recording's
start, duration and size.

A recording is ``{app}/{stream}/{UTC %Y%m%d-%H%M%S}-{session}.flv`` under the storage root
(plus a ``{same base}/`` HLS VOD folder with ``--record-hls``). Its start is the wall-clock
time of its timestamp 0: the recorder's ``arclyStart`` metadata field, else the second in its
name. Its duration is the one the recorder patched in at finalization, else (still being
written, or left by a crash) the one its last complete tag gives.

Blocking file I/O: call from a worker thread.
"""

from __future__ import annotations

import calendar
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arcly.engine import InvalidStreamKey, ProtocolError, StreamKey

from .flvindex import FlvIndex, IndexCache, read_metadata
from .storage import FilesystemStorage

log = logging.getLogger("arcly.recording")

NAME = re.compile(r"(?P<stamp>\d{8}-\d{6})-(?P<session>[A-Za-z0-9_-]{1,64})\.flv")
STAMP = "%Y%m%d-%H%M%S"


def name_start(name: str) -> float | None:
    """The UTC second in a recording's file name, as Unix time (None: not a recording's)."""
    match = NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return float(calendar.timegm(time.strptime(match["stamp"], STAMP)))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Recording:
    """One recorded publish session of a key."""

    key: StreamKey
    base: str        # the file name without ``.flv``
    path: Path
    start: float     # Unix time of timestamp 0
    duration: float  # seconds
    size: int        # bytes of the FLV
    hls: bool        # ``--record-hls`` wrote an HLS VOD folder for it

    @property
    def name(self) -> str:
        return f"{self.base}.flv"

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def storage_name(self) -> str:
        """The name the recorder writes it under (``Recorder.base``)."""
        return f"{self.key.app}/{self.key.stream}/{self.base}"


@dataclass(frozen=True, slots=True)
class StreamRecordings:
    """A key that has recordings: how many, how many bytes of FLV, the latest one's start
    (from its name: a listing of keys reads no file)."""

    key: StreamKey
    count: int
    size: int
    latest: float


def _start(metadata: dict[str, Any], name: str) -> float:
    value = metadata.get("arclyStart")
    if isinstance(value, float) and value > 0:
        return value
    return name_start(name) or 0.0


class Library:
    """The recordings under one ``FilesystemStorage`` root, and their indexes (cached)."""

    def __init__(self, storage: FilesystemStorage, cache: IndexCache | None = None) -> None:
        self.storage = storage
        self.cache = cache or IndexCache()

    def streams(self) -> list[StreamRecordings]:
        found = []
        for app in subdirectories(self.storage.root):
            for stream in subdirectories(app):
                try:
                    key = StreamKey(app.name, stream.name)
                except InvalidStreamKey:
                    continue  # not a directory the recorder made
                starts, size = [], 0
                for entry in os.scandir(stream):
                    start = name_start(entry.name)
                    if start is not None and entry.is_file(follow_symlinks=False):
                        starts.append(start)
                        size += entry.stat(follow_symlinks=False).st_size
                if starts:
                    found.append(StreamRecordings(key, len(starts), size, max(starts)))
        return sorted(found, key=lambda s: str(s.key))

    def recordings(self, key: StreamKey) -> list[Recording]:
        """The key's recordings, oldest first. Unreadable ones are left out (and logged)."""
        folder = self.storage.path_for(f"{key.app}/{key.stream}")
        if not folder.is_dir():
            return []
        found = []
        for entry in os.scandir(folder):
            if name_start(entry.name) is None or not entry.is_file(follow_symlinks=False):
                continue
            recording = self._read(key, Path(entry.path))
            if recording is not None:
                found.append(recording)
        return sorted(found, key=lambda r: (r.start, r.base))

    def recording(self, key: StreamKey, base: str) -> Recording | None:
        """One recording by its base name (None: no such recording)."""
        name = f"{base}.flv"
        if name_start(name) is None:
            return None
        path = self.storage.path_for(f"{key.app}/{key.stream}/{name}")
        return self._read(key, path) if path.is_file() else None

    def index(self, recording: Recording) -> FlvIndex:
        return self.cache.get(recording.path)

    def _read(self, key: StreamKey, path: Path) -> Recording | None:
        try:
            size = path.stat().st_size
            metadata = read_metadata(path)
            duration = metadata.get("duration")
            if not (isinstance(duration, float) and duration > 0):
                duration = self.cache.get(path).duration  # not finalized: its last tag says
        except (OSError, ProtocolError) as exc:
            log.warning("recording unreadable path=%s error=%s", path, exc)
            return None
        base = path.name.removesuffix(".flv")
        return Recording(key, base, path, _start(metadata, path.name), duration, size,
                         (path.parent / base / "index.m3u8").is_file())


def subdirectories(folder: Path) -> list[Path]:
    """The subdirectories of ``folder`` (no dotfiles, no symlinks)."""
    try:
        return [Path(e.path) for e in os.scandir(folder)
                if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
