"""fMP4 parts and segments for (Low-Latency) HLS: identical on every node, parts within the part
target, INDEPENDENT exactly where a part starts with a keyframe; LL playlists (RFC 8216bis)."""

from __future__ import annotations

import asyncio

import m3u8
from hypothesis import given, settings
from hypothesis import strategies as st

from arcly.engine import EngineConfig, Frame, FrameKind, SegmentMark
from arcly.hls.cmaf import CmafSegmenter
from arcly.hls.playlist import LowLatency, render_playlist
from arcly.hls.segmenter import Part, Segment
from arcly.media.flv import make_frame
from tests.unit.hls.test_segmenter import (
    AAC_CONFIG,
    AVC_CONFIG,
    audio,
    replay,
    sessions,
    timeline,
    video,
)

PART_MS = 200


async def run_cmaf(sessions_frames: list[list[Frame]], join_after_ms: int
                   ) -> tuple[list[Part | Segment], list[Part | Segment], list[Frame]]:
    """An early and a late CMAF segmenter over the same publishes; also every stamped frame."""
    early, late = CmafSegmenter(), CmafSegmenter()
    early_out: list[Part | Segment] = []
    late_out: list[Part | Segment] = []
    stamped: list[Frame] = []

    def take_early(frame: Frame) -> None:
        stamped.append(frame)
        early_out.extend(early.feed(frame))

    def ended() -> None:
        early_out.extend(early.finish())
        late_out.extend(late.finish())

    await replay(sessions_frames, join_after_ms,
                 EngineConfig(segment_target=2.0, part_target=PART_MS / 1000), take_early,
                 lambda frame: late_out.extend(late.feed(frame)), ended)
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


def test_a_late_node_skips_a_segment_whose_configuration_changed_after_its_start() -> None:
    """The audio header arrives 100 ms into a segment: the node that saw it cuts that segment
    without audio; a node joining later gets the header before the cached GOP (the kernel's
    snapshot) and must not cut the same URIs with audio."""
    frames = [make_frame(FrameKind.VIDEO, 0, AVC_CONFIG)]
    for n, ts in enumerate(range(0, 8000, 33)):
        frames.append(video(ts, ts % 990 == 0, n))
        if ts == 2079:
            frames.append(make_frame(FrameKind.AUDIO, ts, AAC_CONFIG))
        if ts > 2079:
            frames.append(audio(ts + 5, n))
    early, late, _ = asyncio.run(run_cmaf([frames], 2500))
    by_uri = {item.uri: item for item in early}
    late_segments = [s for s in late if isinstance(s, Segment)]
    assert late_segments and all(s.uri in by_uri for s in late_segments[:-1])
    for item in late:
        if item.uri in by_uri:
            assert item.data == by_uri[item.uri].data, f"{item.uri} differs"
    inits = {s.init for s in early if isinstance(s, Segment)}
    assert len(inits) == 2, "a new init segment (with audio) from the next keyframe on"


def test_data_frames_neither_open_parts_nor_break_the_timeline() -> None:
    frames = [make_frame(FrameKind.VIDEO, 0, AVC_CONFIG), make_frame(FrameKind.AUDIO, 0,
                                                                     AAC_CONFIG)]
    for n, ts in enumerate(range(0, 6000, 33)):
        frames.append(video(ts, ts % 1980 == 0, n))
        frames.append(audio(ts + 5, n))
        if n % 20 == 7:  # a cue point with a timestamp of its own (0)
            frames.append(make_frame(FrameKind.DATA, 0, b"\x02\x00\x0aonCuePoint"))
    early, _, _ = asyncio.run(run_cmaf([frames], 10**9))
    segments = [s for s in early if isinstance(s, Segment)]
    assert len({s.discontinuity for s in segments}) == 1, "no discontinuity from cue points"
    for segment in segments:
        assert [p.index for p in segment.parts] == list(range(len(segment.parts)))
        assert all(p.duration >= 0.1 for p in segment.parts[:-1])
