"""Runs HLS segmenters as ordinary stream subscribers and keeps each key's live window.

A segmenter starts on the first playlist request for a key (or, configurably, when the key
starts publishing), keeps ``window`` segments for the playlist (plus a few already out of it,
for players that fetch late), survives a republish (the playlist continues across it, with
``#EXT-X-DISCONTINUITY``), and is dropped ``linger`` seconds after the stream ended or nobody
asked for it. The service is a ``ProtocolHandler``: ``run`` takes the node's registry (the
engine) and sweeps until shutdown; it is also an ``Observer`` of the same engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
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

from .playlist import render_playlist
from .segmenter import Segment, Segmenter

log = logging.getLogger("arcly.hls")

EXTRA_KEPT = 3  # segments kept after they leave the playlist, for late fetches
MAX_TRACKED_CLIENTS = 100_000  # per node, for the viewer estimate (oldest forgotten first)


@dataclass(frozen=True, slots=True)
class HlsSettings:
    segment_seconds: float = EngineConfig().segment_target  # the kernel groups GOPs by this
    window: int = 6
    on_publish: bool = False
    linger: float = 30.0

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
    __slots__ = ("changed", "ended", "key", "last_access", "runner", "segments", "sticky")

    def __init__(self, key: StreamKey, keep: int) -> None:
        self.key = key
        self.segments: deque[Segment] = deque(maxlen=keep)
        self.ended = False
        self.runner: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()
        self.last_access = time.monotonic()
        self.sticky = False  # started on publish: keep segmenting without requests

    def add(self, segment: Segment) -> None:
        if self.segments and segment.sequence <= self.segments[-1].sequence:
            # The publishing node forgot this key's timeline (restart): start a fresh window.
            self.segments.clear()
        self.segments.append(segment)
        self._notify()

    def _notify(self) -> None:
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

    async def playlist(self, key: StreamKey, *, query: str = "", client: str = "") -> str | None:
        """The live playlist of ``key``, or None if nothing is or was published there.
        ``client``: who asks (for the viewer estimate)."""
        if client:
            self.note_client(key, client)
        state = await self.start(key)
        if state is None:
            return None
        state.last_access = time.monotonic()
        if not state.segments and state.runner is not None:
            deadline = time.monotonic() + self.settings.first_segment_wait
            while not state.segments and state.runner is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(state.changed.wait(), remaining)
                except TimeoutError:
                    break
        if not state.segments:
            return None
        window = list(state.segments)[-self.settings.window:]
        return render_playlist(window, target=self.settings.segment_seconds,
                               ended=state.ended and state.runner is None,
                               suffix=f"?{query}" if query else "")

    def segment(self, key: StreamKey, uri: str) -> bytes | None:
        state = self._states.get(key)
        if state is None:
            return None
        state.last_access = time.monotonic()
        for segment in reversed(state.segments):
            if segment.uri == uri:
                return segment.data
        return None

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
        segmenter = Segmenter()
        reason = "segmenter stopped"
        try:
            while batch := await sub.next_batch():
                for frame in batch:
                    done = segmenter.feed(frame)
                    if done is not None:
                        state.add(done)
            if sub.stream.ended.cancelled:
                last = segmenter.finish()
                if last is not None:
                    state.add(last)
                state.ended = True
                reason = sub.close_reason
        except Exception:
            log.exception("hls segmenter failed stream=%s", state.key)
            reason = "segmenter failed"
        finally:
            sub.close(reason)
            state.runner = None
            state._notify()

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
