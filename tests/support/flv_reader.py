"""Read an HTTP-FLV response tag by tag (tests)."""

from __future__ import annotations

import asyncio
import time

from arcly.media import flv


class HttpFlvReader:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = b""
        self.offset = 0
        self.status = 0
        self.pending: list[flv.Tag] = []

    @classmethod
    async def open(cls, port: int, path: str, timeout: float = 10.0) -> HttpFlvReader:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                                timeout)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        self = cls(reader, writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        self.status = int(head.split(b" ", 2)[1])
        return self

    async def read_header(self, timeout: float = 10.0) -> None:
        while len(self.buf) < 13:
            await self._fill(timeout)
        self.offset = flv.parse_header(self.buf)

    async def _fill(self, timeout: float) -> None:
        data = await asyncio.wait_for(self.reader.read(256 * 1024), timeout)
        if not data:
            raise EOFError("response ended")
        self.buf += data

    async def next_tag(self, timeout: float = 10.0) -> flv.Tag:
        while not self.pending:
            tags, self.offset = flv.parse_tags(self.buf, self.offset)
            if tags:
                self.pending.extend(tags)
                self.buf = self.buf[self.offset:]
                self.offset = 0
                break
            await self._fill(timeout)
        return self.pending.pop(0)

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (TimeoutError, ConnectionError, OSError):
            pass


async def first_video_frames(port: int, key: str) -> tuple[float, list[bytes]]:
    """Play ``key`` over HTTP-FLV until two video tags arrived: the time from the request to
    the first one, and both bodies (expected: sequence header, then keyframe)."""
    started = time.monotonic()
    reader = await HttpFlvReader.open(port, f"/{key}.flv")
    try:
        assert reader.status == 200
        await reader.read_header()
        videos: list[bytes] = []
        first_at = 0.0
        while len(videos) < 2:
            tag = await reader.next_tag()
            if tag.tag_type == flv.TAG_VIDEO:
                videos.append(tag.body)
                first_at = first_at or time.monotonic()
        return first_at - started, videos
    finally:
        await reader.close()
