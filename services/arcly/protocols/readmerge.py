"""Merged reads for publishers: on a busy node, read each publisher's socket at most once per
interval (SRS calls this "mr", merged read).

A publisher sends every frame as it is encoded: 70-80 small writes a second for a 30 fps
stream with AAC audio, and reading them one by one costs the node an event-loop wake-up, a
``read`` system call, a buffer and a pass through the chunk decoder per frame. After a small
read the merger pauses the socket and resumes it at the next tick, so the kernel gathers the
frames of the interval and one read takes them all. What it buys (``bench/streaming.py``,
ingest of 100 publishers): about half the node's CPU per ingested GB. What it costs: each
frame reaches viewers up to one interval later.

The interval grows with the publishers on the listener: none below ``MERGE_FROM`` (a small
node reads at once), then ``ceiling x (publishers - MERGE_FROM) / (MERGE_TO - MERGE_FROM)``
but at least ``MERGE_MIN``, reaching the ceiling (``--read-merge-max-ms``) at ``MERGE_TO``. A
read of ``MERGE_BELOW`` bytes or more is never held (a high-bitrate publisher whose backlog one
read did not drain goes on being read), and nothing is held before the publish started.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("arcly.rtmp")

DEFAULT_READ_MERGE_MAX = 0.100  # the interval's ceiling (s); SRS's merged read defaults to 350 ms
MERGE_FROM = 20  # publishers from which reads are merged ...
MERGE_TO = 100  # ... at the full interval from here
MERGE_MIN = 0.020  # the shortest interval worth a pause and a resume
MERGE_BELOW = 64 * 1024  # a read this large may have more behind it: not held


def merge_interval(ceiling: float, publishers: int) -> float:
    """The read interval for ``publishers`` on the listener (0: read at once).

    >>> [merge_interval(0.1, n) for n in (10, 20, 60, 100, 500)]
    [0.0, 0.02, 0.05, 0.1, 0.1]
    >>> merge_interval(0.0, 500)
    0.0
    """
    if ceiling <= 0 or publishers < MERGE_FROM:
        return 0.0
    share = min(1.0, (publishers - MERGE_FROM) / (MERGE_TO - MERGE_FROM))
    return round(min(ceiling, max(MERGE_MIN, ceiling * share)), 6)


class ReadMerger:
    """Holds paused publisher sockets until the next tick (one timer for all of them)."""

    __slots__ = ("_held", "_publishers", "_timer", "ceiling", "interval")

    def __init__(self, ceiling: float = DEFAULT_READ_MERGE_MAX) -> None:
        self.ceiling = ceiling
        self.interval = 0.0  # the current one; 0 while reads are not merged
        self._publishers = 0
        self._held: list[Callable[[], None]] = []
        self._timer: asyncio.TimerHandle | None = None

    def joined(self) -> None:
        """A publish started on the listener."""
        self._publishers += 1
        self.interval = merge_interval(self.ceiling, self._publishers)

    def left(self) -> None:
        self._publishers = max(0, self._publishers - 1)
        self.interval = merge_interval(self.ceiling, self._publishers)
        if not self.interval:
            self.release()

    def hold(self, transport: asyncio.ReadTransport, resume: Callable[[], None]) -> None:
        """Pause ``transport``; ``resume`` is called at the next tick (it decides whether the
        connection still wants reading resumed)."""
        transport.pause_reading()
        self._held.append(resume)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self.release)

    def release(self) -> None:
        """Resume every held socket now (the tick; also when merging stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, []
        for resume in held:
            try:
                resume()
            except Exception:  # one connection's failure must not leave the others paused
                log.exception("read merge: resuming a publisher failed")
