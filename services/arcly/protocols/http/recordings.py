"""Recording playback over HTTP: the recordings API, recorded files, HLS VOD and cut windows.

- ``GET /api/v1/recordings``: the keys that have recordings; ``GET /api/v1/recordings/{app}/
  {stream}``: a key's recordings (start, duration, size, live, URLs). Guarded by the API token
  like the rest of ``/api/v1`` (``ManagementApi.allowed``).
- ``GET /recordings/{app}/{stream}/{base}.flv``: a recording, with byte ranges (players seek
  with them, ffmpeg probes with them).
- ``GET /recordings/{app}/{stream}/{base}/{file}``: its HLS VOD: the one ``--record-hls``
  wrote, or (without it) one made from the FLV on request (``arcly.recording.vod``).
- ``GET /playback/{app}/{stream}.flv?start=RFC3339&duration=SECONDS``: one FLV cut from the
  key's recordings for that wall-clock window (``arcly.recording.cut``).

Media requests are authorized as ``play`` of the key (protocol ``playback``) with the query's
credentials, and a playlist carries them on to the URIs it names. Files are read on worker
threads a chunk at a time, the next chunk only once the client took the last one
(``drain``): uvloop has no ``loop.sendfile``, and a recording is never held in memory whole.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any, BinaryIO

from arcly.engine import (
    InvalidStreamKey,
    ProtocolError,
    StreamKey,
)
from arcly.protocols.listener import Admission
from arcly.recording import RecordingManager, RecordSettings
from arcly.recording.cut import Cut, CutReader, Source, plan_cut
from arcly.recording.library import Library, Recording, name_start
from arcly.recording.storage import FilesystemStorage
from arcly.recording.vod import remux_segment, segment_sequence, vod_playlist, vod_segments

from .api import ManagementApi
from .exchange import Exchange, authorize_play, refuse_while_draining, response_head
from .ranges import ByteRange, RangeNotSatisfiable, parse_range
from .request import quote_query
from .settings import HttpSettings

log = logging.getLogger("arcly.http")

CHUNK = 256 * 1024
MAX_WINDOW = 24 * 3600.0  # seconds a playback window may span
PLAYLIST = "application/vnd.apple.mpegurl"
CONTENT_TYPES = {".flv": "video/x-flv", ".m3u8": PLAYLIST, ".ts": "video/mp2t",
                 ".m4s": "video/iso.segment", ".mp4": "video/mp4"}
_EXPOSE = "Content-Range, Content-Length, Accept-Ranges, ETag, Last-Modified"
_OFFSET_SPACE = re.compile(r" (\d\d:\d\d)$")  # "+01:00" arrives as " 01:00" (form decoding)


def rfc3339(moment: float) -> str:
    """Unix time as RFC 3339 UTC with milliseconds: ``2026-11-27T02:11:38.250Z``."""
    text = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def parse_window(query: Mapping[str, str]) -> tuple[float, float]:
    """``start`` (RFC 3339, with a time zone) and ``duration`` (seconds) of a playback request,
    as Unix time and seconds. Raises ``ValueError`` saying what is wrong."""
    text = query.get("start", "").strip()
    if not text:
        raise ValueError("start is required: an RFC 3339 time, e.g. 2026-11-27T02:11:38Z")
    try:
        moment = datetime.fromisoformat(_OFFSET_SPACE.sub(r"+\1", text))
    except ValueError:
        raise ValueError(f"start {text[:64]!r} is not an RFC 3339 time "
                         "(e.g. 2026-11-27T02:11:38Z)") from None
    if moment.tzinfo is None:
        raise ValueError(f"start {text[:64]!r} needs a time zone (Z or +hh:mm)")
    given = query.get("duration", "").strip()
    if not given:
        raise ValueError("duration is required: seconds, e.g. 30")
    try:
        duration = float(given)
    except ValueError:
        raise ValueError(f"duration {given[:32]!r} is not a number of seconds") from None
    if not (math.isfinite(duration) and 0 < duration <= MAX_WINDOW):
        raise ValueError(f"duration must be more than 0 and at most {MAX_WINDOW:g} seconds")
    return moment.timestamp(), duration


def _head(status: int, headers: Mapping[str, str], *, keep_alive: bool) -> bytes:
    return response_head(status, {**headers, "Access-Control-Expose-Headers": _EXPOSE},
                         keep_alive=keep_alive)


def with_query(playlist: str, suffix: str) -> str:
    """A recorded playlist with ``suffix`` (the request's credentials) on every URI."""
    if not suffix:
        return playlist
    def carry(line: str) -> str:
        if line and not line.startswith("#"):
            return line + suffix
        if line.startswith("#EXT-X-MAP:"):
            return re.sub(r'URI="([^"]*)"', lambda m: f'URI="{m[1]}{suffix}"', line)
        return line

    return "\n".join(carry(line) for line in playlist.splitlines()) + "\n"


def _open_regular(path: Path) -> tuple[BinaryIO, os.stat_result]:
    """Open a regular file for reading (blocking)."""
    handle = path.open("rb")
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode):
        handle.close()
        raise IsADirectoryError(f"{path} is not a file")
    return handle, info


class RecordingRoutes:
    """The routes above, over a node's ``RecordingManager`` (None: recording is off here)."""

    def __init__(self, manager: RecordingManager | None, api: ManagementApi,
                 settings: HttpSettings, admission: Admission) -> None:
        self.manager = manager
        self.api = api
        self.settings = settings
        self.admission = admission
        storage = manager.storage if manager is not None else None
        self.storage = storage if isinstance(storage, FilesystemStorage) else None
        self.library = Library(self.storage) if self.storage is not None else None
        self.segment_seconds = (manager.settings if manager is not None
                                else RecordSettings()).segment_seconds  # HLS VOD made here

    # -- the API --------------------------------------------------------------------------------

    def _api_library(self, exchange: Exchange) -> Library | None:
        """The library, when the API token allows the call and this node records (else the
        refusal is sent: None)."""
        if not self.api.allowed(exchange):
            exchange.json(401, {"error": "unauthorized"},
                          {"WWW-Authenticate": 'Bearer realm="arcly"'})
            return None
        if self.library is None:
            exchange.json(404, {"error": "recording is off on this node"})
        return self.library

    async def streams(self, exchange: Exchange, params: dict[str, str]) -> None:
        library = self._api_library(exchange)
        if library is None:
            return
        found = await asyncio.to_thread(library.streams)
        exchange.json(200, {"streams": [
            {"key": str(s.key), "recordings": s.count, "bytes": s.size,
             "latest": rfc3339(s.latest), "url": f"/api/v1/recordings/{s.key}"}
            for s in found]})

    async def listing(self, exchange: Exchange, params: dict[str, str]) -> None:
        library = self._api_library(exchange)
        if library is None:
            return
        try:
            key = StreamKey(params["app"], params["stream"])
        except InvalidStreamKey as exc:
            exchange.json(404, {"error": str(exc)})
            return
        found = await asyncio.to_thread(library.recordings, key)
        live = self.manager.live() if self.manager is not None else set()
        exchange.json(200, {"key": str(key),
                            "recordings": [self._document(r, live) for r in found]})

    @staticmethod
    def _document(recording: Recording, live: set[str]) -> dict[str, Any]:
        at = f"/recordings/{recording.key}/{recording.base}"
        seconds = max(math.ceil(recording.duration), 1)
        window = f"start={rfc3339(recording.start)}&duration={seconds}"
        return {"name": recording.name, "start": rfc3339(recording.start),
                "duration": round(recording.duration, 3), "size": recording.size,
                "format": "flv", "live": recording.storage_name in live,
                "hls": "recorded" if recording.hls else "generated",
                "url": f"{at}.flv", "hls_url": f"{at}/index.m3u8",
                "playback_url": f"/playback/{recording.key}.flv?{window}"}

    # -- media ----------------------------------------------------------------------------------

    async def _admit(self, exchange: Exchange, params: dict[str, str]) -> StreamKey | None:
        """The key, once the client may play it (else the refusal is sent: None)."""
        if refuse_while_draining(exchange, self.admission):
            return None
        if self.library is None:
            exchange.respond(404, "recording is off on this node\n")
            return None
        return await authorize_play(exchange, params, "playback")

    def _path(self, exchange: Exchange, name: str) -> Path | None:
        """``name`` under the recordings root; None (404 sent) when it may not be served."""
        assert self.storage is not None
        try:
            return self.storage.path_for(name)
        except InvalidStreamKey:
            exchange.respond(404, "not found\n")
            return None

    async def flv_file(self, exchange: Exchange, params: dict[str, str]) -> None:
        """``/recordings/{app}/{stream}/{base}.flv``"""
        key = await self._admit(exchange, params)
        if key is None:
            return
        name = f"{params['base']}.flv"
        if name_start(name) is None:
            exchange.respond(404, "no such recording\n")
            return
        path = self._path(exchange, f"{key.app}/{key.stream}/{name}")
        if path is not None:
            await self._send_file(exchange, path, CONTENT_TYPES[".flv"])

    async def vod(self, exchange: Exchange, params: dict[str, str]) -> None:
        """``/recordings/{app}/{stream}/{base}/{name}``: a recorded HLS VOD's playlist and
        files, or one made from the FLV."""
        key = await self._admit(exchange, params)
        if key is None:
            return
        base, name = params["base"], params["name"]
        if name_start(f"{base}.flv") is None:
            exchange.respond(404, "no such recording\n")
            return
        folder_name = f"{key.app}/{key.stream}/{base}"
        folder = self._path(exchange, folder_name)
        if folder is None:
            return
        query = exchange.request.query
        suffix = f"?{quote_query(dict(query))}" if query else ""
        if await asyncio.to_thread((folder / "index.m3u8").is_file):
            await self._recorded_vod(exchange, folder_name, name, suffix)
        else:
            await self._generated_vod(exchange, key, base, name, suffix)

    async def _recorded_vod(self, exchange: Exchange, folder_name: str, name: str,
                            suffix: str) -> None:
        content_type = CONTENT_TYPES.get(Path(name).suffix)
        if content_type is None or content_type == CONTENT_TYPES[".flv"]:
            exchange.respond(404, "not found\n")
            return
        path = self._path(exchange, f"{folder_name}/{name}")
        if path is None:
            return
        if name != "index.m3u8":
            await self._send_file(exchange, path, content_type)
            return
        try:
            playlist = await asyncio.to_thread(path.read_text)
        except (OSError, UnicodeDecodeError):
            exchange.respond(404, "no playlist\n")
            return
        exchange.respond(200, with_query(playlist, suffix), PLAYLIST)

    async def _generated_vod(self, exchange: Exchange, key: StreamKey, base: str, name: str,
                             suffix: str) -> None:
        assert self.library is not None
        library = self.library
        recording = await asyncio.to_thread(library.recording, key, base)
        if recording is None:
            exchange.respond(404, "no such recording\n")
            return
        try:
            index = await asyncio.to_thread(library.index, recording)
        except (OSError, ProtocolError) as exc:
            log.warning("recording unreadable path=%s error=%s", recording.path, exc)
            exchange.respond(404, "recording unreadable\n")
            return
        live = self.manager is not None and recording.storage_name in self.manager.live()
        segments = vod_segments(index, self.segment_seconds, complete=not live)
        if not segments:
            exchange.respond(404, "no HLS for this recording (no video, or no whole segment "
                                  "yet)\n")
            return
        if name == "index.m3u8":
            exchange.respond(200, vod_playlist(segments, self.segment_seconds, ended=not live,
                                               suffix=suffix), PLAYLIST)
            return
        sequence = segment_sequence(name)
        if sequence is None or sequence >= len(segments):
            exchange.respond(404, "no such segment\n")
            return
        try:
            data = await asyncio.to_thread(remux_segment, recording.path, index,
                                           segments[sequence])
        except (OSError, ProtocolError) as exc:
            log.warning("recording segment unreadable path=%s sequence=%d error=%s",
                        recording.path, sequence, exc)
            exchange.respond(404, "segment unreadable\n")
            return
        exchange.respond(200, data, CONTENT_TYPES[".ts"],
                         {} if live else {"Cache-Control": "public, max-age=3600"})

    async def playback(self, exchange: Exchange, params: dict[str, str]) -> None:
        """``/playback/{app}/{stream}.flv?start=…&duration=…``"""
        key = await self._admit(exchange, params)
        if key is None:
            return
        try:
            start, duration = parse_window(exchange.request.query)
        except ValueError as exc:
            exchange.respond(400, f"{exc}\n")
            return
        assert self.library is not None
        cut = await asyncio.to_thread(self._plan, self.library, key, start, duration)
        if cut is None:
            exchange.respond(404, f"no recording of {key} covers {rfc3339(start)} + "
                                  f"{duration:g} s\n")
            return
        exchange.keep_alive = False  # the length is known once the cut is sent
        stamp = datetime.fromtimestamp(cut.start, UTC).strftime("%Y%m%dT%H%M%SZ")
        exchange.writer.write(_head(200, {
            "Content-Type": CONTENT_TYPES[".flv"], "Cache-Control": "no-cache",
            "Content-Disposition": f'inline; filename="{key.stream}-{stamp}.flv"'},
            keep_alive=False))
        if exchange.head_only:
            return
        reader = CutReader(cut, CHUNK)
        sent = 0
        try:
            while chunk := await asyncio.to_thread(reader.read):
                exchange.writer.write(chunk)
                sent += len(chunk)
                await self._drain(exchange)
        finally:
            await asyncio.to_thread(reader.close)
            log.info("playback served stream=%s peer=%s start=%s seconds=%.3f bytes=%d",
                     key, exchange.peer, rfc3339(cut.start), cut.duration, sent)

    @staticmethod
    def _plan(library: Library, key: StreamKey, start: float,
              duration: float) -> Cut | None:
        """The cut for the window (blocking: recordings listed and indexed)."""
        sources = []
        for recording in library.recordings(key):
            if recording.start < start + duration and recording.end + 1.0 > start:
                try:
                    sources.append(Source(recording.path, recording.start,
                                          library.index(recording)))
                except (OSError, ProtocolError) as exc:
                    log.warning("recording unreadable path=%s error=%s", recording.path, exc)
        return plan_cut(sources, start, duration)

    # -- files ----------------------------------------------------------------------------------

    async def _send_file(self, exchange: Exchange, path: Path, content_type: str) -> None:
        """A file, whole or the one range asked for (``If-Range`` honoured)."""
        try:
            handle, info = await asyncio.to_thread(_open_regular, path)
        except OSError:
            exchange.respond(404, "not found\n")
            return
        try:
            size = info.st_size
            headers = {"Content-Type": content_type, "Accept-Ranges": "bytes",
                       "ETag": f'"{info.st_ino:x}-{size:x}-{info.st_mtime_ns:x}"',
                       "Last-Modified": formatdate(info.st_mtime, usegmt=True),
                       "Cache-Control": "no-cache"}
            asked = exchange.request.headers.get("range")
            if_range = exchange.request.headers.get("if-range")
            if if_range is not None and if_range not in (headers["ETag"],
                                                         headers["Last-Modified"]):
                asked = None  # the file changed since the client's first part: send it whole
            try:
                wanted = parse_range(asked, size)
            except RangeNotSatisfiable as exc:
                body = f"{exc}\n".encode()
                exchange.writer.write(_head(416, {
                    "Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body)),
                    "Content-Range": f"bytes */{size}"}, keep_alive=exchange.keep_alive)
                    + (b"" if exchange.head_only else body))
                return
            status = 200 if wanted is None else 206
            wanted = wanted or ByteRange(0, size)
            headers["Content-Length"] = str(wanted.length)
            if status == 206:
                headers["Content-Range"] = wanted.content_range(size)
            exchange.writer.write(_head(status, headers, keep_alive=exchange.keep_alive))
            if not exchange.head_only:
                await self._copy(exchange, handle.fileno(), wanted, path)
        finally:
            await asyncio.to_thread(handle.close)

    async def _copy(self, exchange: Exchange, fd: int, wanted: ByteRange, path: Path) -> None:
        position = wanted.start
        while position < wanted.stop:
            data = await asyncio.to_thread(os.pread, fd, min(CHUNK, wanted.stop - position),
                                           position)
            if not data:
                exchange.keep_alive = False
                log.warning("recording shorter than announced path=%s at=%d", path, position)
                raise OSError(f"{path} ended at byte {position}")
            exchange.writer.write(data)
            position += len(data)
            await self._drain(exchange)

    async def _drain(self, exchange: Exchange) -> None:
        """Wait until the client took what was written (cut after ``stall_timeout``)."""
        async with asyncio.timeout(self.settings.stall_timeout):
            await exchange.writer.drain()
