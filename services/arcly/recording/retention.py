"""Retention: deleting old recordings (``--record-max-age``) and the oldest ones while all of
them together are over a size (``--record-max-bytes``).

A recording is its FLV and its HLS VOD folder, deleted together; one still being written is
never deleted (but its bytes count). Age counts from a recording's last write (the end of a
finished one). ``plan_deletions`` decides, without touching files; ``inventory`` and ``delete``
do the blocking filesystem work (call them from a worker thread).

>>> plan_deletions([], now=0.0, max_age=60.0, max_bytes=None, live=set())
[]
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from .library import name_start, subdirectories

MAX_AGE = "max-age"
MAX_BYTES = "max-bytes"


@dataclass(frozen=True, slots=True)
class Stored:
    """A recording on disk."""

    name: str            # ``{app}/{stream}/{base}``: what the recorder calls it
    flv: Path
    folder: Path | None  # its HLS VOD folder
    modified: float      # Unix time of the FLV's last write
    size: int            # the FLV and the folder's files


@dataclass(frozen=True, slots=True)
class Deletion:
    recording: Stored
    reason: str  # MAX_AGE or MAX_BYTES


def inventory(root: Path) -> list[Stored]:
    """Every recording under ``root`` (``{app}/{stream}/{stamp}-{session}.flv``)."""
    found = []
    for app in subdirectories(root):
        for stream in subdirectories(app):
            for entry in os.scandir(stream):
                if name_start(entry.name) is None or not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
                base = entry.name.removesuffix(".flv")
                folder = stream / base
                is_folder = folder.is_dir() and not folder.is_symlink()
                found.append(Stored(f"{app.name}/{stream.name}/{base}", Path(entry.path),
                                    folder if is_folder else None, stat.st_mtime,
                                    stat.st_size + (_folder_size(folder) if is_folder else 0)))
    return found


def plan_deletions(stored: Sequence[Stored], *, now: float, max_age: float | None,
                   max_bytes: int | None, live: Collection[str]) -> list[Deletion]:
    """What to delete, oldest first: finished recordings older than ``max_age``, then the
    oldest finished ones while the total is over ``max_bytes``. ``live``: the names of
    recordings being written."""
    total = sum(s.size for s in stored)
    doomed: list[Deletion] = []
    for recording in sorted(stored, key=lambda s: (s.modified, s.name)):
        if recording.name in live:
            continue
        if max_age is not None and now - recording.modified > max_age:
            reason = MAX_AGE
        elif max_bytes is not None and total > max_bytes:
            reason = MAX_BYTES
        else:
            continue
        doomed.append(Deletion(recording, reason))
        total -= recording.size
    return doomed


def delete(root: Path, recording: Stored) -> None:
    """Delete a recording's FLV and folder, then its stream's and app's directories if that
    left them empty (never ``root``)."""
    recording.flv.unlink(missing_ok=True)
    if recording.folder is not None:
        shutil.rmtree(recording.folder)
    parent = recording.flv.parent
    while parent != root and parent.is_relative_to(root):
        try:
            parent.rmdir()
        except OSError:  # not empty (or already gone): stop climbing
            return
        parent = parent.parent


def _folder_size(folder: Path) -> int:
    total = 0
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
    return total
