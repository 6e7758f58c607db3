"""The segment timeline of a stream, decided once by the node that receives the publish.

HLS needs segment boundaries and sequence numbers that every node agrees on, including nodes
that start segmenting late (an edge that got its first viewer ten minutes in). Counting segments
needs the stream's whole history, which only the publishing node has — so it decides, and the
decision travels with the frames: every frame carries the ``SegmentMark`` of the segment it
belongs to (one shared object per segment, no per-frame allocation).

Segments are cut into *parts* the same way (Low-Latency HLS serves them while the segment
grows): each frame's mark also names its part, so every node cuts identical parts too.

Rules (pure functions of the frames of the publish sessions of a key):
- a segment starts at a video keyframe, the first one at least ``0.75 x target`` after the
  start of the current segment (so segments stay within ``target + one GOP``);
- a segment starts with part 0; a frame starts the next part when the part would otherwise
  outgrow the part target (its time since the part's start plus the largest recent gap between
  frames exceeds it: parts stay within the target, which LL-HLS requires), when it is a video
  keyframe at least half a part target into the part (a part a player can start from), or when
  its timestamp jumped;
- a timestamp jump (backwards, or forwards by more than ``jump_ms``) or a new publish session
  starts a new segment with the next discontinuity sequence number; a changed codec
  configuration starts a new segment at the next keyframe (without a discontinuity);
- configuration and data frames take the current mark and move nothing;
- sequence numbers continue across republishes of the same key.
"""

from __future__ import annotations

from dataclasses import dataclass

from .frame import DATA, VIDEO, Frame, FrameKind


@dataclass(frozen=True, slots=True)
class SegmentMark:
    """Which segment (and part of it) a frame belongs to. ``start`` is the timestamp of the
    segment's keyframe, so a late joiner can tell whether it saw the segment from its start;
    ``part_start`` the timestamp of the part's first frame; ``independent``: the part starts
    with a video keyframe. One object per part, shared by its frames."""

    sequence: int
    discontinuity: int
    start: int
    session: int
    part: int = 0
    part_start: int = 0
    independent: bool = True

    def __post_init__(self) -> None:
        if self.part == 0 and self.part_start == 0:  # part 0 starts with its segment
            object.__setattr__(self, "part_start", self.start)


@dataclass(slots=True)
class TimelineState:
    """What a key's timeline carries from one publish session to the next."""

    next_sequence: int = 0
    discontinuity: int = 0


class Timeline:
    """Stamps frames of one publish session with their ``SegmentMark``."""

    __slots__ = (
        "_configs",
        "_first",
        "_gap",
        "_jump_ms",
        "_jumped",
        "_last_ts",
        "_mark",
        "_part_ms",
        "_reconfigured",
        "_session",
        "_state",
        "_target_ms",
    )

    def __init__(self, state: TimelineState, *, session: int, target_ms: int,
                 part_ms: int = 0, jump_ms: int = 10_000) -> None:
        self._state = state
        self._session = session
        self._target_ms = target_ms
        self._part_ms = part_ms  # 0: no parts (one part per segment)
        self._gap = 0  # the largest recent gap between frames (ms), decaying by 1 per frame
        self._jump_ms = jump_ms
        self._mark: SegmentMark | None = None
        self._last_ts: int | None = None
        self._jumped = False
        self._reconfigured = False
        self._configs: dict[FrameKind, bytes] = {}
        self._first = True

    @property
    def current(self) -> SegmentMark | None:
        return self._mark

    @property
    def last_timestamp(self) -> int | None:
        """The newest audio/video timestamp stamped so far."""
        return self._last_ts

    def discontinue(self, *, has_video: bool = True) -> None:
        """The source changed (a fallback, a publisher back): the next keyframe starts a new
        segment with a discontinuity, whatever its timestamp. ``has_video`` False: the new
        source started without video; nothing is stamped until a keyframe comes (its audio
        would otherwise grow the last segment for ever)."""
        self._jumped = True
        if not has_video:
            self._mark = None

    def mark(self, frame: Frame) -> SegmentMark | None:
        """The mark for ``frame`` (advancing the timeline at keyframes). Data frames (cue
        points, text) and configuration only take the current mark; a configuration that
        differs from the one before it starts a new segment at the next keyframe (a segment
        never spans a codec change, so its init segment describes all of it)."""
        if frame.config or frame.kind is DATA:
            if frame.config and frame.kind is not DATA:
                previous = self._configs.get(frame.kind)
                if previous is not None and previous != frame.payload:
                    self._reconfigured = True
                self._configs[frame.kind] = frame.payload
            return self._mark
        ts = frame.timestamp
        last = self._last_ts
        jump = False
        if last is not None:
            if ts < last - 1000 or ts - last > self._jump_ms:
                self._jumped = jump = True
            elif self._part_ms:
                # max(min(gap, part / 2), previous - 1, 0), without three builtin calls
                gap = ts - last
                if gap > self._part_ms // 2:  # noqa: PLR1730 (per frame: no builtin call)
                    gap = self._part_ms // 2
                decayed = self._gap - 1
                if decayed > gap:  # noqa: PLR1730
                    gap = decayed
                self._gap = gap if gap > 0 else 0
        self._last_ts = ts
        key = frame.kind is VIDEO and frame.keyframe
        mark = self._mark
        if key and (mark is None or self._jumped or self._reconfigured
                    or ts - mark.start >= self._target_ms * 3 // 4):
            self._open(ts, discontinuity=self._jumped or (self._first and
                                                          self._state.next_sequence > 0))
        elif mark is not None and self._part_ms:
            # Does this frame start the next part? (See the rules above.)
            into = ts - mark.part_start
            if jump or (into > 0 and (into + self._gap > self._part_ms
                                      or (key and 2 * into >= self._part_ms))):
                self._mark = SegmentMark(mark.sequence, mark.discontinuity, mark.start,
                                         mark.session, mark.part + 1, ts, key)
        return self._mark

    def _open(self, ts: int, *, discontinuity: bool) -> None:
        state = self._state
        if discontinuity:
            state.discontinuity += 1
        self._mark = SegmentMark(state.next_sequence, state.discontinuity, ts, self._session,
                                 0, ts, True)
        state.next_sequence += 1
        self._jumped = False
        self._reconfigured = False
        self._first = False
