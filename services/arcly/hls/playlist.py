"""Live HLS playlists (RFC 8216)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .segmenter import Segment


def render_playlist(segments: Sequence[Segment], *, target: float, ended: bool,
                    suffix: str = "") -> str:
    """A media playlist over ``segments`` (contiguous sequence numbers, oldest first)."""
    longest = max([target, *(s.duration for s in segments)])
    lines = ["#EXTM3U", "#EXT-X-VERSION:3",
             f"#EXT-X-TARGETDURATION:{math.ceil(round(longest, 3))}"]
    if segments:
        lines.append(f"#EXT-X-MEDIA-SEQUENCE:{segments[0].sequence}")
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{segments[0].discontinuity}")
    previous: Segment | None = None
    for segment in segments:
        if previous is not None and segment.discontinuity != previous.discontinuity:
            lines.append("#EXT-X-DISCONTINUITY")
        lines.append(f"#EXTINF:{segment.duration:.3f},")
        lines.append(segment.uri + suffix)
        previous = segment
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"
