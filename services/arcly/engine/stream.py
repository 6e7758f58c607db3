"""A live stream: one publisher, a GOP cache and the fan-out to its subscribers.

Fan-out is single-writer and allocation-light; it never awaits and never copies payload bytes.
Subscribers come in two kinds:

* pushed (the default): ``publish_frame`` appends a reference to the same ``Frame`` to each
  subscriber's pending list and wakes it if it sleeps;
* paced (``Subscription.pace()``, for writers on a timer such as the viewers of
  ``arcly.protocols.egress``): ``publish_frame`` appends the frame once to the stream's shared
  ``FrameLog`` and each paced subscriber only keeps a cursor into it, so a frame costs the same
  for one paced viewer as for ten thousand, and viewers in step share one span of the log.

Either way a subscriber whose backlog exceeds its cap drops it and skips to the next keyframe;
one that keeps falling behind is disconnected.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from typing import TYPE_CHECKING

from .config import EngineConfig
from .fallback import Splicer
from .frame import Frame, FrameKind
from .gop import GopCache
from .key import StreamKey
from .reasons import CloseReason
from .shutdown import ShutdownToken
from .timeline import Timeline

if TYPE_CHECKING:
    from .extension import Observer

Clock = Callable[[], float]

# The protocol of a stream an edge pulls from its ``Upstream`` (not published on this node).
RELAYED = "upstream"


class FrameLog:
    """The recent frames of a stream, shared by its paced subscribers.

    Frames are numbered from the start of the publish; ``frames[0]`` is number ``base``.
    ``offsets[i]`` is the payload bytes before ``frames[i]`` (the last entry is the total), so
    a subscriber's backlog in bytes is one subtraction. The stream trims frames every paced
    subscriber has passed, and frames past the backlog caps (whoever still needed those fell
    behind and skips to the next keyframe).
    """

    __slots__ = ("base", "frames", "offsets", "trim_at")

    TRIM_EVERY = 64  # frames between trims: bounded slack, amortised cost

    def __init__(self) -> None:
        self.base = 0
        self.frames: list[Frame] = []
        self.offsets: list[int] = [0]
        self.trim_at = self.TRIM_EVERY

    @property
    def end(self) -> int:
        """The number the next frame will get."""
        return self.base + len(self.frames)

    def append(self, frame: Frame) -> None:
        self.frames.append(frame)
        self.offsets.append(self.offsets[-1] + len(frame.payload))

    def span(self, start: int, end: int) -> list[Frame]:
        base = self.base
        return self.frames[start - base:end - base]

    def bytes_from(self, start: int) -> int:
        return self.offsets[-1] - self.offsets[start - self.base]

    def trim(self, upto: int) -> None:
        count = min(upto, self.end) - self.base
        if count > 0:
            del self.frames[:count]
            del self.offsets[:count]
            self.base += count
        self.trim_at = len(self.frames) + self.TRIM_EVERY

    def floor(self, max_frames: int, max_bytes: int) -> int:
        """The oldest frame number within both backlog caps."""
        offsets = self.offsets
        by_bytes = bisect.bisect_left(offsets, offsets[-1] - max_bytes)
        return self.base + max(len(self.frames) - max_frames, by_bytes)


class Stream:
    """Everything the kernel knows about one live key."""

    __slots__ = (
        "_fanout",
        "_paced",
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
        "log",
        "observer",
        "peer",
        "protocol",
        "session",
        "splicer",
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
        self._paced: set[Subscription] = set()
        self.log = FrameLog()
        self.started_at = clock()
        self.last_frame_at = self.started_at
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_out = 0  # handed to subscribers (summed per batch, not per frame)
        self.bytes_out = 0
        self.ended = ShutdownToken()  # the stream is over (every subscriber is finished)
        # The current publish session; a stream with a fallback outlives its publishers.
        self.session = PublishSession()
        self.splicer: Splicer | None = None  # set at the first change of source
        self.end_reason = ""

    @property
    def relayed(self) -> bool:
        """Pulled from an ``Upstream`` (an edge's copy), not published on this node."""
        return self.protocol == RELAYED

    def publish(self, frame: Frame) -> None:
        splicer = self.splicer
        if splicer is None:
            self._fan_out(frame)
            return
        for part in splicer.fit(frame):
            self._fan_out(part)

    def splice(self, *, fallback: bool, on_start: Callable[[], None] | None = None) -> None:
        """A new source (a fallback, or a publisher back from one) feeds this stream from its
        next keyframe on (see ``fallback.Splicer``). ``on_start`` runs when its first frame
        goes out."""
        timeline = self.timeline

        def cut(has_video: bool) -> None:
            timeline.discontinue(has_video=has_video)
            nonlocal on_start
            if on_start is not None:
                started, on_start = on_start, None
                started()

        if self.splicer is None:
            self.splicer = Splicer(cut, last_sent=self._last_sent())
        else:
            self.splicer.retarget(cut)
        self.splicer.cut(rebase_jumps=fallback)

    def _last_sent(self) -> dict[FrameKind, int]:
        """The newest timestamp per kind sent so far (before this stream had a splicer): from
        the GOP cache, and the timeline's last stamped frame."""
        newest: dict[FrameKind, int] = {}
        for frame in self.gop.frames:
            if not frame.config and frame.timestamp > newest.get(frame.kind, -1):
                newest[frame.kind] = frame.timestamp
        last = self.timeline.last_timestamp
        if last is not None:
            newest[FrameKind.DATA] = last
        return newest

    def keep_fallback_viewers(self, reason: str) -> None:
        """The publisher left and a fallback goes on: subscribers that follow a publish, not
        the stream (recorders), finish now."""
        for sub in list(self.subscribers):
            if not sub.follows_fallback:
                sub.finish(f"publish ended: {reason}")

    def _fan_out(self, frame: Frame) -> None:
        self.last_frame_at = self.clock()
        self.frames_in += 1
        self.bytes_in += len(frame.payload)
        if frame.mark is None:  # relayed frames arrive already stamped by their origin
            mark = self.timeline.mark(frame)
            if mark is not None:
                # Stamped once, before any viewer can see the frame; immutable from here on.
                frame.mark = mark
        self.gop.add(frame)
        if self._paced:
            log = self.log
            log.append(frame)
            if len(log.frames) >= log.trim_at:
                self._trim_log()
        for sub in self._fanout:
            sub.push(frame)

    def _trim_log(self) -> None:
        cfg = self.config
        log = self.log
        oldest_needed = min(sub._cursor for sub in self._paced)
        log.trim(max(oldest_needed,
                     log.floor(cfg.viewer_backlog_frames, cfg.viewer_backlog_bytes)))

    def _refresh_fanout(self) -> None:
        self._fanout = tuple(s for s in self.subscribers if s not in self._paced)

    def add_subscriber(self, sub: Subscription) -> None:
        self.subscribers.add(sub)
        self._refresh_fanout()

    def pace(self, sub: Subscription) -> None:
        """Move ``sub`` from pushed to paced delivery (see the module docstring)."""
        if sub in self.subscribers and sub not in self._paced:
            if not self._paced:
                self.log.trim(self.log.end)  # nobody read it: start empty
            self._paced.add(sub)
            self._refresh_fanout()

    def remove_subscriber(self, sub: Subscription) -> None:
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            self._paced.discard(sub)
            self._refresh_fanout()
            if not self._paced:
                self.log.trim(self.log.end)

    def end(self, reason: str) -> None:
        if self.ended.cancelled:
            return
        self.end_reason = reason
        self.session.end(reason)
        self.ended.cancel()
        for sub in list(self.subscribers):
            sub.finish(f"stream ended: {reason}")


class PublishSession:
    """One publisher's hold on a stream: ended when that publish ends, even if the stream goes
    on (a fallback takes over)."""

    __slots__ = ("announced", "ended", "reason")

    def __init__(self, *, announced: bool = True) -> None:
        self.ended = ShutdownToken()
        self.reason = ""
        # The observers heard of this publish (a publisher back from a fallback is announced
        # at its first keyframe): its end is told only if its start was.
        self.announced = announced

    def end(self, reason: str) -> None:
        if not self.ended.cancelled:
            self.reason = reason
            self.ended.cancel()


class PublishHandle:
    """The publisher's side of a stream. ``publish_frame`` never blocks and never awaits."""

    __slots__ = ("_session", "_stream")

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._session = stream.session  # this publish's; the stream may outlive it (fallback)

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
        return self._session.ended

    @property
    def end_reason(self) -> str:
        return self._session.reason

    @property
    def last_frame_at(self) -> float:
        return self._stream.last_frame_at

    def publish_frame(self, frame: Frame) -> bool:
        """Fan ``frame`` out to every subscriber. Returns False once the publish has ended."""
        if self._session.ended.cancelled:
            return False
        self._stream.publish(frame)
        return True


class Subscription:
    """One viewer's (or recorder's, or relay's) view of a stream.

    Iterate with ``await next_batch()``: it returns every frame pending since the last call (the
    first batch is the configuration and cached GOP), or an empty list once the stream ended and
    everything was delivered. A writer on a timer calls ``take()`` instead, which never waits,
    and checks ``finished``. Always ``close()`` it (or use ``async with``).
    """

    __slots__ = (
        "_burst_bytes",
        "_cursor",
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
        "follows_fallback",
        "peer",
        "protocol",
        "stream",
        "viewer",
    )

    def __init__(self, stream: Stream, *, protocol: str, peer: str,
                 viewer: bool = True, follows_fallback: bool = True) -> None:
        self.stream = stream
        self.protocol = protocol
        self.peer = peer
        self.viewer = viewer  # a person watching, not a segmenter, recorder or relay
        # Stays when a fallback replaces the publisher (False: a recorder, which records
        # publishes, not slates).
        self.follows_fallback = follows_fallback
        cfg = stream.config
        self._max_frames = cfg.viewer_backlog_frames
        self._max_bytes = cfg.viewer_backlog_bytes
        # The start burst is bounded by the GOP cache caps, so it does not count against ours.
        self._pending: list[Frame] = stream.gop.snapshot()
        self._pending_bytes = 0
        self._burst_bytes = sum(len(f.payload) for f in self._pending)  # for bytes_out only
        self._waiter: asyncio.Future[None] | None = None
        self._cursor = -1  # paced: the number of the next log frame due; -1: pushed
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

    @property
    def paced(self) -> bool:
        return self._cursor >= 0

    def pace(self) -> None:
        """Switch to paced delivery: no per-frame push from now on; ``take()`` and
        ``take_span()`` read the stream's shared log. Frames already pending come first."""
        if self._cursor >= 0 or self._finished:
            return
        self.stream.pace(self)
        self._cursor = self.stream.log.end

    def push(self, frame: Frame) -> None:
        if self._finished:
            return
        if self._skipping and not self._passes_skip(frame):
            return
        self._pending.append(frame)
        self._pending_bytes += len(frame.payload)
        if len(self._pending) > self._max_frames or self._pending_bytes > self._max_bytes:
            self._fall_behind()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _passes_skip(self, frame: Frame) -> bool:
        """While skipping to a keyframe: does ``frame`` get through (the keyframe that ends the
        skip, or configuration)? Counts the ones dropped."""
        if self._resumes_at(frame):
            self._skipping = False
            return True
        if frame.config:
            return True
        self.dropped += 1
        return False

    def _resumes_at(self, frame: Frame) -> bool:
        if frame.kind is FrameKind.VIDEO:
            return frame.keyframe
        return frame.kind is FrameKind.AUDIO and not self.stream.gop.has_video

    def _read_log(self) -> None:
        """Paced: move the log frames due into ``_pending``."""
        log = self.stream.log
        start = self._cursor
        end = log.end
        if start >= end:
            return
        if start < log.base:
            # The log was trimmed past us (we were over a backlog cap): skip to a keyframe,
            # with the stream's current configuration in case what we missed changed it.
            self.dropped += log.base - start
            start = self._cursor = log.base
            self._fall_behind()
            if self._finished and self.close_reason == CloseReason.SLOW_VIEWER:
                return
            self._pending.extend(self.stream.gop.configuration())
        frames = log.span(start, end)
        self._cursor = end
        if not self._skipping:
            self._pending.extend(frames)
            self._pending_bytes += log.bytes_from(start)
            return
        for frame in frames:
            if not self._skipping or self._passes_skip(frame):
                self._pending.append(frame)
                self._pending_bytes += len(frame.payload)

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
            self.finish(CloseReason.SLOW_VIEWER)

    def finish(self, reason: str) -> None:
        """End delivery: pending frames are still handed out, then ``next_batch`` returns []."""
        if self._finished:
            return
        self._finished = True
        self.close_reason = reason
        self.done.cancel()
        if self._cursor >= 0:
            if reason != CloseReason.SLOW_VIEWER:
                self._read_log()  # what was published so far is still delivered
            self._cursor = -1
        if reason == CloseReason.SLOW_VIEWER:
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
        return self.take()

    def take_span(self) -> tuple[int, int] | None:
        """Paced and in step with the stream: the span ``[start, end)`` of the stream's log
        due now (possibly empty), the cursor moved past it. ``None`` when what is due is not
        just a span of the log (a start burst or kept configuration pending, skipping to a
        keyframe, fallen behind, not paced): call ``take()`` then. Viewers in step get equal
        spans, so their writer can encode a span once and share the bytes."""
        start = self._cursor
        log = self.stream.log
        if self._pending or self._skipping or start < log.base:
            return None
        end = log.base + len(log.frames)
        if end > start:
            self._cursor = end
            count = end - start
            stream = self.stream
            stream.frames_out += count
            stream.bytes_out += log.bytes_from(start)
            self.delivered += count
        return start, end

    def take(self) -> list[Frame]:
        """Every frame pending now (possibly none), without waiting: for writers that pace
        themselves (see ``arcly.protocols.egress``) instead of waking on every frame."""
        if self._cursor >= 0:
            self._read_log()
        batch = self._pending
        if not batch:
            return []
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
