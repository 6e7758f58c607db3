"""A live stream: one publisher, a GOP cache and the fan-out to its subscribers.

Fan-out is single-writer and allocation-light: ``publish_frame`` appends a reference to the
same ``Frame`` to each subscriber's pending list and wakes it if it sleeps. It never awaits and
never copies payload bytes. A subscriber whose pending frames exceed its cap drops them and
skips to the next keyframe; one that keeps falling behind is disconnected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from .config import EngineConfig
from .frame import Frame, FrameKind
from .gop import GopCache
from .key import StreamKey
from .shutdown import ShutdownToken
from .timeline import Timeline

if TYPE_CHECKING:
    from .extension import Observer

Clock = Callable[[], float]


class Stream:
    """Everything the kernel knows about one live key."""

    __slots__ = (
        "_fanout",
        "bytes_in",
        "bytes_out",
        "clock",
        "config",
        "end_reason",
        "ended",
        "frames_in",
        "frames_out",
        "gop",
        "key",
        "last_frame_at",
        "observer",
        "peer",
        "protocol",
        "started_at",
        "subscribers",
        "timeline",
        "token",
    )

    def __init__(self, key: StreamKey, *, protocol: str, peer: str, token: int,
                 config: EngineConfig, observer: Observer, clock: Clock,
                 timeline: Timeline) -> None:
        self.key = key
        self.protocol = protocol
        self.peer = peer
        self.token = token
        self.config = config
        self.observer = observer
        self.clock = clock
        self.gop = GopCache(config.gop_max_frames, config.gop_max_bytes)
        self.timeline = timeline
        self.subscribers: set[Subscription] = set()
        # Copy-on-write snapshot of ``subscribers``: rebuilt when a viewer joins or leaves (rare),
        # iterated per frame (often) — so a viewer cut mid-fan-out cannot disturb the loop.
        self._fanout: tuple[Subscription, ...] = ()
        self.started_at = clock()
        self.last_frame_at = self.started_at
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_out = 0  # handed to subscribers (summed per batch, not per frame)
        self.bytes_out = 0
        self.ended = ShutdownToken()
        self.end_reason = ""

    def publish(self, frame: Frame) -> None:
        self.last_frame_at = self.clock()
        self.frames_in += 1
        self.bytes_in += len(frame.payload)
        if frame.mark is None:  # relayed frames arrive already stamped by their origin
            mark = self.timeline.mark(frame)
            if mark is not None:
                # Stamped once, before any viewer can see the frame; immutable from here on.
                object.__setattr__(frame, "mark", mark)
        self.gop.add(frame)
        for sub in self._fanout:
            sub.push(frame)

    def add_subscriber(self, sub: Subscription) -> None:
        self.subscribers.add(sub)
        self._fanout = tuple(self.subscribers)

    def remove_subscriber(self, sub: Subscription) -> None:
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            self._fanout = tuple(self.subscribers)

    def end(self, reason: str) -> None:
        if self.ended.cancelled:
            return
        self.end_reason = reason
        self.ended.cancel()
        for sub in list(self.subscribers):
            sub.finish(f"stream ended: {reason}")


class PublishHandle:
    """The publisher's side of a stream. ``publish_frame`` never blocks and never awaits."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    @property
    def key(self) -> StreamKey:
        return self._stream.key

    @property
    def token(self) -> int:
        """The fencing token this publish holds for its key."""
        return self._stream.token

    @property
    def ended(self) -> ShutdownToken:
        """Cancelled when the publish ends (publisher left, reaped, kicked, shutdown)."""
        return self._stream.ended

    @property
    def end_reason(self) -> str:
        return self._stream.end_reason

    @property
    def last_frame_at(self) -> float:
        return self._stream.last_frame_at

    def publish_frame(self, frame: Frame) -> bool:
        """Fan ``frame`` out to every subscriber. Returns False once the publish has ended."""
        stream = self._stream
        if stream.ended.cancelled:
            return False
        stream.publish(frame)
        return True


class Subscription:
    """One viewer's (or recorder's, or relay's) view of a stream.

    Iterate with ``await next_batch()``: it returns every frame pending since the last call (the
    first batch is the configuration and cached GOP), or an empty list once the stream ended and
    everything was delivered. Always ``close()`` it (or use ``async with``).
    """

    __slots__ = (
        "_burst_bytes",
        "_finished",
        "_first_delivered",
        "_max_bytes",
        "_max_frames",
        "_pending",
        "_pending_bytes",
        "_skipping",
        "_skips",
        "_subscribed_at",
        "_waiter",
        "close_reason",
        "closed",
        "delivered",
        "done",
        "dropped",
        "peer",
        "protocol",
        "stream",
    )

    def __init__(self, stream: Stream, *, protocol: str, peer: str) -> None:
        self.stream = stream
        self.protocol = protocol
        self.peer = peer
        cfg = stream.config
        self._max_frames = cfg.viewer_backlog_frames
        self._max_bytes = cfg.viewer_backlog_bytes
        # The start burst is bounded by the GOP cache caps, so it does not count against ours.
        self._pending: list[Frame] = stream.gop.snapshot()
        self._pending_bytes = 0
        self._burst_bytes = sum(len(f.payload) for f in self._pending)  # for bytes_out only
        self._waiter: asyncio.Future[None] | None = None
        self._skipping = False
        self._skips: list[float] = []
        self._finished = False
        self._subscribed_at = stream.clock()
        self._first_delivered = False
        self.dropped = 0
        self.delivered = 0
        self.closed = False
        self.close_reason = ""
        self.done = ShutdownToken()  # cancelled when delivery ends, whatever the reason

    @property
    def key(self) -> StreamKey:
        return self.stream.key

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def push(self, frame: Frame) -> None:
        if self._finished:
            return
        if self._skipping:
            if not self._resumes_at(frame):
                if not frame.config:
                    self.dropped += 1
                    return
            else:
                self._skipping = False
        self._pending.append(frame)
        self._pending_bytes += len(frame.payload)
        if len(self._pending) > self._max_frames or self._pending_bytes > self._max_bytes:
            self._fall_behind()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _resumes_at(self, frame: Frame) -> bool:
        if frame.kind is FrameKind.VIDEO:
            return frame.keyframe
        return frame.kind is FrameKind.AUDIO and not self.stream.gop.has_video

    def _fall_behind(self) -> None:
        """Drop what is pending (keeping configuration) and wait for the next keyframe."""
        kept = [f for f in self._pending if f.config]
        self.dropped += len(self._pending) - len(kept)
        self._pending = kept
        self._pending_bytes = sum(len(f.payload) for f in kept)
        self._skipping = True
        now = self.stream.clock()
        window = self.stream.config.viewer_skip_window
        self._skips = [t for t in self._skips if now - t < window] + [now]
        self.stream.observer.on_viewer_skipped(self.stream.key, self.protocol, self.peer,
                                               self.dropped)
        if len(self._skips) > self.stream.config.viewer_max_skips:
            self.finish("slow viewer")

    def finish(self, reason: str) -> None:
        """End delivery: pending frames are still handed out, then ``next_batch`` returns []."""
        if self._finished:
            return
        self._finished = True
        self.close_reason = reason
        self.done.cancel()
        if reason == "slow viewer":
            self._pending = []
            self._pending_bytes = 0
        self.stream.remove_subscriber(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def finished(self) -> bool:
        return self._finished

    async def next_batch(self) -> list[Frame]:
        while not self._pending:
            if self._finished or self.closed:
                return []
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        batch = self._pending
        stream = self.stream
        stream.frames_out += len(batch)
        stream.bytes_out += self._pending_bytes + self._burst_bytes
        self._burst_bytes = 0
        self._pending = []
        self._pending_bytes = 0
        self.delivered += len(batch)
        if not self._first_delivered:  # once per subscription, not per frame
            self._first_delivered = True
            stream.observer.on_play_first_frame(stream.key, self.protocol, self.peer,
                                                stream.clock() - self._subscribed_at)
        return batch

    def close(self, reason: str = "") -> None:
        """Leave the stream. Idempotent; reports the play end to the observer once."""
        if self.closed:
            return
        self.finish(reason or "closed")  # the first reason wins: "unpublished" beats "closed"
        self.closed = True
        self.stream.observer.on_play_end(self.stream.key, self.protocol, self.peer,
                                         self.close_reason)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close(self.close_reason or "closed")
