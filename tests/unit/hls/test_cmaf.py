"""fMP4 parts and segments for (Low-Latency) HLS: identical on every node, parts within the part
target, INDEPENDENT exactly where a part starts with a keyframe; LL playlists (RFC 8216bis)."""

from __future__ import annotations

import asyncio

import m3u8
from hypothesis import given, settings
from hypothesis import strategies as st

from arcly.engine import Engine, EngineConfig, Frame, FrameKind, SegmentMark
from arcly.hls.cmaf import CmafSegmenter
from arcly.hls.playlist import LowLatency, render_playlist
from arcly.hls.segmenter import Part, Segment
from tests.unit.hls.test_segmenter import KEY, sessions, timeline

PART_MS = 200


async def run_cmaf(sessions_frames: list[list[Frame]], join_after_ms: int
                   ) -> tuple[list[Part | Segment], list[Part | Segment], list[Frame]]:
    """An early and a late CMAF segmenter over the same publishes; also every stamped frame."""
    engine = Engine(EngineConfig(segment_target=2.0, part_target=PART_MS / 1000))
    early, late = CmafSegmenter(), CmafSegmenter()
    early_out: list[Part | Segment] = []
    late_out: list[Part | Segment] = []
    stamped: list[Frame] = []
    late_sub = None
    elapsed = 0
    for frames in sessions_frames:
        handle = await engine.start_publish(KEY)
        early_sub = await engine.subscribe(KEY)
        if late_sub is not None:
            late_sub = await engine.subscribe(KEY)
        previous = frames[0].timestamp
        for frame in frames:
            elapsed += max(0, min(frame.timestamp - previous, 100))
            previous = frame.timestamp
            handle.publish_frame(frame)
            if late_sub is None and elapsed >= join_after_ms:
                late_sub = await engine.subscribe(KEY)  # joins with the GOP cache
            for sub, cutter, out in ((early_sub, early, early_out), (late_sub, late, late_out)):
                if sub is not None:
                    for f in await sub.next_batch():
                        if cutter is early:
                            stamped.append(f)
                        out.extend(cutter.feed(f))
        await engine.end_publish(KEY)
        early_out += early.finish()
        late_out += late.finish()
    return early_out, late_out, stamped


@settings(max_examples=40, deadline=None)
@given(sessions, st.integers(7000, 12000))
def test_a_late_node_cuts_the_same_parts_and_segments(spec: list, join_after: int) -> None:
    early, late, _ = asyncio.run(run_cmaf(timeline(spec), join_after))
    by_uri = {item.uri: item for item in early}
    assert len(by_uri) == len(early), "URIs are unique"
    common = [item for item in late if item.uri in by_uri]
    assert sum(isinstance(i, Segment) for i in common) >= 2
    for item in late:
        twin = by_uri.get(item.uri)
        if twin is None:
            assert item is late[-1] or isinstance(item, Part), "only a stream's tail differs"
            continue
        assert item.data == twin.data and item.duration == twin.duration
    for segment in (i for i in early if isinstance(i, Segment)):
        assert segment.ext == "m4s" and segment.init.startswith(f"init-{segment.session}-")
        assert segment.data == b"".join(p.data for p in segment.parts), "a segment = its parts"
        assert segment.parts[0].index == 0 and segment.parts[0].independent
        assert round(sum(p.duration for p in segment.parts), 3) == segment.duration


@settings(max_examples=30, deadline=None)
@given(sessions)
def test_parts_stay_within_the_target_and_independent_means_a_keyframe_first(
        spec: list) -> None:
    early, _, stamped = asyncio.run(run_cmaf(timeline(spec), 10**9))
    first_video: dict[tuple[int, int, int], Frame] = {}
    for frame in stamped:
        mark = frame.mark
        if mark is not None and not frame.config and frame.kind is FrameKind.VIDEO:
            first_video.setdefault((mark.session, mark.sequence, mark.part), frame)
    parts = [item for item in early if isinstance(item, Part)]
    assert parts
    for part in parts:
        assert part.duration <= PART_MS / 1000, f"{part.uri} lasts {part.duration}"
        frame = first_video.get((part.session, part.sequence, part.index))
        assert part.independent == (frame is not None and frame.keyframe), part.uri
        assert part.data[4:8] == b"moof"


def _part(sequence: int, index: int, duration: float = 0.2, independent: bool = False) -> Part:
    return Part(sequence, index, 5, 0, duration, independent, b"")


def _segment(sequence: int, parts: int = 10) -> Segment:
    return Segment(sequence, 0, 5, 0, 2.0, b"", ext="m4s", init="init-5-0000abcd.mp4",
                   parts=tuple(_part(sequence, i, independent=i == 0) for i in range(parts)))


def test_a_low_latency_playlist_names_parts_near_the_end_and_the_next_part() -> None:
    segments = [_segment(n) for n in range(10, 16)]
    pending = [_part(16, 0, independent=True), _part(16, 1)]
    text = render_playlist(segments, target=2.0, ended=False, suffix="?key=k",
                           low_latency=LowLatency(0.2, pending, 0, "init-5-0000abcd.mp4",
                                                  "5-16.2.m4s"))
    lines = text.splitlines()
    assert lines[:5] == ["#EXTM3U", "#EXT-X-VERSION:9", "#EXT-X-TARGETDURATION:2",
                         "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600",
                         "#EXT-X-PART-INF:PART-TARGET=0.200"]
    assert lines.count('#EXT-X-MAP:URI="init-5-0000abcd.mp4?key=k"') == 1
    assert lines[-1] == '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="5-16.2.m4s?key=k"'
    parts = [line for line in lines if line.startswith("#EXT-X-PART:")]
    # The last three target durations (3 segments of 2 s) carry parts, plus the pending ones.
    assert len(parts) == 3 * 10 + 2
    assert parts[0] == '#EXT-X-PART:DURATION=0.200,URI="5-13.0.m4s?key=k",INDEPENDENT=YES'
    assert parts[1] == '#EXT-X-PART:DURATION=0.200,URI="5-13.1.m4s?key=k"'
    playlist = m3u8.loads(text)
    *whole, growing = playlist.segments  # the parts of the segment being cut come last
    assert playlist.media_sequence == 10 and len(whole) == 6 and growing.uri is None
    assert [p.uri for p in growing.parts] == ["5-16.0.m4s?key=k", "5-16.1.m4s?key=k"]
    assert playlist.server_control.can_block_reload == "YES"
    assert playlist.part_inf.part_target == 0.2
    assert playlist.preload_hint.uri == "5-16.2.m4s?key=k"
    assert [p.uri for p in whole[-1].parts][-1] == "5-15.9.m4s?key=k"


def test_an_ended_low_latency_playlist_has_no_hint_and_a_part_only_playlist_starts_at_once(
        ) -> None:
    ended = render_playlist([_segment(1)], target=2.0, ended=True,
                            low_latency=LowLatency(0.2, (), 0, "", None))
    assert ended.endswith("#EXT-X-ENDLIST\n") and "PRELOAD-HINT" not in ended
    first = render_playlist([], target=2.0, ended=False, low_latency=LowLatency(
        0.2, [_part(0, 0, independent=True)], 0, "init-5-1.mp4", "5-0.1.m4s"))
    assert "#EXT-X-MEDIA-SEQUENCE:0" in first and '#EXT-X-MAP:URI="init-5-1.mp4"' in first
    assert m3u8.loads(first).segments[0].parts[0].uri == "5-0.0.m4s"


def test_a_longer_part_raises_the_declared_part_target_rather_than_break_the_rule() -> None:
    text = render_playlist([], target=2.0, ended=False, low_latency=LowLatency(
        0.2, [_part(0, 0, 0.2105, True)], 0, "init-5-1.mp4", "5-0.1.m4s"))
    assert "#EXT-X-PART-INF:PART-TARGET=0.211" in text


def test_marks_are_one_object_per_part() -> None:
    mark = SegmentMark(1, 0, 100, 7, 2, 500, False)
    assert (mark.part, mark.part_start, mark.independent) == (2, 500, False)
    assert SegmentMark(1, 0, 100, 7) == SegmentMark(1, 0, 100, 7, 0, 100, True), \
        "part 0 starts with its segment (marks of origins without parts)"
