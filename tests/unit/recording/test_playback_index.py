"""Reading recordings back, on synthetic FLVs laid out as the recorder writes them: the tag index
(keyframes, sequence headers, duration, a torn tail, scanning on after growth), cutting a
wall-clock window across recordings, and HLS VOD segments remuxed from the FLV."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from arcly.engine import FrameKind, StreamKey
from arcly.media import amf0, flv
from arcly.media.tsdemux import TsDemuxer
from arcly.recording.cut import CutReader, Source, plan_cut
from arcly.recording.flvindex import IndexCache, scan
from arcly.recording.library import Library, name_start
from arcly.recording.storage import FilesystemStorage
from arcly.recording.vod import remux_segment, segment_sequence, vod_playlist, vod_segments

# libx264's 640x360 Constrained Baseline sequence header, as ffmpeg writes it into FLV.
AVC_HEADER = bytes.fromhex(
    "1700000000" "0142c01effe1" "0019" "6742c01ed900a02ff970110000030001000003003c0f162e48"
    "01" "0005" "68cb83cb20")
AAC_HEADER = b"\xaf\x00\x12\x10"  # AAC-LC, 44.1 kHz, stereo
FRAME_MS, AUDIO_MS = 33, 23
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
KEY = StreamKey("live", "cam")


def _nal(kind: int, size: int) -> bytes:
    unit = bytes([kind]) + bytes(size)
    return len(unit).to_bytes(4, "big") + unit


def video_body(keyframe: bool, size: int = 400) -> bytes:
    return (b"\x17\x01" if keyframe else b"\x27\x01") + b"\x00\x00\x00" + \
        _nal(0x65 if keyframe else 0x41, size)


@dataclass(frozen=True)
class Layout:
    """What a synthetic recording holds: ``seconds`` of 30 fps video (a keyframe every
    ``gop_ms``) and AAC audio, from timestamp 0."""

    seconds: float
    gop_ms: int = 2000
    audio: bool = True
    video: bool = True

    def events(self) -> list[tuple[int, int, bytes]]:
        """(timestamp, tag type, body) in the order the recorder would write them."""
        end = int(self.seconds * 1000)
        found = [(ts, flv.TAG_VIDEO, video_body(ts % self.gop_ms < FRAME_MS))
                 for ts in range(0, end, FRAME_MS)] if self.video else []
        if self.audio:
            found += [(ts, flv.TAG_AUDIO, b"\xaf\x01" + bytes(200))
                      for ts in range(0, end, AUDIO_MS)]
        return sorted(found, key=lambda e: (e[0], -e[1]))

    @property
    def end_ts(self) -> int:
        """Where the media ends: after the last video or audio frame."""
        ends = [ts + (FRAME_MS if tag_type == flv.TAG_VIDEO else AUDIO_MS)
                for ts, tag_type, _ in self.events()]
        return max(ends, default=0)


def recording_bytes(layout: Layout, *, start: float | None = T0, finalized: bool = True) -> bytes:
    events = layout.events()
    fields = amf0.EcmaArray(duration=layout.end_ts / 1000 if finalized else 0.0,
                            filesize=0.0, width=640.0, height=360.0)
    if start is not None:
        fields["arclyStart"] = start
    out = bytearray(flv.file_header() + flv.encode_tag(
        flv.TAG_SCRIPT, 0, amf0.encode("onMetaData", fields)))
    if layout.video:
        out += flv.encode_tag(flv.TAG_VIDEO, 0, AVC_HEADER)
    if layout.audio:
        out += flv.encode_tag(flv.TAG_AUDIO, 0, AAC_HEADER)
    for ts, tag_type, body in events:
        out += flv.encode_tag(tag_type, ts, body)
    return bytes(out)


def write_recording(root: Path, start: float, layout: Layout, *, key: StreamKey = KEY,
                    session: int = 1, finalized: bool = True, precise: bool = True) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(start))
    path = root / key.app / key.stream / f"{stamp}-{session}.flv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(recording_bytes(layout, start=start if precise else None,
                                     finalized=finalized))
    return path


def read_all(reader: CutReader) -> bytes:
    chunks = []
    while chunk := reader.read():
        chunks.append(chunk)
    return b"".join(chunks)


def output_tags(data: bytes) -> list[flv.Tag]:
    tags, rest = flv.parse_tags(data, flv.parse_header(data))
    assert rest == len(data), "the output is whole tags"
    return tags


# -- the index ----------------------------------------------------------------------------------


def test_scan_finds_keyframes_sequence_headers_and_the_recorders_duration(tmp_path: Path) -> None:
    layout = Layout(10)
    path = write_recording(tmp_path, T0, layout)
    index = scan(path)
    assert [k.timestamp for k in index.keyframes] == [0, 2013, 4026, 6006, 8019]
    assert [c.kind for c in index.configs] == [FrameKind.VIDEO, FrameKind.AUDIO]
    assert index.end == path.stat().st_size and index.has_video and index.has_audio
    assert index.end_ts == layout.end_ts and index.duration == pytest.approx(10.0, abs=0.04)
    assert index.metadata["arclyStart"] == T0
    data = path.read_bytes()
    for keyframe in index.keyframes:  # offsets point at the keyframe tags themselves
        tag = flv.parse_tags(data, keyframe.offset)[0][0]
        assert tag.timestamp == keyframe.timestamp and flv.is_video_keyframe(tag.body)


def test_a_torn_last_tag_ends_the_index_at_the_last_whole_tag(tmp_path: Path) -> None:
    path = write_recording(tmp_path, T0, Layout(4), finalized=False)
    whole = path.stat().st_size
    with path.open("ab") as handle:
        handle.write(flv.encode_tag(flv.TAG_VIDEO, 4000, video_body(True))[:-100])
    index = scan(path)
    assert index.end == whole and index.video_ts < 4000


def test_a_growing_recording_is_scanned_on_from_where_the_last_scan_stopped(
        tmp_path: Path) -> None:
    full = recording_bytes(Layout(8), finalized=False)
    path = tmp_path / "live" / "cam" / "20270115-080000-1.flv"
    path.parent.mkdir(parents=True)
    path.write_bytes(full[:len(full) // 2])
    cache = IndexCache()
    first = cache.get(path)
    assert cache.get(path) is first and cache.scans == 1, "unchanged: not scanned again"
    with path.open("ab") as handle:
        handle.write(full[len(full) // 2:])
    grown = cache.get(path)
    assert cache.scans == 2 and grown.end == len(full) > first.end
    assert grown == scan(path), "scanning on gives what a whole scan gives"


def test_library_lists_recordings_with_precise_starts_and_durations(tmp_path: Path) -> None:
    write_recording(tmp_path, T0, Layout(10), session=1)
    write_recording(tmp_path, T0 + 11.5, Layout(6), session=2, finalized=False)
    write_recording(tmp_path, T0 + 30, Layout(2), session=3, precise=False)
    (tmp_path / "live" / "cam" / "notes.txt").write_text("not a recording")
    library = Library(FilesystemStorage(tmp_path))
    found = library.recordings(KEY)
    assert [r.start for r in found] == [T0, T0 + 11.5, T0 + 30]
    assert [r.duration for r in found] == pytest.approx([10.0, 6.0, 2.0], abs=0.05)
    assert [r.size for r in found] == [r.path.stat().st_size for r in found]
    (listed,) = library.streams()
    assert (listed.key, listed.count, listed.latest) == (KEY, 3, T0 + 30)
    assert name_start("20270115-080000-1.flv") == T0 and name_start("x.flv") is None


# -- cutting windows ----------------------------------------------------------------------------


def _sources(tmp_path: Path) -> list[Source]:
    """Two 10 s recordings with a 1 s gap: [T0, T0+10) and [T0+11, T0+21)."""
    paths = [write_recording(tmp_path, T0, Layout(10), session=1),
             write_recording(tmp_path, T0 + 11, Layout(10), session=2)]
    return [Source(p, start, scan(p)) for p, start in zip(paths, (T0, T0 + 11), strict=True)]


def test_a_window_inside_one_recording_starts_at_the_keyframe_before_it(tmp_path: Path) -> None:
    sources = _sources(tmp_path)
    cut = plan_cut(sources, T0 + 3.0, 2.5)
    assert cut is not None and len(cut.pieces) == 1
    piece = cut.pieces[0]
    assert piece.first.timestamp == 2013 and piece.end_ts == 5500
    assert cut.start == pytest.approx(T0 + 2.013) and cut.duration == pytest.approx(3.487)
    tags = output_tags(read_all(CutReader(cut, chunk_size=4096)))
    video = [t for t in tags if t.tag_type == flv.TAG_VIDEO]
    assert flv.is_video_config(video[0].body) and flv.is_video_keyframe(video[1].body)
    assert video[1].timestamp == 0 and max(t.timestamp for t in tags) < 3487


def test_a_window_across_recordings_continues_with_rebased_timestamps_and_headers_again(
        tmp_path: Path) -> None:
    cut = plan_cut(_sources(tmp_path), T0 + 7.0, 5.0)
    assert cut is not None and [p.first.timestamp for p in cut.pieces] == [6006, 0]
    join = Layout(10).end_ts - 6006  # where the second recording starts in the output
    assert [p.shift for p in cut.pieces] == [0, join]
    assert cut.duration == pytest.approx((join + 1000) / 1000), "the gap is left out"
    tags = output_tags(read_all(CutReader(cut, chunk_size=1000)))
    meta = amf0.decode(tags[0].body)[1]
    assert meta["duration"] == pytest.approx(cut.duration) and meta["width"] == 640.0
    video = [t for t in tags if t.tag_type == flv.TAG_VIDEO]
    assert all(a.timestamp <= b.timestamp for a, b in itertools.pairwise(video))
    configs = [t for t in tags if flv.is_video_config(t.body) or flv.is_audio_config(t.body)]
    assert [t.timestamp for t in configs] == [0, 0, join, join], "sent again at the join"
    after_join = [t for t in video if t.timestamp >= join]
    assert flv.is_video_config(after_join[0].body) and flv.is_video_keyframe(after_join[1].body)
    assert max(t.timestamp for t in tags) < cut.duration * 1000


def test_windows_outside_every_recording_cut_nothing(tmp_path: Path) -> None:
    sources = _sources(tmp_path)
    assert plan_cut(sources, T0 - 60, 30) is None
    assert plan_cut(sources, T0 + 10.2, 0.5) is None, "inside the gap"
    assert plan_cut(sources, T0 + 40, 5) is None
    late = plan_cut(sources, T0 + 10.5, 2.0)  # starts in the gap: the next recording's start
    assert late is not None and late.pieces[0].first.timestamp == 0
    assert late.start == T0 + 11 and late.duration == pytest.approx(1.5)


def test_an_audio_only_recording_is_cut_at_audio_frames(tmp_path: Path) -> None:
    path = write_recording(tmp_path, T0, Layout(6, video=False))
    cut = plan_cut([Source(path, T0, scan(path))], T0 + 2.5, 1.0)
    assert cut is not None and 1500 <= cut.pieces[0].first.timestamp <= 2500
    tags = output_tags(read_all(CutReader(cut)))
    assert {t.tag_type for t in tags} == {flv.TAG_SCRIPT, flv.TAG_AUDIO}


# -- HLS VOD from the FLV ------------------------------------------------------------------------


def test_vod_segments_are_cut_at_keyframes_and_remux_to_mpegts(tmp_path: Path) -> None:
    path = write_recording(tmp_path, T0, Layout(9))
    index = scan(path)
    segments = vod_segments(index, target=2.0)
    assert [s.first.timestamp for s in segments] == [0, 2013, 4026, 6006, 8019]
    assert sum(s.duration for s in segments) == pytest.approx(index.duration)
    assert vod_segments(index, target=2.0, complete=False) == segments[:-1]
    playlist = vod_playlist(segments, 2.0, ended=True, suffix="?key=k")
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and playlist.endswith("#EXT-X-ENDLIST\n")
    assert "0-3.ts?key=k" in playlist and segment_sequence("0-3.ts") == 3
    assert segment_sequence("../0-3.ts") is None and segment_sequence("0-x.ts") is None
    data = remux_segment(path, index, segments[1])
    assert len(data) % 188 == 0 and data[0] == 0x47
    demuxer = TsDemuxer()
    frames = demuxer.feed(data) + demuxer.flush()
    video = [f for f in frames if f.kind is FrameKind.VIDEO and not f.config]
    assert video[0].keyframe and len(video) == len(range(2013, 4026, FRAME_MS)), \
        "every frame of the segment, from its keyframe"
    assert any(f.kind is FrameKind.AUDIO and not f.config for f in frames)


def test_a_recording_without_video_has_no_vod_segments(tmp_path: Path) -> None:
    path = write_recording(tmp_path, T0, Layout(4, video=False))
    assert vod_segments(scan(path), target=2.0) == []
