"""Runs HLS segmenters as ordinary stream subscribers and keeps each key's live window.

Three variants (MediaMTX's names): ``mpegts`` (TS segments, every player), ``fmp4`` (CMAF
segments) and ``lowlatency`` (CMAF segments cut into parts, RFC 8216bis: blocking playlist
reload, ``EXT-X-PART``, ``EXT-X-PRELOAD-HINT``). A blocking request waits on the key's one
``changed`` event (woken when a part or segment completes), or, held by the HTTP layer without
a task (``hold``), in the key's ``holds``, answered by callback: held requests cost memory, not
CPU.

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
import math
import time
from collections import deque
from collections.abc import Callable
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
# A stream that ended may come back (the broadcaster reconnects): the playlist gets its
# EXT-X-ENDLIST (players stop on it) only this long after the end, unless it did.
END_GRACE = 3.0


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


def not_in_time(msn: int, part: int | None) -> BlockingReloadError:
    """The 503 of a blocking request whose segment ``msn`` (part ``part``) did not come within
    ``blocking_wait`` (however it was held)."""
    return BlockingReloadError(503, f"segment {msn} part {part} not ready in time")


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


@dataclass(frozen=True, slots=True)
class _Pending:
    """The segment being cut (Low-Latency): its parts so far and what comes next."""

    parts: tuple[Part, ...]
    sequence: int
    discontinuity: int
    session: int
    init: str
    next_part: int  # the index of the part being filled (the next one to appear)


class _Hold:
    """A blocking playlist reload held without a task (``HlsService.hold``)."""

    __slots__ = ("deliver", "msn", "part", "suffix", "timer")

    def __init__(self, msn: int, part: int | None, suffix: str,
                 deliver: Callable[[str | None], None]) -> None:
        self.msn = msn
        self.part = part
        self.suffix = suffix
        self.deliver = deliver
        self.timer: asyncio.TimerHandle | None = None


class _KeyState:
    __slots__ = ("_media", "changed", "cutter", "ended", "ended_at", "holds", "inits", "key",
                 "last_access", "on_change", "rendered", "runner", "segments", "sticky")

    def __init__(self, key: StreamKey, keep: int) -> None:
        self.key = key
        self.segments: deque[Segment] = deque(maxlen=keep)
        self.cutter: CmafSegmenter | None = None  # its pending segment's parts are served
        self.inits: dict[str, bytes] = {}  # init segments the window and pending parts name
        self.ended = False
        self.ended_at = 0.0  # monotonic, when ``ended`` turned true
        self.runner: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()
        self.last_access = time.monotonic()
        self.sticky = False  # started on publish: keep segmenting without requests
        # Until the next change: playlists by query suffix (a thousand players woken by one
        # part get one rendering), and segments and parts by URI.
        self.rendered: dict[str, str] = {}
        self._media: dict[str, bytes] | None = None
        self.holds: dict[_Hold, None] = {}  # blocking reloads held (``HlsService.hold``)
        self.on_change: Callable[[_KeyState], None] | None = None  # answers ``holds``

    def add(self, segment: Segment) -> None:
        if self.segments and segment.sequence <= self.segments[-1].sequence:
            # The publishing node forgot this key's timeline (restart): start a fresh window.
            self.segments.clear()
        self.segments.append(segment)
        self._keep_inits()
        self.notify()

    def add_part(self, part: Part) -> None:
        self._keep_inits()
        self.notify()

    def _keep_inits(self) -> None:
        """Hold the init segments that listed media names (a republish replaces the
        segmenter, not the window), and only those."""
        pending = self.pending()
        named = {s.init for s in self.segments if s.init}
        if pending is not None:
            named.add(pending.init)
        for uri in named - self.inits.keys():
            data = self.cutter.init_segment(uri) if self.cutter is not None else None
            if data is not None:
                self.inits[uri] = data
        for uri in self.inits.keys() - named:
            del self.inits[uri]

    def pending(self) -> _Pending | None:
        """The segment being cut, once it has a part."""
        open_segment = self.cutter.pending if self.cutter is not None else None
        if open_segment is None or not open_segment.parts:
            return None
        mark = open_segment.mark
        filling = open_segment.part
        next_part = (filling.mark.part if filling is not None
                     else open_segment.parts[-1].index + 1)
        return _Pending(tuple(open_segment.parts), mark.sequence, mark.discontinuity,
                        mark.session, open_segment.init.uri, next_part)

    def last_complete(self) -> int:
        return self.segments[-1].sequence if self.segments else -1

    def latest(self) -> tuple[int, int]:
        """(media sequence, part index) of the next part to appear."""
        pending = self.pending()
        if pending is not None:
            return pending.sequence, pending.next_part
        return self.last_complete() + 1, 0

    def has(self, msn: int, part: int | None) -> bool:
        """Whether segment ``msn`` is complete (``part`` None), or its part ``part`` (or a
        later one) exists."""
        if self.last_complete() >= msn:
            return True
        pending = self.pending()
        if part is None or pending is None:
            return False
        return pending.sequence > msn or (
            pending.sequence == msn and pending.parts[-1].index >= part)

    def final(self) -> bool:
        """The stream ended and did not come back within ``END_GRACE``: the playlist ends."""
        return (self.ended and self.runner is None
                and time.monotonic() - self.ended_at >= END_GRACE)

    def waiting(self) -> bool:
        """Whether media may still come (a request may wait for it)."""
        return self.runner is not None or (self.ended and not self.final())

    def media(self, uri: str) -> bytes | None:
        """A segment, part or init segment by URI (an index rebuilt once per change)."""
        if self._media is None:
            media = {p.uri: p.data for s in self.segments for p in s.parts}
            media.update((s.uri, s.data) for s in self.segments)
            pending = self.pending()
            media.update((p.uri, p.data) for p in (pending.parts if pending else ()))
            media.update(self.inits)
            self._media = media
        return self._media.get(uri)

    def notify(self) -> None:
        """Something changed: drop what was derived from the old state, wake the waiters."""
        self.rendered.clear()
        self._media = None
        self.changed.set()
        self.changed = asyncio.Event()
        if self.holds and self.on_change is not None:
            self.on_change(self)


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
        self._loop: asyncio.AbstractEventLoop | None = None

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
        if msn is None:  # a player's poll of a live stream: nothing to wait for
            playlist = self.playlist_now(key, query=query, client=client)
            if playlist is not None:
                return playlist
        state = await self.start(key)
        if state is None:  # a name nobody publishes: not a viewer
            return None
        if client:
            self.note_client(key, client)
        state.last_access = time.monotonic()
        await self._until(state, self._has_media, self.settings.first_segment_wait)
        if not self._has_media(state):
            return None
        if msn is not None and self.low_latency:
            self._check_ahead(state, msn, part)
            await self._until(state, lambda s: s.has(msn, part) or s.final(),
                              self.settings.blocking_wait)
            if not state.has(msn, part) and not state.final():
                raise not_in_time(msn, part)
        return self._render(state, f"?{query}" if query else "")

    def hold(self, key: StreamKey, msn: int, part: int | None, *, query: str, client: str,
             deliver: Callable[[str | None], None]) -> str | bool:
        """A blocking playlist reload (``_HLS_msn``/``_HLS_part``, RFC 8216bis 6.2.5.2) that
        the HTTP layer holds without a task: the playlist if it can be given now; True if it
        is held, and ``deliver`` gets the playlist once segment ``msn`` (part ``part``) exists
        or the playlist ended, or None after ``blocking_wait`` (a 503), as ``playlist``
        answers; False when ``playlist`` must answer it (no segmenter with media yet, or too
        far ahead: a 400)."""
        state = self._states.get(key)
        if not self.low_latency or state is None or state.runner is None \
                or not self._has_media(state):
            return False
        try:
            self._check_ahead(state, msn, part)
        except BlockingReloadError:
            return False
        if client:
            self.note_client(key, client)
        state.last_access = time.monotonic()
        suffix = f"?{query}" if query else ""
        if state.has(msn, part):
            return self._render(state, suffix)
        held = _Hold(msn, part, suffix, deliver)
        loop = self._loop
        if loop is None:  # looked up once: asking for the running loop costs a getpid()
            loop = self._loop = asyncio.get_running_loop()
        held.timer = loop.call_later(self.settings.blocking_wait, self._expire, state, held)
        state.holds[held] = None
        return True

    def _release(self, state: _KeyState) -> None:
        """``state`` changed: answer the holds it can answer now."""
        final = state.final()
        gone = not final and not state.waiting()  # the segmenter stopped: nothing will come
        known: dict[tuple[int, int | None], bool] = {}  # held requests mostly ask alike
        ready: list[_Hold] = []
        waiting: dict[_Hold, None] = {}
        for held in state.holds:
            position = (held.msn, held.part)
            there = known.get(position)
            if there is None:
                there = known[position] = final or state.has(held.msn, held.part)
            if there or gone:
                ready.append(held)
            else:
                waiting[held] = None
        if not ready:
            return
        state.holds = waiting
        for held in ready:
            if held.timer is not None:
                held.timer.cancel()
            there = known[(held.msn, held.part)]
            try:  # as ``playlist`` answers: what is there, else 503 (``deliver(None)``)
                held.deliver(self._render(state, held.suffix) if there else None)
            except Exception:  # one broken connection must not keep the others waiting
                log.exception("hls: answering a held playlist request failed")

    @staticmethod
    def _expire(state: _KeyState, held: _Hold) -> None:
        """``held`` waited ``blocking_wait``: it is answered 503."""
        if state.holds.pop(held, False) is None:  # still held (a dict: O(1) for thousands)
            try:
                held.deliver(None)
            except Exception:
                log.exception("hls: answering a held playlist request failed")

    def playlist_now(self, key: StreamKey, *, query: str = "", client: str = "") -> str | None:
        """The live playlist of ``key`` if it can be given at once (its segmenter runs and has
        media), else None (``playlist`` waits for it, or says it is not there)."""
        state = self._states.get(key)
        if state is None or state.runner is None or not self._has_media(state):
            return None
        if client:
            self.note_client(key, client)
        state.last_access = time.monotonic()
        return self._render(state, f"?{query}" if query else "")

    def _check_ahead(self, state: _KeyState, msn: int, part: int | None) -> None:
        """RFC 8216bis 6.2.5.2: more than two segments past the last one, or more parts past
        the newest than the Advance Part Limit, is refused at once (400)."""
        last = state.last_complete()
        if last < 0:
            last = state.latest()[0]
        if msn > last + 2:
            raise BlockingReloadError(400, f"_HLS_msn={msn} is more than two segments ahead "
                                           f"of {last}")
        newest, next_part = state.latest()
        limit = math.ceil(3 / self.settings.part_seconds) if self.settings.part_seconds < 1 \
            else 3
        if part is not None and msn >= newest and part > next_part + limit:
            raise BlockingReloadError(400, f"_HLS_part={part} is more than {limit} parts "
                                           f"ahead")

    def _has_media(self, state: _KeyState) -> bool:
        return bool(state.segments) or (self.low_latency and state.pending() is not None)

    @staticmethod
    async def _until(state: _KeyState, ready: Callable[[_KeyState], bool],
                     wait: float) -> None:
        """Wait (on the key's ``changed`` event, no polling) until ``ready``, ``wait`` seconds
        passed, or no more media can come."""
        deadline = time.monotonic() + wait
        while not ready(state) and state.waiting():
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
        ended = state.final()
        low_latency = None
        if self.low_latency:
            pending = state.pending()
            if pending is not None:
                low_latency = LowLatency(self.settings.part_seconds, pending.parts,
                                         pending.discontinuity, pending.init,
                                         f"{pending.session}-{pending.sequence}."
                                         f"{pending.next_part}.m4s")
            else:  # between segments: the next one's first part
                session = window[-1].session if window else 0
                low_latency = LowLatency(self.settings.part_seconds, next_part=(
                    f"{session}-{state.last_complete() + 1}.0.m4s" if window else None))
        return render_playlist(window, target=self.settings.segment_seconds, ended=ended,
                               suffix=suffix, low_latency=low_latency)

    def segment(self, key: StreamKey, uri: str) -> bytes | None:
        """A segment, init segment or (completed) part of ``key`` by its URI."""
        state = self._states.get(key)
        if state is None:
            return None
        state.last_access = time.monotonic()
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
        newest, next_part = state.latest()
        if wanted not in ((newest, next_part), (newest + 1, 0)):
            return None  # not the next part: it will not come (or is gone)
        await self._until(state, lambda s: s.media(uri) is not None or s.final(),
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
            state.on_change = self._release
            self._states[key] = state
        state.sticky = state.sticky or sticky
        if state.runner is not None:
            sub.close("duplicate segmenter")
            return state
        state.ended = False
        state.runner = asyncio.create_task(self._segment(state, sub), name=f"hls-{key}")
        state.notify()  # not ended any more (a cached ENDLIST playlist must go)
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
                state.ended, state.ended_at = True, time.monotonic()
                # Held requests learn of the end (EXT-X-ENDLIST) once the grace has passed.
                asyncio.get_running_loop().call_later(END_GRACE + 0.01, state.notify)
                reason = sub.close_reason
        except Exception:
            log.exception("hls segmenter failed stream=%s", state.key)
            reason = "segmenter failed"
        finally:
            sub.close(reason)
            state.runner = None
            state.notify()

    @staticmethod
    async def _cut_ts(state: _KeyState, sub: Subscription) -> None:
        segmenter = Segmenter()
        dropped = sub.dropped
        while batch := await sub.next_batch():
            if sub.dropped != dropped:  # fell behind: what it cuts now would differ
                dropped = sub.dropped
                segmenter.abandon()
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

        dropped = sub.dropped
        while batch := await sub.next_batch():
            if sub.dropped != dropped:  # fell behind: what it cuts now would differ
                dropped = sub.dropped
                segmenter.abandon()
                state.notify()
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
