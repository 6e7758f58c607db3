"""Live HLS media playlists: RFC 8216 (MPEG-TS, fMP4) and RFC 8216bis Low-Latency HLS."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .segmenter import Part, Segment

PARTS_KEPT_FOR = 3  # target durations from the end: older segments are listed without parts


@dataclass(frozen=True, slots=True)
class LowLatency:
    """What a Low-Latency playlist adds: the part target (seconds), the parts of the segment
    being cut (``pending``: its sequence, discontinuity and init segment), and the part the
    next request will get (``EXT-X-PRELOAD-HINT``; None once the stream ended)."""

    part_target: float
    pending: Sequence[Part] = ()
    pending_discontinuity: int = 0
    pending_init: str = ""
    next_part: str | None = None


def render_playlist(segments: Sequence[Segment], *, target: float, ended: bool,
                    suffix: str = "", low_latency: LowLatency | None = None,
                    playlist_type: str | None = None) -> str:
    """A media playlist over ``segments`` (contiguous sequence numbers, oldest first).
    ``playlist_type``: ``EVENT`` or ``VOD`` (recordings)."""
    fmp4 = any(s.init for s in segments) or bool(low_latency and low_latency.pending_init)
    longest = max([target, *(s.duration for s in segments)])
    version = 9 if low_latency else 7 if fmp4 else 3
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{version}",
             f"#EXT-X-TARGETDURATION:{math.ceil(round(longest, 3))}"]
    if playlist_type:
        lines.insert(2, f"#EXT-X-PLAYLIST-TYPE:{playlist_type}")
    if low_latency is not None:
        part_target = max([low_latency.part_target, *(p.duration for p in low_latency.pending),
                           *(p.duration for s in segments for p in s.parts)])
        part_target = math.ceil(part_target * 1000) / 1000
        lines.append(f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
                     f"PART-HOLD-BACK={3 * part_target:.3f}")
        lines.append(f"#EXT-X-PART-INF:PART-TARGET={part_target:.3f}")
    pending = low_latency.pending if low_latency else ()
    first = segments[0] if segments else None
    sequence = first.sequence if first else pending[0].sequence if pending else 0
    discontinuity = first.discontinuity if first else (
        low_latency.pending_discontinuity if low_latency else 0)
    lines.append(f"#EXT-X-MEDIA-SEQUENCE:{sequence}")
    lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{discontinuity}")
    # Parts are listed for the segments near the end only (RFC 8216bis 4.4.4.9).
    with_parts = _segments_with_parts(segments, target) if low_latency else 0
    init = ""
    previous: int | None = None
    for index, segment in enumerate(segments):
        if previous is not None and segment.discontinuity != previous:
            lines.append("#EXT-X-DISCONTINUITY")
        if segment.init and segment.init != init:
            init = segment.init
            lines.append(f'#EXT-X-MAP:URI="{init}{suffix}"')
        if index >= len(segments) - with_parts:
            lines += _parts(segment.parts, suffix)
        lines.append(f"#EXTINF:{segment.duration:.3f},")
        lines.append(segment.uri + suffix)
        previous = segment.discontinuity
    if low_latency is not None and pending:
        if previous is not None and low_latency.pending_discontinuity != previous:
            lines.append("#EXT-X-DISCONTINUITY")
        if low_latency.pending_init != init:
            lines.append(f'#EXT-X-MAP:URI="{low_latency.pending_init}{suffix}"')
        lines += _parts(pending, suffix)
    if low_latency is not None and low_latency.next_part and not ended:
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{low_latency.next_part}{suffix}"')
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def _parts(parts: Sequence[Part], suffix: str) -> list[str]:
    return [f'#EXT-X-PART:DURATION={p.duration:.3f},URI="{p.uri}{suffix}"'
            + (",INDEPENDENT=YES" if p.independent else "") for p in parts]


def _segments_with_parts(segments: Sequence[Segment], target: float) -> int:
    """How many of the last segments lie within ``PARTS_KEPT_FOR`` target durations of the
    end (at least one)."""
    total, count = 0.0, 0
    for segment in reversed(segments):
        if count and total + segment.duration > PARTS_KEPT_FOR * target:
            break
        total += segment.duration
        count += 1
    return count
