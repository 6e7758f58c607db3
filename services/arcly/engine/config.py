"""Kernel configuration: one frozen object, defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Tunables of the media kernel.

    ``idle_timeout``: seconds without a frame before the reaper ends a publish (None: never).
    ``gop_max_frames`` / ``gop_max_bytes``: cap of the cached GOP; past it the cache holds only
    configuration until the next keyframe.
    ``viewer_backlog_frames`` / ``viewer_backlog_bytes``: a viewer whose pending frames exceed
    either cap skips to the next keyframe; ``viewer_max_skips`` skips within
    ``viewer_skip_window`` seconds disconnect it.
    ``shutdown_grace``: seconds handlers get to wind down after shutdown before being cancelled.
    ``segment_target``: seconds; the stream's segment timeline (HLS) groups GOPs to about this.
    ``part_target``: seconds; segments are cut into parts of at most this (Low-Latency HLS);
    0: no parts.
    ``upstream_linger``: seconds a stream pulled from an ``Upstream`` stays open after its last
    subscriber left (a viewer hopping back does not pay for a new upstream).
    ``stale_publisher``: a new publish of a key whose publisher has sent nothing for this many
    seconds replaces it (a broadcaster reconnecting after a network blip, before the old
    connection noticed it was dead); a live publisher is never replaced. None: never.
    ``max_on_demand_fallbacks``: on-demand fallbacks (keys nobody has published, fed from
    their app's fallback because a viewer asked) running at once; past it such a key is not
    found, so a client asking for made-up names cannot start streams without end.
    """

    idle_timeout: float | None = 30.0
    gop_max_frames: int = 1024
    gop_max_bytes: int = 16 * 1024 * 1024
    viewer_backlog_frames: int = 1024
    viewer_backlog_bytes: int = 8 * 1024 * 1024
    viewer_max_skips: int = 3
    viewer_skip_window: float = 30.0
    shutdown_grace: float = 25.0
    segment_target: float = 2.0
    part_target: float = 0.2
    upstream_linger: float = 5.0
    stale_publisher: float | None = 2.0
    max_on_demand_fallbacks: int = 100

    def __post_init__(self) -> None:
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive or None")
        if self.segment_target <= 0:
            raise ValueError("segment_target must be positive")
        if not 0 <= self.part_target <= self.segment_target:
            raise ValueError("part_target must be between 0 and segment_target")
        for name in ("gop_max_frames", "gop_max_bytes", "viewer_backlog_frames",
                     "viewer_backlog_bytes", "viewer_max_skips", "max_on_demand_fallbacks"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
