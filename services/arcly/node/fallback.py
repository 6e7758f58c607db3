"""The fallback sources behind ``[apps.NAME] fallback`` / ``fallback_stream`` (see
``arcly.engine.fallback`` for what the kernel does with them).

- ``FileLoop``: an FLV file (a slate, a "we'll be right back" loop), read once (on a worker
  thread) and played in real time, over and over. Made with e.g. ``ffmpeg -f lavfi -i
  smptebars=size=1280x720:rate=30 -f lavfi -i anullsrc=r=48000 -t 10 -c:v libx264 -g 60 -bf 0
  -c:a aac slate.flv`` (no B-frames: WebRTC viewers cannot take them).
- ``StreamFollower``: another live stream of this node (``app/stream``), followed while it is
  live and waited for while it is not.

``AppFallbacks`` is the kernel's ``FallbackProvider``: it reads the running config at each
call, so a reload changes fallbacks for the next publisher that leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from arcly.engine import (
    ArclyError,
    Frame,
    FrameKind,
    MediaSource,
    ProtocolError,
    PublishRegistry,
    StreamKey,
    StreamNotFound,
    Subscription,
)
from arcly.media import flv

from .config import NodeConfig

log = logging.getLogger("arcly.fallback")
MAX_FILE_BYTES = 256 * 1024 * 1024  # a slate is small; the whole file is kept in memory
_RETRY = 0.5  # seconds between looks for a followed stream that is not live


def read_flv(path: str) -> list[Frame]:
    """The frames of an FLV file (config and media), checked: it must start a decoder (a
    video keyframe, or audio only). Blocking: call it on a worker thread."""
    size = Path(path).stat().st_size
    if size > MAX_FILE_BYTES:
        raise ProtocolError(f"fallback {path}: {size} bytes is over the "
                            f"{MAX_FILE_BYTES} byte limit for a looped file")
    data = Path(path).read_bytes()
    tags, _ = flv.parse_tags(data, flv.parse_header(data))
    frames = [flv.make_frame(FrameKind(tag.tag_type), tag.timestamp, tag.body) for tag in tags]
    media = [f for f in frames if not f.config and f.kind is not FrameKind.DATA]
    if not media:
        raise ProtocolError(f"fallback {path}: no audio or video frames")
    if any(f.kind is FrameKind.VIDEO for f in media) and not any(
            f.keyframe for f in media if f.kind is FrameKind.VIDEO):
        raise ProtocolError(f"fallback {path}: no video keyframe")
    return frames


class FileLoop:
    """Plays an FLV file in real time, looping: configuration once, then the media again and
    again (the kernel rebases each loop's timestamps). ``load`` gives the file's frames (read
    off the event loop, cached by the provider); a file that cannot be used fails the source."""

    def __init__(self, path: str, load: Callable[[], Awaitable[list[Frame]]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.description = f"file:{Path(path).name}"
        self._load = load
        self._clock = clock
        self._config: list[Frame] = []
        self._media: list[Frame] = []
        self._index = 0
        self._sent_config = -1  # -1: not loaded yet
        self._first_ts = self._last_ts = 0
        self._loop_start = 0.0

    async def _start(self) -> None:
        frames = await self._load()
        # Sequence headers, not the file's onMetaData (its duration would tell players the
        # live stream is a 10 s file), nor its other data tags.
        self._config = [f for f in frames if f.config and f.kind is not FrameKind.DATA]
        self._media = [f for f in frames if not f.config and f.kind is not FrameKind.DATA]
        self._first_ts = self._last_ts = self._media[0].timestamp
        self._loop_start = self._clock()
        self._sent_config = 0

    async def next_frame(self) -> Frame | None:
        if self._sent_config < 0:
            await self._start()
        if self._sent_config < len(self._config):
            self._sent_config += 1
            return self._config[self._sent_config - 1]
        if self._index >= len(self._media):  # loop: start again one frame step later
            self._index = 0
            step = self._media[1].timestamp - self._first_ts if len(self._media) > 1 else 33
            self._loop_start += (self._last_ts - self._first_ts + max(step, 1)) / 1000
        frame = self._media[self._index]
        self._index += 1
        self._last_ts = frame.timestamp
        due = self._loop_start + (frame.timestamp - self._first_ts) / 1000
        delay = due - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -5:  # far behind (a stalled loop): start the clock again from here
            self._loop_start -= delay
        return frame


class StreamFollower:
    """Frames of another live stream on this node; while it is not live, nothing (and a new
    look every half second). Its frames are copied by the kernel's splicer (new timestamps),
    its encodings are not shared."""

    def __init__(self, registry: PublishRegistry, key: StreamKey) -> None:
        self.description = f"stream:{key}"
        self.registry = registry
        self.key = key
        self._sub: Subscription | None = None
        self._batch: list[Frame] = []

    async def next_frame(self) -> Frame | None:
        while not self._batch:
            if self._sub is None:
                try:
                    self._sub = await self.registry.subscribe(
                        self.key, protocol="fallback", peer="fallback", viewer=False)
                except (StreamNotFound, ArclyError):
                    await asyncio.sleep(_RETRY)
                    continue
            self._batch = await self._sub.next_batch()
            if not self._batch:  # that stream ended: wait for its next publish
                self._sub.close("followed stream ended")
                self._sub = None
        return self._batch.pop(0)

    async def aclose(self) -> None:
        if self._sub is not None:
            self._sub.close("fallback over")
            self._sub = None


class AppFallbacks:
    """The node's ``FallbackProvider``: ``[apps.NAME]`` of the running config."""

    def __init__(self, config: Callable[[], NodeConfig]) -> None:
        self.config = config
        self.registry: PublishRegistry | None = None  # the engine, once built
        self._files: dict[str, tuple[float, list[Frame]]] = {}  # path -> (mtime, frames)

    def fallback_for(self, key: StreamKey, *, on_demand: bool) -> MediaSource | None:
        settings = self.config().app(key.app)
        if on_demand and not settings.on_demand_fallback:
            return None
        if settings.fallback_stream is not None and self.registry is not None:
            if settings.fallback_stream == key:
                return None
            return StreamFollower(self.registry, settings.fallback_stream)
        if settings.fallback is not None:
            path = settings.fallback
            return FileLoop(path, lambda: asyncio.to_thread(self._frames, path))
        return None

    def _frames(self, path: str) -> list[Frame]:
        """The file's frames, read again when it changed (on a worker thread). An unusable
        file raises: the fallback fails, the log says why, the stream ends."""
        try:
            mtime = Path(path).stat().st_mtime
            cached = self._files.get(path)
            if cached is None or cached[0] != mtime:
                self._files[path] = (mtime, read_flv(path))
            return self._files[path][1]
        except (OSError, ValueError, ProtocolError) as exc:
            log.error("fallback file unusable path=%s error=%s", path, exc)
            raise ProtocolError(f"fallback file {path}: {exc}") from exc
