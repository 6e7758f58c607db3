"""Always-available streams: a key's viewers stay when its publisher goes.

When the publisher of a key whose app has a fallback leaves, the kernel does not end the
stream: a ``FallbackProvider`` gives a ``MediaSource`` (a looped file, another live stream)
whose frames go on into the same stream, and every subscriber — viewers, HLS segmenters, the
relay to edges — keeps its subscription. When a publisher comes back it adopts the stream and
viewers switch to it at its first keyframe.

The ``Splicer`` makes a stream fed by several sources one continuous stream:

- a new source starts at its first video keyframe (or first audio frame when it has no video):
  what comes before is dropped, except its configuration frames (sequence headers, metadata),
  held and sent just before that keyframe, so RTMP/FLV viewers get new sequence headers;
- timestamps are rebased so the new source continues one frame step after the last frame sent
  (players see no jump; a timeline never goes backwards);
- the segment timeline starts a new segment at that keyframe with a discontinuity
  (``#EXT-X-DISCONTINUITY``), decided on the origin, so every edge cuts the same segments;
- while a fallback source plays, its own timestamp jumps (a file looping: backwards in a track;
  or a leap ahead) are rebased too.

A stream that never had a splice has no ``Splicer``: frames pass untouched (no cost).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .extension import MediaSource
from .frame import Frame, FrameKind
from .key import StreamKey

DEFAULT_STEP_MS = 33  # one frame at 30 fps: the gap put between two sources
_JUMP_AHEAD_MS = 5000  # a fallback's timestamp leaping this far ahead is a jump: rebased


class FallbackProvider(Protocol):
    """Where a key's fallback comes from (an extension point: the node reads its config)."""

    def fallback_for(self, key: StreamKey, *, on_demand: bool) -> MediaSource | None:
        """A fresh source for ``key`` when its publisher is gone, or None (the stream ends).
        ``on_demand``: nobody has published the key yet and a viewer asks for it."""


class Splicer:
    """Rebases the frames of successive sources into one stream (see the module docstring).
    ``on_cut`` is called when a new source's first frame goes out (the timeline's
    discontinuity)."""

    __slots__ = ("_held", "_last", "_last_in", "_offset", "_on_cut", "_rebase_jumps", "_step",
                 "_waiting")

    def __init__(self, on_cut: Callable[[], None], *, last_sent: int | None = None) -> None:
        """``last_sent``: the newest timestamp the stream sent before it had a splicer."""
        self._on_cut = on_cut
        self._offset = 0
        # The last timestamp sent, per kind (DATA: the stream's before the first cut).
        self._last: dict[FrameKind, int] = {} if last_sent is None else {
            FrameKind.DATA: last_sent}
        self._last_in: dict[FrameKind, int] = {}  # the source's last timestamps, per kind
        self._held: dict[FrameKind, Frame] = {}
        self._waiting = False
        self._rebase_jumps = False
        self._step = DEFAULT_STEP_MS

    @property
    def waiting(self) -> bool:
        """A new source was cut in and has not reached its first keyframe yet."""
        return self._waiting

    def retarget(self, on_cut: Callable[[], None]) -> None:
        self._on_cut = on_cut

    def cut(self, *, rebase_jumps: bool) -> None:
        """A new source begins. ``rebase_jumps``: it is a fallback (its loops and restarts are
        rebased; a publisher's own timestamps are kept as they are)."""
        self._waiting = True
        self._held.clear()
        self._rebase_jumps = rebase_jumps
        self._last_in.clear()

    def fit(self, frame: Frame) -> tuple[Frame, ...]:
        """What goes out for ``frame``: nothing (dropped or held), the frame rebased, or held
        configuration followed by the frame."""
        if self._waiting:
            return self._start(frame)
        if frame.config or frame.kind is FrameKind.DATA:
            return (self._shift(frame, self._newest()),)
        ts = frame.timestamp
        last_in = self._last_in.get(frame.kind)
        if self._rebase_jumps and last_in is not None and (
                ts < last_in or ts > last_in + _JUMP_AHEAD_MS):
            # A fallback went back in its own track (a file looping) or leapt: a new cut.
            self._offset = self._newest() + self._step - ts
            self._last_in.clear()
            self._on_cut()
        elif last_in is not None and frame.kind is FrameKind.VIDEO and 0 < ts - last_in < 200:
            self._step = ts - last_in
        self._last_in[frame.kind] = ts
        shifted = ts + self._offset
        if shifted < self._last.get(frame.kind, shifted):
            return ()  # would go backwards in its track (audio led video at the cut)
        self._last[frame.kind] = shifted
        return (self._shift(frame, shifted),)

    def _start(self, frame: Frame) -> tuple[Frame, ...]:
        if frame.config:  # sequence headers and metadata: the newest of each kind
            self._held[frame.kind] = frame
            return ()
        if frame.kind is FrameKind.DATA:
            return ()
        has_video = any(f.kind is FrameKind.VIDEO for f in self._held.values())
        if frame.kind is FrameKind.VIDEO and not frame.keyframe:
            return ()
        if frame.kind is FrameKind.AUDIO and has_video:
            return ()  # wait for the video keyframe
        base = self._newest() + self._step if self._last else 0
        self._offset = base - frame.timestamp
        self._waiting = False
        self._last_in[frame.kind] = frame.timestamp
        self._on_cut()
        held = [self._shift(f, base) for f in self._held.values()]
        self._held.clear()
        self._last[frame.kind] = base
        return (*held, self._shift(frame, base))

    def _newest(self) -> int:
        return max(self._last.values(), default=0)

    def _shift(self, frame: Frame, timestamp: int) -> Frame:
        if timestamp == frame.timestamp and frame.mark is None and not self._rebase_jumps:
            return frame  # a publisher's own frame, in place
        # A new frame: the source's mark (another stream's timeline) and encodings (its
        # timestamps) do not belong to this stream; a fallback's frames may be shared by other
        # streams (a file loop's cache), so they are never stamped in place.
        return Frame(frame.kind, timestamp, frame.payload, frame.keyframe, frame.config)
