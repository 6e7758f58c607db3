"""The filesystem ``Storage`` backend: files under one root, never outside it."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from arcly.engine import InvalidStreamKey


class FileWriter:
    """A file being written (blocking calls, run off the event loop)."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle

    def write(self, data: bytes) -> None:
        self._handle.write(data)

    def patch(self, offset: int, data: bytes) -> None:
        end = self._handle.tell()
        self._handle.seek(offset)
        self._handle.write(data)
        self._handle.seek(end)

    def sync(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


class FilesystemStorage:
    """Recordings under ``root``. Names are relative POSIX paths; ``..``, absolute paths and
    anything resolving outside ``root`` are refused before a file is touched."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def path_for(self, name: str) -> Path:
        raw_parts = name.split("/")
        if not name or any(part in ("", ".", "..") or part.startswith(".") or "\x00" in part
                           for part in raw_parts):
            raise InvalidStreamKey(f"refusing recording path {name[:128]!r}")
        relative = PurePosixPath(*raw_parts)
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidStreamKey(f"recording path {name[:128]!r} escapes the root")
        return path

    def open(self, name: str) -> FileWriter:
        path = self.path_for(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = path.open("wb")
        except FileNotFoundError:  # retention removed the directory, empty, just then
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("wb")
        return FileWriter(handle)
