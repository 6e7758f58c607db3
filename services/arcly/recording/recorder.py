"""Recording streams as FLV (and optionally HLS VOD) through the ``Storage`` extension point.

A recorder is an ordinary subscriber. Blocking storage calls run on one worker thread per
recording, in order; the event loop only queues them. When storage falls behind by more than
``max_pending_bytes``, the recorder drops whole GOPs (and says so) instead of stalling the
stream or growing memory. A recording is finalized — FLV duration and size patched, HLS
playlist closed, fsync — whenever its stream ends: publisher gone, reaped, or node shutdown.
FLV is append-only, so a crash leaves a file readable up to the last complete tag. The
manager also enforces retention (``max_age``, ``max_bytes``; see ``retention``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arcly.engine import (
    ArclyError,
    CloseReason,
    EngineConfig,
    Frame,
    FrameKind,
    InvalidStreamKey,
    NullObserver,
    PublishRegistry,
    ShutdownToken,
    Storage,
    StorageWriter,
    StreamKey,
    StreamNotFound,
    Subscription,
)
from arcly.hls.cmaf import CmafSegmenter
from arcly.hls.playlist import render_playlist
from arcly.hls.segmenter import Part, Segment, Segmenter
from arcly.media import amf0, flv

from . import retention
from .storage import FilesystemStorage

log = logging.getLogger("arcly.recording")
_F64 = struct.Struct(">d")
_NAMED_KEPT = 4096  # recording names remembered against reuse (see ``_unused``)


@dataclass(frozen=True, slots=True)
class RecordSettings:
    hls: bool = False
    fmp4: bool = False  # HLS VOD as fMP4 (init + .m4s) instead of MPEG-TS
    max_pending_bytes: int = 32 * 1024 * 1024
    finalize_timeout: float = 15.0
    segment_seconds: float = EngineConfig().segment_target  # HLS VOD: the kernel's grouping
    max_age: float | None = None    # seconds: older recordings are deleted (None: kept)
    max_bytes: int | None = None    # all recordings together: the oldest go first (None: no cap)
    sweep_interval: float = 60.0    # retention sweeps this often (and at start, after each end)

    @property
    def retention(self) -> bool:
        return self.max_age is not None or self.max_bytes is not None


def _metadata_tag(publisher: dict[str, Any], start: float) -> tuple[bytes, int, int]:
    """Our onMetaData tag body: duration and filesize first (patched at the end), the wall
    clock time of timestamp 0 (``arclyStart``, Unix seconds: what playback windows are cut by),
    then the publisher's own fields. Returns the body and the offsets of the two numbers."""
    fields = amf0.EcmaArray(duration=0.0, filesize=0.0, arclyStart=start)
    for name, value in publisher.items():
        if name not in fields:
            fields[name] = value
    body = amf0.encode("onMetaData", fields)
    duration_at = body.index(b"\x00\x08duration\x00") + 11
    filesize_at = body.index(b"\x00\x08filesize\x00") + 11
    return body, duration_at, filesize_at


def recording_base(key: StreamKey, session: int, now: float | None = None) -> str:
    """``{app}/{stream}/{UTC stamp}-{session}``: the name of a recording's FLV (``.flv``)
    and HLS folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{key.app}/{key.stream}/{stamp}-{session}"


class Recorder:
    """Records one publish session of one key."""

    def __init__(self, storage: Storage, sub: Subscription, settings: RecordSettings,
                 base: str | None = None) -> None:
        self.storage = storage
        self.sub = sub
        self.settings = settings
        key = sub.key
        self.base = base or recording_base(key, sub.stream.token)
        self.pending = 0
        self.written = 0
        self.dropped_frames = 0
        self.dropped_segments = 0
        self.failed: BaseException | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"record-{key.stream}")
        self._loop = asyncio.get_running_loop()
        self._last: asyncio.Future[None] | None = None
        self._flv: _File | None = None
        self._offsets = (0, 0)
        self._base_ts: int | None = None
        self._last_ts = 0
        self._last_delta = 0
        self._dropping = False
        self._segmenter: Segmenter | CmafSegmenter | None = None
        if settings.hls:
            self._segmenter = CmafSegmenter() if settings.fmp4 else Segmenter()
        self._inits_written: set[str] = set()
        self._segments: list[Segment] = []
        self._hls_gap = False

    # -- the worker thread ----------------------------------------------------------------------

    def _submit(self, size: int, fn: Callable[..., None], *args: Any) -> None:
        self.pending += size
        future = self._loop.run_in_executor(self._executor, fn, *args)

        def done(fut: asyncio.Future[None]) -> None:
            self.pending -= size
            if not fut.cancelled() and fut.exception() is not None and self.failed is None:
                self.failed = fut.exception()
                log.error("recording write failed path=%s error=%s", self.base, self.failed)

        future.add_done_callback(done)
        self._last = future

    # -- frames ---------------------------------------------------------------------------------

    async def run(self) -> None:
        key = self.sub.key
        log.info("recording start stream=%s path=%s.flv hls=%s", key, self.base,
                 self.settings.hls)
        reason = "stream ended"
        try:
            while batch := await self.sub.next_batch():
                for frame in batch:
                    self._frame(frame)
            reason = self.sub.close_reason
        finally:
            self.sub.close(reason)
            await self._finalize()

    def _frame(self, frame: Frame) -> None:
        if self._flv is None:
            self._open(frame)
            if frame.kind is FrameKind.DATA and frame.config:
                return  # merged into our own metadata tag
        if self._dropping:
            if frame.kind is FrameKind.VIDEO and frame.keyframe and \
                    self.pending < self.settings.max_pending_bytes // 2:
                self._dropping = False
                log.info("recording resumed stream=%s dropped_frames=%d", self.sub.key,
                         self.dropped_frames)
            elif not frame.config:
                self.dropped_frames += 1
                return
        elif self.pending > self.settings.max_pending_bytes and not frame.config:
            self._dropping = True
            self.dropped_frames += 1
            log.warning("recording behind storage; dropping until the next keyframe "
                        "stream=%s pending_bytes=%d", self.sub.key, self.pending)
            return
        if self._base_ts is None:
            self._base_ts = frame.timestamp
        ts = (frame.timestamp - self._base_ts) & 0xFFFFFFFF
        if ts > self._last_ts and frame.kind is FrameKind.VIDEO:
            self._last_delta = ts - self._last_ts
        self._last_ts = max(self._last_ts, ts)
        header = flv.tag_header(int(frame.kind), ts, len(frame.payload))
        trailer = struct.pack(">I", 11 + len(frame.payload))
        assert self._flv is not None
        self._submit(len(frame.payload) + 15, _write_all, self._flv,
                     (header, frame.payload, trailer))
        self.written += len(frame.payload) + 15
        if self._segmenter is not None:
            self._segments_done(self._segmenter.feed(frame))

    def _open(self, first: Frame) -> None:
        publisher: dict[str, Any] = {}
        if first.kind is FrameKind.DATA and first.config:
            values = amf0.decode(first.payload)
            if len(values) > 1 and isinstance(values[1], dict):
                publisher = values[1]
        body, duration_at, filesize_at = _metadata_tag(publisher, time.time())
        head = flv.file_header() + flv.encode_tag(flv.TAG_SCRIPT, 0, body)
        start = len(flv.file_header()) + 11
        self._offsets = (start + duration_at, start + filesize_at)
        self._flv = _File()
        self._submit(0, self._flv.open, self.storage, f"{self.base}.flv")
        self._submit(len(head), _write_all, self._flv, (head,))
        self.written += len(head)

    def _segments_done(self, done: Segment | list[Part | Segment] | None) -> None:
        for item in done if isinstance(done, list) else [done] if done is not None else []:
            if isinstance(item, Segment):
                self._write_segment(item)

    def _write_segment(self, segment: Segment) -> None:
        if self.pending > self.settings.max_pending_bytes:
            self.dropped_segments += 1
            self._hls_gap = True
            log.warning("recording behind storage; HLS segment dropped stream=%s sequence=%d",
                        self.sub.key, segment.sequence)
            return
        if self._hls_gap:  # mark the hole for players
            segment = dataclasses.replace(segment, discontinuity=segment.discontinuity + 1)
            self._hls_gap = False
        if segment.init and segment.init not in self._inits_written:
            init = self._segmenter.init_segment(segment.init) \
                if isinstance(self._segmenter, CmafSegmenter) else None
            if init is not None:
                self._inits_written.add(segment.init)
                self._submit(len(init), _write_file, self.storage,
                             f"{self.base}/{segment.init}", init, False)
        # The playlist needs the segment's name and duration, not its media (a recording of
        # hours would hold all of it).
        self._segments.append(dataclasses.replace(segment, data=b"", parts=()))
        name = f"{self.base}/{segment.uri}"
        self._submit(len(segment.data), _write_file, self.storage, name, segment.data, False)
        playlist = render_playlist(self._segments, target=self.settings.segment_seconds,
                                   ended=False, playlist_type="EVENT")
        self._submit(len(playlist), _write_file, self.storage, f"{self.base}/index.m3u8",
                     playlist.encode(), False)

    async def _finalize(self) -> None:
        try:
            if self._segmenter is not None:
                self._segments_done(self._segmenter.finish())
                if self._segments:
                    playlist = render_playlist(self._segments,
                                               target=self.settings.segment_seconds,
                                               ended=True, playlist_type="VOD")
                    self._submit(len(playlist), _write_file, self.storage,
                                 f"{self.base}/index.m3u8", playlist.encode(), True)
            duration = (self._last_ts + self._last_delta) / 1000
            if self._flv is not None:
                self._submit(0, _finish_flv, self._flv, self._offsets, duration, self.written)
            if self._last is not None:
                await asyncio.wait_for(asyncio.shield(self._last), self.settings.finalize_timeout)
            log.info("recording finalized stream=%s path=%s.flv duration=%.3f bytes=%d "
                     "dropped_frames=%d dropped_segments=%d", self.sub.key, self.base, duration,
                     self.written, self.dropped_frames, self.dropped_segments)
        except (TimeoutError, OSError, ArclyError) as exc:
            log.error("recording finalization failed stream=%s path=%s error=%r", self.sub.key,
                      self.base, exc)
        finally:
            self._executor.shutdown(wait=False)


class _File:
    """A storage writer opened on the worker thread (opening a file is blocking I/O too)."""

    __slots__ = ("writer",)

    def __init__(self) -> None:
        self.writer: StorageWriter | None = None

    def open(self, storage: Storage, name: str) -> None:
        self.writer = storage.open(name)

    def get(self) -> StorageWriter:
        if self.writer is None:
            raise OSError("recording file is not open")
        return self.writer


def _write_all(file: _File, parts: tuple[bytes, ...]) -> None:
    writer = file.get()
    for part in parts:
        writer.write(part)


def _write_file(storage: Storage, name: str, data: bytes, sync: bool) -> None:
    writer = storage.open(name)
    try:
        writer.write(data)
        if sync:
            writer.sync()
    finally:
        writer.close()


def _finish_flv(file: _File, offsets: tuple[int, int], duration: float, size: int) -> None:
    writer = file.get()
    writer.patch(offsets[0], _F64.pack(duration))
    writer.patch(offsets[1], _F64.pack(float(size)))
    writer.sync()
    writer.close()


class RecordingManager(NullObserver):
    """Starts a recorder for every publish (an ``Observer``) and, as a ``ProtocolHandler``,
    makes sure every recording is finalized before the node exits, and enforces retention
    (``max_age``, ``max_bytes``) while it runs."""

    name = "recorder"

    def __init__(self, storage: Storage, settings: RecordSettings | None = None) -> None:
        self.registry: PublishRegistry | None = None  # the engine, once ``run`` starts
        self.storage = storage
        self.settings = settings or RecordSettings()
        self.recorders: dict[StreamKey, Recorder] = {}
        self._named: dict[str, None] = {}  # names given out lately, oldest first
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweep_wanted = asyncio.Event()

    async def _unused(self, base: str) -> str:
        """``base``, or ``base-2``, ``-3``... when a recording already has that name: a
        publisher back from a fallback keeps its stream's session, and may come back within
        the second; an in-memory registry's sessions start again at 1 after a restart.
        Opening a name replaces it (``Storage``), and a recording is never overwritten."""
        name, count = base, 1
        while name in self._named or await asyncio.to_thread(self._stored, name):
            count += 1
            name = f"{base}-{count}"
        self._named[name] = None
        if len(self._named) > _NAMED_KEPT:  # the oldest names are in storage by now
            del self._named[next(iter(self._named))]
        return name

    def _stored(self, name: str) -> bool:
        storage = self.storage
        if not isinstance(storage, FilesystemStorage):  # other storages: names given out here
            return False
        try:
            return storage.path_for(f"{name}.flv").exists() or storage.path_for(name).exists()
        except InvalidStreamKey:
            return False

    def live(self) -> set[str]:
        """The names (``{app}/{stream}/{base}``) of the recordings being written."""
        return {recorder.base for recorder in self.recorders.values()}

    def on_publish_start(self, key: StreamKey, protocol: str, peer: str) -> None:
        task = asyncio.get_running_loop().create_task(self._record(key), name=f"record-{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, key: StreamKey) -> None:
        if self.registry is None:
            log.error("recorder not running: not recording stream=%s", key)
            return
        try:
            # A recording is of one publish: it ends when a fallback replaces the publisher.
            sub = await self.registry.subscribe(key, protocol="record", peer="recorder",
                                              viewer=False, follows_fallback=False)
        except StreamNotFound:
            return
        base = await self._unused(recording_base(key, sub.stream.token))
        recorder = Recorder(self.storage, sub, self.settings, base)
        self.recorders[key] = recorder
        try:
            await recorder.run()
        finally:
            if self.recorders.get(key) is recorder:
                del self.recorders[key]
            self._sweep_wanted.set()

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
        self.registry = registry
        sweeper = None
        if isinstance(self.storage, FilesystemStorage):  # retention may come with a reload
            sweeper = asyncio.create_task(self._sweep_forever(self.storage.root),
                                          name="record-retention")
        elif self.settings.retention:
            log.warning("recording retention needs filesystem storage; not enforced")
        try:
            await shutdown.wait()
        finally:
            if sweeper is not None:
                sweeper.cancel()
                await asyncio.gather(sweeper, return_exceptions=True)
        # Streams end as the listeners wind down; end any that are left, then let every
        # recording finalize.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        for key in list(self.recorders):
            await registry.end_publish(key, CloseReason.SHUTDOWN)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.settings.finalize_timeout)

    async def _sweep_forever(self, root: Path) -> None:
        """Sweep now, then every ``sweep_interval`` seconds and after each finalization."""
        while True:
            self._sweep_wanted.clear()
            try:
                if self.settings.retention:  # read each time: a config reload may change it
                    await self.sweep(root)
            except OSError as exc:
                log.error("recording retention sweep failed root=%s error=%s", root, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.sweep_interval):
                    await self._sweep_wanted.wait()

    async def sweep(self, root: Path) -> list[retention.Deletion]:
        """Delete what retention says must go (filesystem work on a worker thread); return
        what was deleted."""
        settings = self.settings
        stored = await asyncio.to_thread(retention.inventory, root)
        # Who is live is read after the inventory: a recording that started meanwhile is
        # either not in the inventory or known to be live.
        doomed = retention.plan_deletions(stored, now=time.time(), max_age=settings.max_age,
                                          max_bytes=settings.max_bytes, live=self.live())
        deleted = []
        for deletion in doomed:
            recording = deletion.recording
            try:
                await asyncio.to_thread(retention.delete, root, recording)
            except OSError as exc:
                log.error("recording deletion failed path=%s.flv error=%s", recording.name, exc)
                continue
            deleted.append(deletion)
            log.info("recording deleted path=%s.flv reason=%s age=%.0fs bytes=%d",
                     recording.name, deletion.reason, time.time() - recording.modified,
                     recording.size)
        return deleted
