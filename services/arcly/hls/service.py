"""Runs HLS segmenters as ordinary stream subscribers and keeps each key's live window.

Three variants (MediaMTX's names): ``mpegts`` (TS segments, every player), ``fmp4`` (CMAF
segments) and ``lowlatency`` (CMAF segments cut into parts, RFC 8216bis: blocking playlist
reload, ``EXT-X-PART``, ``EXT-X-PRELOAD-HINT``). A blocking request waits on the key's one
``changed`` event (woken when a part or segment completes): held requests cost memory, not CPU.

A segmenter starts on the first playlist request for a key (or, configurably, when the key
starts publishing), keeps ``window`` segments for the playlist (plus a few already out of it,
for players that fetch late), survives a republish (the playlist continues across it, with
``#EXT-X-DISCONTINUITY``), and is dropped ``linger`` seconds after the stream ended or nobody
asked for it. The service is a ``ProtocolHandler``: ``run`` takes the node's registry (the
engine) and sweeps until shutdown; it is also an ``Observer`` of the same engine.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from arcly.engine import (
    EngineConfig,
    NullObserver,
    PublishRegistry,
    ShutdownToken,
    StreamKey,
    StreamNotFound,
    Subscription,
)

from .cmaf import CmafSegmenter
from .playlist import LowLatency, render_playlist
from .segmenter import Part, Segment, Segmenter

log = logging.getLogger("arcly.hls")

EXTRA_KEPT = 3  # segments kept after they leave the playlist, for late fetches
MAX_TRACKED_CLIENTS = 100_000  # per node, for the viewer estimate (oldest forgotten first)


class HlsVariant(enum.StrEnum):
    MPEGTS = "mpegts"
    FMP4 = "fmp4"
    LOWLATENCY = "lowlatency"


class BlockingReloadError(Exception):
    """A blocking playlist request that cannot be answered with a playlist (RFC 8216bis
    6.2.5.2): ``status`` 400 (asked too far ahead) or 503 (not there in time)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class HlsSettings:
    segment_seconds: float = EngineConfig().segment_target  # the kernel groups GOPs by this
    part_seconds: float = EngineConfig().part_target  # ... and cuts segments into parts
    window: int = 6
    on_publish: bool = False
    linger: float = 30.0
    variant: HlsVariant = HlsVariant.LOWLATENCY

    @property
    def blocking_wait(self) -> float:
        """How long a blocking playlist or part request may be held (three target
        durations, RFC 8216bis), then answered 503."""
        return 3 * self.segment_seconds

    @property
    def viewer_window(self) -> float:
        """A player polls its playlist about once per segment; one that has not for this long
        is gone (for the viewer estimate)."""
        return 3 * self.segment_seconds + 2

    @property
    def first_segment_wait(self) -> float:
        """How long a playlist request waits for a new segmenter's first segment."""
        return 3 * self.segment_seconds + 4


class _KeyState:
    __slots__ = ("_media", "changed", "cutter", "ended", "key", "last_access", "rendered",
                 "runner", "segments", "sticky")

    def __init__(self, key: StreamKey, keep: int) -> None:
        self.key = key
        self.segments: deque[Segment] = deque(maxlen=keep)
        self.cutter: CmafSegmenter | None = None  # its pending segment's parts are served
        self.ended = False
        self.runner: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()
        self.last_access = time.monotonic()
        self.sticky = False  # started on publish: keep segmenting without requests
        # Until the next change: playlists by query suffix (a thousand players woken by one
        # part get one rendering), and segments and parts by URI.
        self.rendered: dict[str, str] = {}
        self._media: dict[str, bytes] | None = None

    def add(self, segment: Segment) -> None:
        if self.segments and segment.sequence <= self.segments[-1].sequence:
            # The publishing node forgot this key's timeline (restart): start a fresh window.
            self.segments.clear()
        self.segments.append(segment)
        self._notify()

    def add_part(self, part: Part) -> None:
        self._notify()

    def pending_parts(self) -> tuple[Sequence[Part], int, str, int] | None:
        """The segment being cut: its parts so far, discontinuity, init URI, sequence."""
        pending = self.cutter.pending if self.cutter is not None else None
        if pending is None:
            return None
        mark = pending.mark
        return pending.parts, mark.discontinuity, pending.init.uri, mark.sequence

    def latest(self) -> tuple[int, int]:
        """(media sequence, parts) of the newest media: the segment being cut and how many of
        its parts exist, else the last complete segment's successor with none."""
        pending = self.pending_parts()
        if pending is not None and pending[0]:
            return pending[3], len(pending[0])
        return (self.segments[-1].sequence + 1 if self.segments else 0), 0

    def has(self, msn: int, part: int | None) -> bool:
        """Whether segment ``msn`` is complete (``part`` None), or its part ``part`` exists."""
        if self.segments and self.segments[-1].sequence >= msn:
            return True
        if part is None:
            return False
        newest, parts = self.latest()
        return newest > msn or (newest == msn and parts > part)

    def part(self, uri: str) -> Part | None:
        pending = self.pending_parts()
        for part in pending[0] if pending is not None else ():
            if part.uri == uri:
                return part
        for segment in reversed(self.segments):
            for part in segment.parts:
                if part.uri == uri:
                    return part
        return None

    def media(self, uri: str) -> bytes | None:
        """A segment or part by URI (an index rebuilt once per change)."""
        if self._media is None:
            media = {p.uri: p.data for s in self.segments for p in s.parts}
            media.update((s.uri, s.data) for s in self.segments)
            pending = self.pending_parts()
            media.update((p.uri, p.data) for p in (pending[0] if pending is not None else ()))
            self._media = media
        return self._media.get(uri)

    def _notify(self) -> None:
        self.rendered.clear()
        self._media = None
        self.changed.set()
        self.changed = asyncio.Event()


class HlsService(NullObserver):
    """The node's HLS output. Also an ``Observer``, to follow publishes of watched keys."""

    name = "hls"

    def __init__(self, settings: HlsSettings | None = None) -> None:
        self.registry: PublishRegistry | None = None  # the engine, once ``run`` starts
        self.settings = settings or HlsSettings()
        self._states: dict[StreamKey, _KeyState] = {}
        self._starting: set[asyncio.Task[_KeyState | None]] = set()
        self._stopping = False
        # HLS has no sessions: a viewer is a client that asked for a playlist lately.
        self._clients: dict[tuple[StreamKey, str], float] = {}
        self.bytes_sent = 0  # playlists and segments served

    # -- serving ------------------------------------------------------------------------------

    def note_client(self, key: StreamKey, client: str, now: float | None = None) -> None:
        """``client`` (address and user agent) asked for ``key``'s playlist."""
        entry = (key, client)
        self._clients.pop(entry, None)  # re-insert: the dict stays oldest-first
        self._clients[entry] = time.monotonic() if now is None else now
        while len(self._clients) > MAX_TRACKED_CLIENTS:
            del self._clients[next(iter(self._clients))]

    def viewers(self, now: float | None = None) -> dict[StreamKey, int]:
        """An estimate of HLS viewers per key: clients that polled within the window
        (players behind one address with one user agent count once)."""
        cutoff = (time.monotonic() if now is None else now) - self.settings.viewer_window
        while self._clients:
            entry, seen = next(iter(self._clients.items()))
            if seen >= cutoff:
                break
            del self._clients[entry]
        counts: dict[StreamKey, int] = {}
        for key, _ in self._clients:
            counts[key] = counts.get(key, 0) + 1
        return counts

    @property
    def low_latency(self) -> bool:
        return self.settings.variant is HlsVariant.LOWLATENCY

    async def playlist(self, key: StreamKey, *, query: str = "", client: str = "",
                       msn: int | None = None, part: int | None = None) -> str | None:
        """The live playlist of ``key``, or None if nothing is or was published there.
        ``client``: who asks (for the viewer estimate). ``msn``/``part`` (``_HLS_msn`` /
        ``_HLS_part``, Low-Latency only): hold the request until that segment (part) exists;
        raises ``BlockingReloadError`` when it is too far ahead or does not come in time."""
        if client:
            self.note_client(key, client)
        state = await self.start(key)
        if state is None:
            return None
        state.last_access = time.monotonic()
        await self._until(state, self._has_media, self.settings.first_segment_wait)
        if not self._has_media(state):
            return None
        if msn is not None and self.low_latency:
            newest, _ = state.latest()
            if msn > newest + 2:
                raise BlockingReloadError(400, f"_HLS_msn={msn} is more than two segments "
                                               f"ahead of {newest}")
            await self._until(state, lambda s: s.has(msn, part) or s.runner is None,
                              self.settings.blocking_wait)
            if not state.has(msn, part) and state.runner is not None:
                raise BlockingReloadError(503, f"segment {msn} part {part} not ready in time")
        return self._render(state, f"?{query}" if query else "")

    def _has_media(self, state: _KeyState) -> bool:
        if state.segments:
            return True
        pending = state.pending_parts()
        return bool(self.low_latency and pending is not None and pending[0])

    @staticmethod
    async def _until(state: _KeyState, ready: Callable[[_KeyState], bool],
                     wait: float) -> None:
        """Wait (on the key's ``changed`` event, no polling) until ``ready`` or ``wait``
        seconds passed or the segmenter stopped."""
        deadline = time.monotonic() + wait
        while not ready(state) and state.runner is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(state.changed.wait(), remaining)
            except TimeoutError:
                return

    def _render(self, state: _KeyState, suffix: str) -> str:
        text = state.rendered.get(suffix)
        if text is None:
            if len(state.rendered) >= 256:  # many different credentials: keep it bounded
                state.rendered.clear()
            text = state.rendered[suffix] = self._render_now(state, suffix)
        return text

    def _render_now(self, state: _KeyState, suffix: str) -> str:
        window = list(state.segments)[-self.settings.window:]
        ended = state.ended and state.runner is None
        low_latency = None
        if self.low_latency:
            pending = state.pending_parts()
            newest, parts = state.latest()
            parts_of, discontinuity, init, _ = pending if pending is not None and pending[0] \
                else ((), 0, "", 0)
            session = (parts_of[0].session if parts_of else
                       window[-1].session if window else 0)
            low_latency = LowLatency(self.settings.part_seconds, parts_of, discontinuity, init,
                                     f"{session}-{newest}.{parts}.m4s")
        return render_playlist(window, target=self.settings.segment_seconds, ended=ended,
                               suffix=suffix, low_latency=low_latency)

    def segment(self, key: StreamKey, uri: str) -> bytes | None:
        """A segment, init segment or (completed) part of ``key`` by its URI."""
        state = self._states.get(key)
        if state is None:
            return None
        state.last_access = time.monotonic()
        if uri.endswith(".mp4"):
            return state.cutter.init_segment(uri) if state.cutter is not None else None
        return state.media(uri)

    async def part(self, key: StreamKey, uri: str) -> bytes | None:
        """A part by its URI; the next part (the preload hint) is waited for (bounded)."""
        data = self.segment(key, uri)
        state = self._states.get(key)
        if data is not None or state is None or not self.low_latency:
            return data
        wanted = _part_position(uri)
        if wanted is None:
            return None
        newest, parts = state.latest()
        if wanted not in ((newest, parts), (newest + 1, 0)):
            return None  # not the next part: it will not come (or is gone)
        await self._until(state, lambda s: s.part(uri) is not None,
                          self.settings.blocking_wait)
        return self.segment(key, uri)

    # -- segmenters ---------------------------------------------------------------------------

    async def start(self, key: StreamKey, *, sticky: bool = False) -> _KeyState | None:
        """Make sure ``key`` is being segmented if it is live. Returns its state, or None when
        the key is neither live nor remembered."""
        state = self._states.get(key)
        if state is not None and (state.runner is not None or self._stopping):
            state.sticky = state.sticky or sticky
            return state
        if self.registry is None:  # not running yet
            return state
        try:
            sub = await self.registry.subscribe(key, protocol="hls", peer="segmenter",
                                              viewer=False)
        except StreamNotFound:
            return state
        state = self._states.get(key)  # the await above may have raced another start
        if state is None:
            state = _KeyState(key, self.settings.window + EXTRA_KEPT)
            self._states[key] = state
        state.sticky = state.sticky or sticky
        if state.runner is not None:
            sub.close("duplicate segmenter")
            return state
        state.ended = False
        state.runner = asyncio.create_task(self._segment(state, sub), name=f"hls-{key}")
        return state

    def on_publish_start(self, key: StreamKey, protocol: str, peer: str) -> None:
        if self.settings.on_publish or key in self._states:
            # Follow the publish (a watched playlist continues across a republish).
            task = asyncio.get_running_loop().create_task(
                self.start(key, sticky=self.settings.on_publish))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _segment(self, state: _KeyState, sub: Subscription) -> None:
        reason = "segmenter stopped"
        try:
            if self.settings.variant is HlsVariant.MPEGTS:
                await self._cut_ts(state, sub)
            else:
                await self._cut_cmaf(state, sub)
            if sub.stream.ended.cancelled:
                state.ended = True
                reason = sub.close_reason
        except Exception:
            log.exception("hls segmenter failed stream=%s", state.key)
            reason = "segmenter failed"
        finally:
            sub.close(reason)
            state.runner = None
            state._notify()

    @staticmethod
    async def _cut_ts(state: _KeyState, sub: Subscription) -> None:
        segmenter = Segmenter()
        while batch := await sub.next_batch():
            for frame in batch:
                done = segmenter.feed(frame)
                if done is not None:
                    state.add(done)
        if sub.stream.ended.cancelled:
            last = segmenter.finish()
            if last is not None:
                state.add(last)

    @staticmethod
    async def _cut_cmaf(state: _KeyState, sub: Subscription) -> None:
        segmenter = state.cutter = CmafSegmenter()

        def take(done: list[Part | Segment]) -> None:
            for item in done:
                if isinstance(item, Part):
                    state.add_part(item)
                else:
                    state.add(item)

        while batch := await sub.next_batch():
            for frame in batch:
                take(segmenter.feed(frame))
        if sub.stream.ended.cancelled:
            take(segmenter.finish())

    def sweep(self, now: float | None = None) -> None:
        """Stop segmenters nobody asks for; forget keys that ended ``linger`` seconds ago."""
        now = time.monotonic() if now is None else now
        for key, state in list(self._states.items()):
            idle = now - state.last_access > self.settings.linger
            if not idle:
                continue
            if state.runner is not None and not state.sticky:
                state.runner.cancel()
            if state.runner is None or state.runner.done():
                del self._states[key]

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
        self.registry = registry
        interval = max(1.0, min(10.0, self.settings.linger / 3))
        try:
            while not shutdown.cancelled:
                try:
                    await asyncio.wait_for(shutdown.wait(), interval)
                except TimeoutError:
                    self.sweep()
        finally:
            self._stopping = True
            runners = [s.runner for s in self._states.values() if s.runner is not None]
            if runners:  # they finish on their own as streams end; give them a moment
                await asyncio.wait(runners, timeout=5.0)
            for runner in runners:
                runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)


def _part_position(uri: str) -> tuple[int, int] | None:
    """(media sequence, part index) of a part URI ``{session}-{sequence}.{part}.m4s``."""
    stem = uri.removesuffix(".m4s")
    _, _, rest = stem.rpartition("-")
    sequence, _, index = rest.partition(".")
    if not (sequence.isdigit() and index.isdigit()):
        return None
    return int(sequence), int(index)
