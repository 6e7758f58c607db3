"""Reading fMP4 fragments in tests (independent of the writer in arcly.media.fmp4)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

NON_SYNC = 0x0001_0000  # sample_is_non_sync_sample in sample flags


def boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in ``data[start:end]``."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        if size < header or pos + size > end:
            raise ValueError(f"bad box {kind!r} at {pos}")
        yield kind, pos + header, pos + size
        pos += size


def first_sample_sync(fragment: bytes, track_id: int) -> bool | None:
    """Whether the first sample of ``track_id`` in a moof+mdat is a sync sample (None: the
    fragment has no sample of that track)."""
    for kind, start, end in boxes(fragment):
        if kind != b"moof":
            continue
        for traf, tstart, tend in boxes(fragment, start, end):
            if traf != b"traf":
                continue
            found = default_flags = None
            for child, cstart, _ in boxes(fragment, tstart, tend):
                if child == b"tfhd":
                    flags = int.from_bytes(fragment[cstart + 1:cstart + 4], "big")
                    found = struct.unpack_from(">I", fragment, cstart + 4)[0]
                    at = cstart + 8 + (8 if flags & 0x1 else 0) + (4 if flags & 0x2 else 0) \
                        + (4 if flags & 0x8 else 0) + (4 if flags & 0x10 else 0)
                    if flags & 0x20:
                        default_flags = struct.unpack_from(">I", fragment, at)[0]
                elif child == b"trun" and found == track_id:
                    return not _first_flags(fragment, cstart, default_flags) & NON_SYNC
    return None


def _first_flags(data: bytes, start: int, default: int | None) -> int:
    flags = int.from_bytes(data[start + 1:start + 4], "big")
    at = start + 8 + (4 if flags & 0x1 else 0)
    if flags & 0x4:
        return int(struct.unpack_from(">I", data, at)[0])
    if flags & 0x400:
        at += (4 if flags & 0x100 else 0) + (4 if flags & 0x200 else 0)
        return int(struct.unpack_from(">I", data, at)[0])
    return default or 0
