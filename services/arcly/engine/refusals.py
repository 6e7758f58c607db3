"""Refusals by limit: counted, and logged at most once a second per limit (a flood of refused
clients must not flood the log)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Refusals:
    """``hit(limit, detail)`` counts a refusal in ``counts`` and logs ``limit hit limit=…
    {detail} refused_total=…`` on ``log``, once a second per limit."""

    __slots__ = ("_clock", "_log", "_logged", "counts")

    def __init__(self, log: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.counts: dict[str, int] = {}
        self._log = log
        self._clock = clock
        self._logged: dict[str, float] = {}

    def hit(self, limit: str, detail: str) -> None:
        count = self.counts[limit] = self.counts.get(limit, 0) + 1
        now = self._clock()
        if now - self._logged.get(limit, float("-inf")) >= 1.0:
            self._logged[limit] = now
            self._log.warning("limit hit limit=%s %s refused_total=%d", limit, detail, count)
