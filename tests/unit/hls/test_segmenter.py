"""Segment boundaries, sequence numbers and bytes are a pure function of the stream's frames."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import m3u8
from hypothesis import given, settings
from hypothesis import strategies as st

from arcly.engine import Engine, EngineConfig, Frame, FrameKind, StreamKey
from arcly.hls import Segment, Segmenter, render_playlist
from arcly.media.flv import make_frame

KEY = StreamKey("live", "cam")
SPS = bytes.fromhex("6764001facd9405005bb011000000300100000030300f1831996")
PPS = bytes.fromhex("68ebecb22c")
AVC_CONFIG = (b"\x17\x00\x00\x00\x00" + bytes([1, SPS[1], SPS[2], SPS[3], 0xFF, 0xE1])
              + struct.pack(">H", len(SPS)) + SPS + b"\x01" + struct.pack(">H", len(PPS)) + PPS)
AAC_CONFIG = b"\xaf\x00\x12\x10"


def video(ts: int, key: bool, n: int) -> Frame:
    nal = bytes([0x65 if key else 0x41]) + n.to_bytes(4, "big") * 30
    body = (b"\x17" if key else b"\x27") + b"\x01\x00\x00\x28" + struct.pack(">I", len(nal)) + nal
    return make_frame(FrameKind.VIDEO, ts & 0xFFFFFFFF, body)


def audio(ts: int, n: int) -> Frame:
    return make_frame(FrameKind.AUDIO, ts & 0xFFFFFFFF, b"\xaf\x01" + n.to_bytes(2, "big") * 50)


# A session: (start timestamp, list of GOP lengths in frames, timestamp jump after GOP index).
sessions = st.lists(st.tuples(
    st.sampled_from([0, 1000, 2**32 - 6000, 2**31]),
    st.lists(st.integers(10, 90), min_size=8, max_size=14),
    st.one_of(st.none(), st.tuples(st.integers(1, 6), st.sampled_from([-50_000, 40_000])))),
    min_size=1, max_size=2)


def timeline(spec: list[tuple[int, list[int], tuple[int, int] | None]]) -> list[list[Frame]]:
    """Frames per publish session, 30 fps video with interleaved ~43 fps audio."""
    out = []
    n = 0
    for start, gops, jump in spec:
        frames = [make_frame(FrameKind.VIDEO, start & 0xFFFFFFFF, AVC_CONFIG),
                  make_frame(FrameKind.AUDIO, start & 0xFFFFFFFF, AAC_CONFIG)]
        ts = start
        played = 0
        g = 0
        while played < 20_000:  # cycle the GOP pattern for at least 20 s of media
            length = gops[g % len(gops)]
            if jump is not None and g == jump[0]:
                ts += jump[1]
            g += 1
            played += length * 33
            for i in range(length):
                n += 1
                frames.append(video(ts, i == 0, n))
                if n % 3:
                    frames.append(audio(ts + 5, n))
                ts += 33
        out.append(frames)
    return out


async def replay(sessions_frames: list[list[Frame]], join_after_ms: int, config: EngineConfig,
                 early: Callable[[Frame], None], late: Callable[[Frame], None],
                 ended: Callable[[], None]) -> None:
    """Publish the sessions through a kernel: ``early`` gets every frame a subscriber from the
    start gets, ``late`` those of one that joins after ``join_after_ms`` of media (with the GOP
    cache, as a node that starts segmenting late); ``ended`` after each session."""
    engine = Engine(config)
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
            for sub, take in ((early_sub, early), (late_sub, late)):
                if sub is not None:
                    for f in await sub.next_batch():
                        take(f)
        await engine.end_publish(KEY)
        ended()


async def run_segmenters(sessions_frames: list[list[Frame]], join_after_ms: int
                         ) -> tuple[list[Segment], list[Segment]]:
    early, late = Segmenter(), Segmenter()
    early_out: list[Segment] = []
    late_out: list[Segment] = []

    def taker(segmenter: Segmenter, out: list[Segment]) -> Callable[[Frame], None]:
        def take(frame: Frame) -> None:
            done = segmenter.feed(frame)
            if done:
                out.append(done)
        return take

    def ended() -> None:
        for segmenter, out in ((early, early_out), (late, late_out)):
            done = segmenter.finish()
            if done:
                out.append(done)

    await replay(sessions_frames, join_after_ms, EngineConfig(segment_target=2.0),
                 taker(early, early_out), taker(late, late_out), ended)
    return early_out, late_out


@settings(max_examples=60, deadline=None)
@given(sessions, st.integers(7000, 12000))
def test_late_segmenter_produces_identical_uris_and_bytes(spec: list, join_after: int) -> None:
    early, late = asyncio.run(run_segmenters(timeline(spec), join_after))
    by_uri = {s.uri: s for s in early}
    assert len(by_uri) == len(early), "URIs are unique"
    common = [s for s in late if s.uri in by_uri]
    # Joining after up to 12 s of >= 20 s, with GOPs up to 3 s (segments up to 5 s): at least
    # two whole segments are still ahead of the late segmenter.
    assert len(common) >= 2, "the segmenters share several segments"
    for segment in late[:-1] if late and late[-1].uri not in by_uri else late:
        assert segment.uri in by_uri, "a late segment the early one does not have"
    for segment in common:
        twin = by_uri[segment.uri]
        assert segment.data == twin.data
        assert (segment.sequence, segment.discontinuity, segment.duration) == (
            twin.sequence, twin.discontinuity, twin.duration)
    sequences = [s.sequence for s in early]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), \
        "sequence numbers are contiguous, also across republish"


@settings(max_examples=30, deadline=None)
@given(sessions)
def test_segments_start_with_keyframes_and_respect_target_plus_one_gop(spec: list) -> None:
    frames = timeline(spec)
    early, _ = asyncio.run(run_segmenters(frames, 10**9))
    longest_gop = max(max(gops) for _, gops, _ in spec) * 33 / 1000
    for segment in early:
        assert segment.data[:188][0] == 0x47
        assert segment.duration <= 2.0 + longest_gop + 0.05
        video_start = _first_video_packet(segment.data)
        assert video_start[5] & 0x40, "first video packet flags random access"
    discontinuities = [s.discontinuity for s in early]
    expected_jumps = sum(1 for _, _, jump in spec if jump) + (len(spec) - 1)
    assert discontinuities[-1] - discontinuities[0] >= expected_jumps - 1


def _first_video_packet(data: bytes) -> bytes:
    for pos in range(0, len(data), 188):
        packet = data[pos:pos + 188]
        pid = ((packet[1] & 0x1F) << 8) | packet[2]
        if pid == 0x100 and packet[1] & 0x40:
            return packet
    raise AssertionError("no video PES start")


def test_playlist_is_valid_rfc8216() -> None:
    segments = [Segment(7, 0, 1, 0, 2.0, b""), Segment(8, 0, 1, 0, 2.5, b""),
                Segment(9, 1, 1, 0, 1.9, b"")]
    text = render_playlist(segments, target=2.0, ended=True, suffix="?token=a")
    parsed = m3u8.loads(text)
    assert parsed.media_sequence == 7
    assert parsed.target_duration == 3  # never below the longest segment, rounded up
    assert parsed.is_endlist
    assert [s.uri for s in parsed.segments] == ["1-7.ts?token=a", "1-8.ts?token=a",
                                                 "1-9.ts?token=a"]
    assert [s.discontinuity for s in parsed.segments] == [False, False, True]
    assert parsed.discontinuity_sequence == 0
