"""Always-available streams: a key's viewers stay when its publisher goes.

When the publisher of a key whose app has a fallback leaves, the kernel does not end the
stream: a ``FallbackProvider`` gives a ``MediaSource`` (a looped file, another live stream)
whose frames go on into the same stream, and every subscriber — viewers, HLS segmenters, the
relay to edges — keeps its subscription. When a publisher comes back it adopts the stream and
viewers switch to it at its first keyframe.

The ``Splicer`` makes a stream fed by several sources one continuous stream:

- a new source starts at its first video keyframe (or on audio after two seconds of audio without
  one: an audio-only source): what comes before is dropped, except its configuration frames
  (sequence headers, metadata), held and sent just before that keyframe, so RTMP/FLV viewers get
  new sequence headers; video never resumes but at a keyframe;
- timestamps are rebased so the new source continues one frame step (rounded up to the 100 ms
  grid that keeps frame-rate phase) after the last frame sent (players see no jump; a timeline
  never goes backwards);
- the segment timeline starts a new segment at that keyframe with a discontinuity
  (``#EXT-X-DISCONTINUITY``), decided on the origin, so every edge cuts the same segments;
- while a fallback source plays, its own timestamp jumps (a file looping: backwards in a track;
  or a leap ahead) are rebased too; so is a publisher's clock going back (an encoder reset).

A stream that never had a splice has no ``Splicer``: frames pass untouched (no cost).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from .extension import MediaSource
from .frame import Frame, FrameKind
from .key import StreamKey

DEFAULT_STEP_MS = 33  # one frame at 30 fps: the gap put between two sources
GRID_MS = 100  # rebasing offsets are multiples of this (3 frames at 30 fps, 5 at 50, 6 at 60)
_JUMP_AHEAD_MS = 5000  # a fallback's timestamp leaping this far ahead is a jump: rebased
_JUMP_BACK_MS = 1000  # a publisher's timestamp going this far back in a track: rebased
# A source that sends this much audio without a video keyframe starts on audio (an audio-only
# source; its video, if any, joins at its first keyframe).
AUDIO_ONLY_AFTER_MS = 2000


def _on_grid(offset: int) -> int:
    """``offset`` rounded up to a multiple of ``GRID_MS``: a source's frames keep their phase
    (frame times of 25, 30, 50 and 60 fps sources fall on the same frame-rate slots as before
    the cut, so tools that count frames on a fixed-rate grid, like ffmpeg's, never see two in
    one slot). Costs at most ``GRID_MS`` more between two sources."""
    return -(-offset // GRID_MS) * GRID_MS


class FallbackProvider(Protocol):
    """Where a key's fallback comes from (an extension point: the node reads its config)."""

    def fallback_for(self, key: StreamKey, *, on_demand: bool) -> MediaSource | None:
        """A fresh source for ``key`` when its publisher is gone, or None (the stream ends).
        ``on_demand``: nobody has published the key yet and a viewer asks for it."""


class Splicer:
    """Rebases the frames of successive sources into one stream (see the module docstring).
    ``on_cut(has_video)`` is called when a new source's first frame goes out (the timeline's
    discontinuity; ``has_video`` False: the source started on audio, nothing to cut HLS at)."""

    __slots__ = ("_audio_since", "_held", "_last", "_last_in", "_need_key", "_offset", "_on_cut",
                 "_rebase_jumps", "_step", "_waiting")

    def __init__(self, on_cut: Callable[[bool], None], *,
                 last_sent: Mapping[FrameKind, int] | None = None) -> None:
        """``last_sent``: the newest timestamps per kind the stream sent before it had a
        splicer (the cut goes on from the largest)."""
        self._on_cut = on_cut
        self._offset = 0
        self._last: dict[FrameKind, int] = dict(last_sent or {})  # the last sent, per kind
        self._last_in: dict[FrameKind, int] = {}  # the source's last timestamps, per kind
        self._held: dict[FrameKind, Frame] = {}
        self._waiting = False
        self._need_key = False  # video waits for a keyframe (the cut started on audio)
        self._audio_since: int | None = None
        self._rebase_jumps = False
        self._step = DEFAULT_STEP_MS

    @property
    def waiting(self) -> bool:
        """A new source was cut in and has not sent its first frame out yet."""
        return self._waiting

    def retarget(self, on_cut: Callable[[bool], None]) -> None:
        self._on_cut = on_cut

    def cut(self, *, rebase_jumps: bool) -> None:
        """A new source begins. ``rebase_jumps``: it is a fallback (its loops and restarts are
        rebased; a publisher's timestamps keep their steps, only a jump back is rebased)."""
        self._waiting = self._need_key = True
        self._held.clear()
        self._rebase_jumps = rebase_jumps
        self._last_in.clear()
        self._audio_since = None

    def fit(self, frame: Frame) -> tuple[Frame, ...]:
        """What goes out for ``frame``: nothing (dropped or held), the frame rebased, or held
        configuration followed by the frame."""
        kind = frame.kind
        if frame.config:  # sequence headers and metadata: go just before the keyframe
            if self._waiting or (self._need_key and kind is FrameKind.VIDEO):
                self._held[kind] = frame
                return ()
            return (self._shift(frame, self._newest()),)
        if kind is FrameKind.DATA:
            return () if self._waiting else (self._shift(frame, self._newest()),)
        if self._waiting:
            return self._start(frame)
        if kind is FrameKind.VIDEO and self._need_key:
            if not frame.keyframe:
                return ()  # the cut started on audio: video joins at a keyframe
            self._need_key = False
            held = self._held.pop(FrameKind.VIDEO, None)
            out = self._rebased(frame)
            if held is not None and out:
                return (self._shift(held, out[0].timestamp), *out)
            return out
        return self._rebased(frame)

    def _rebased(self, frame: Frame) -> tuple[Frame, ...]:
        ts = frame.timestamp
        last_in = self._last_in.get(frame.kind)
        if last_in is not None and (
                ts < last_in - (0 if self._rebase_jumps else _JUMP_BACK_MS)
                or (self._rebase_jumps and ts > last_in + _JUMP_AHEAD_MS)):
            # A fallback went back in its own track (a file looping) or leapt; a publisher's
            # clock went back (an encoder reset, a 32-bit wrap): a new cut, time goes on.
            self._offset = _on_grid(self._newest() + self._step - ts)
            self._last_in.clear()
            self._on_cut(True)
        elif last_in is not None and frame.kind is FrameKind.VIDEO and 0 < ts - last_in < 200:
            self._step = ts - last_in
        self._last_in[frame.kind] = ts
        shifted = ts + self._offset
        if shifted < self._last.get(frame.kind, shifted):
            return ()  # would go backwards in its track (audio led video at the cut)
        self._last[frame.kind] = shifted
        return (self._shift(frame, shifted),)

    def _start(self, frame: Frame) -> tuple[Frame, ...]:
        """The new source's first frame: a video keyframe, or audio once the source has sent
        ``AUDIO_ONLY_AFTER_MS`` of it without one (an audio-only source)."""
        if frame.kind is FrameKind.VIDEO:
            if not frame.keyframe:
                return ()
        else:
            if self._audio_since is None:
                self._audio_since = frame.timestamp
            if frame.timestamp - self._audio_since < AUDIO_ONLY_AFTER_MS:
                return ()
        self._offset = _on_grid(self._newest() + self._step - frame.timestamp) \
            if self._last else -frame.timestamp
        base = frame.timestamp + self._offset
        self._waiting = False
        self._last_in[frame.kind] = frame.timestamp
        video = frame.kind is FrameKind.VIDEO
        self._need_key = not video
        self._on_cut(video)
        held = [self._shift(f, base) for kind, f in self._held.items()
                if video or kind is not FrameKind.VIDEO]
        self._held = {} if video else {k: f for k, f in self._held.items()
                                       if k is FrameKind.VIDEO}
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
