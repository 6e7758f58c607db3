"""The segment timeline of a stream, decided once by the node that receives the publish.

HLS needs segment boundaries and sequence numbers that every node agrees on, including nodes
that start segmenting late (an edge that got its first viewer ten minutes in). Counting segments
needs the stream's whole history, which only the publishing node has — so it decides, and the
decision travels with the frames: every frame carries the ``SegmentMark`` of the segment it
belongs to (one shared object per segment, no per-frame allocation).

Rules (pure functions of the frames of the publish sessions of a key):
- a segment starts at a video keyframe, the first one at least ``0.75 x target`` after the
  start of the current segment (so segments stay within ``target + one GOP``);
- a timestamp jump (backwards, or forwards by more than ``jump_ms``) or a new publish session
  starts a new segment with the next discontinuity sequence number;
- sequence numbers continue across republishes of the same key.
"""

from __future__ import annotations

from dataclasses import dataclass

from .frame import Frame, FrameKind


@dataclass(frozen=True, slots=True)
class SegmentMark:
    """Which segment a frame belongs to. ``start`` is the timestamp of the segment's keyframe,
    so a late joiner can tell whether it saw the segment from its start."""

    sequence: int
    discontinuity: int
    start: int
    session: int


@dataclass(slots=True)
class TimelineState:
    """What a key's timeline carries from one publish session to the next."""

    next_sequence: int = 0
    discontinuity: int = 0


class Timeline:
    """Stamps frames of one publish session with their ``SegmentMark``."""

    __slots__ = (
        "_first",
        "_jump_ms",
        "_jumped",
        "_last_ts",
        "_mark",
        "_session",
        "_state",
        "_target_ms",
    )

    def __init__(self, state: TimelineState, *, session: int, target_ms: int,
                 jump_ms: int = 10_000) -> None:
        self._state = state
        self._session = session
        self._target_ms = target_ms
        self._jump_ms = jump_ms
        self._mark: SegmentMark | None = None
        self._last_ts: int | None = None
        self._jumped = False
        self._first = True

    @property
    def current(self) -> SegmentMark | None:
        return self._mark

    def mark(self, frame: Frame) -> SegmentMark | None:
        """The mark for ``frame`` (advancing the timeline at keyframes)."""
        ts = frame.timestamp
        last = self._last_ts
        if not frame.config:
            if last is not None and (ts < last - 1000 or ts - last > self._jump_ms):
                self._jumped = True
            self._last_ts = ts
        if frame.kind is FrameKind.VIDEO and frame.keyframe and not frame.config:
            mark = self._mark
            if mark is None or self._jumped or ts - mark.start >= self._target_ms * 3 // 4:
                self._open(ts, discontinuity=self._jumped or (self._first and
                                                              self._state.next_sequence > 0))
        return self._mark

    def _open(self, ts: int, *, discontinuity: bool) -> None:
        state = self._state
        if discontinuity:
            state.discontinuity += 1
        self._mark = SegmentMark(state.next_sequence, state.discontinuity, ts, self._session)
        state.next_sequence += 1
        self._jumped = False
        self._first = False
