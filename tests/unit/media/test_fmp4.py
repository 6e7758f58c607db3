"""The fMP4 writer (ISO 14496-12) read back two ways: by a box walker written here (sizes tile,
tfdt/trun/data offsets say what they should) and by the real ffprobe/ffmpeg, which must decode
our parts of an ffmpeg-made FLV (H.264 with B-frames + AAC, cut at keyframes and at 200 ms like
LL-HLS parts) to the very pictures and sound of the source. HEVC goes through enhanced-RTMP tag
bodies built from an ffmpeg-made raw stream (this ffmpeg cannot write HEVC into FLV). The SPS
size parsers are checked against x264/x265 streams, hand-decoded vectors and generated SPSs."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcly.engine import ProtocolError
from arcly.media import codecs, flv, fmp4
from arcly.media.fmp4 import (
    FALLBACK_SIZE,
    NON_SYNC_SAMPLE,
    SYNC_SAMPLE,
    Fmp4Writer,
    Sample,
    avc_sps_size,
    hevc_sps_size,
    video_size,
)
from tests.support.media import load_tags

PART_MS = 200
# The FLV AVC sequence header body libx264 writes for 640x360 Constrained Baseline (from
# test_codecs), and the AudioSpecificConfig of AAC-LC 44.1 kHz stereo.
BASELINE_RECORD = bytes.fromhex("0142c01effe1" "0019" "6742c01ed900a02ff970110000030001000003003c"
                                "0f162e48" "01" "0005" "68cb83cb20")
BASELINE_SPS = BASELINE_RECORD[8:33]
ASC_LC_44100_STEREO = b"\x12\x10"


# -- a box walker -------------------------------------------------------------------------------

# Bytes between a box header and its first child, for the boxes that have children.
CHILDREN_AFTER = {"moov": 0, "trak": 0, "mdia": 0, "minf": 0, "stbl": 0, "mvex": 0, "dinf": 0,
                  "moof": 0, "traf": 0, "stsd": 8, "dref": 8, "avc1": 78, "hvc1": 78,
                  "mp4a": 28}


@dataclass(frozen=True)
class Box:
    kind: str
    offset: int  # of the box header, in the whole file
    raw: bytes

    @property
    def body(self) -> bytes:
        return self.raw[8:]

    def children(self) -> list[Box]:
        skip = 8 + CHILDREN_AFTER[self.kind]
        return walk(self.raw[skip:], self.offset + skip)

    def child(self, kind: str) -> Box:
        found = [c for c in self.children() if c.kind == kind]
        assert len(found) == 1, f"{self.kind} has {len(found)} {kind} boxes"
        return found[0]

    def path(self, path: str) -> Box:
        box = self
        for kind in path.split("/"):
            box = box.child(kind)
        return box

    def u32(self, at: int) -> int:
        return int.from_bytes(self.body[at:at + 4], "big")


def walk(data: bytes, offset: int = 0) -> list[Box]:
    """The boxes of ``data``, whose sizes must tile it exactly — recursively."""
    boxes = []
    pos = 0
    while pos < len(data):
        assert pos + 8 <= len(data), f"box header cut at {offset + pos}"
        size = int.from_bytes(data[pos:pos + 4], "big")
        assert 8 <= size <= len(data) - pos, f"box size {size} at {offset + pos} overruns"
        box = Box(data[pos + 4:pos + 8].decode("latin-1"), offset + pos, data[pos:pos + size])
        if box.kind in CHILDREN_AFTER:
            box.children()  # asserts that the children tile the box
        boxes.append(box)
        pos += size
    return boxes


@dataclass(frozen=True)
class Trun:
    version: int
    flags: int
    data_offset: int
    durations: list[int]
    sizes: list[int]
    sample_flags: list[int]
    cts: list[int]


def parse_trun(box: Box) -> Trun:
    body = box.body
    version, flags = body[0], int.from_bytes(body[1:4], "big")
    assert flags == (0xF01 if version == 1 else 0x701), f"trun flags {flags:#x}"
    count = box.u32(4)
    data_offset = int.from_bytes(body[8:12], "big", signed=True)
    width = 16 if flags & 0x800 else 12
    assert len(body) == 12 + count * width, "trun entries fill the box"
    rows = [body[12 + i * width:12 + (i + 1) * width] for i in range(count)]
    return Trun(version, flags, data_offset,
                [int.from_bytes(r[0:4], "big") for r in rows],
                [int.from_bytes(r[4:8], "big") for r in rows],
                [int.from_bytes(r[8:12], "big") for r in rows],
                [int.from_bytes(r[12:16], "big", signed=True) for r in rows if width == 16])


@dataclass(frozen=True)
class Traf:
    track_id: int
    tfhd_flags: int
    base: int
    trun: Trun


def parse_traf(box: Box) -> Traf:
    tfhd, tfdt, trun = box.children()
    assert (tfhd.kind, tfdt.kind, trun.kind) == ("tfhd", "tfdt", "trun")
    assert len(tfhd.body) == 8, "tfhd: track_ID only"
    assert tfdt.body[0] == 1 and len(tfdt.body) == 12, "tfdt version 1: a 64-bit base"
    return Traf(tfhd.u32(4), tfhd.u32(0) & 0xFFFFFF, int.from_bytes(tfdt.body[4:12], "big"),
                parse_trun(trun))


def parse_fragment(data: bytes, offset: int = 0) -> tuple[int, list[Traf], Box, Box]:
    """(mfhd sequence number, trafs, moof, mdat) of one fragment."""
    moof, mdat = walk(data, offset)
    assert (moof.kind, mdat.kind) == ("moof", "mdat")
    mfhd, *trafs = moof.children()
    assert mfhd.kind == "mfhd" and all(t.kind == "traf" for t in trafs)
    return mfhd.u32(4), [parse_traf(t) for t in trafs], moof, mdat


# -- samples from real media --------------------------------------------------------------------


def flv_samples(path: Path) -> tuple[codecs.VideoConfig, codecs.AacConfig, list[Sample]]:
    """Configs from the sequence headers and one Sample per frame, as the HLS service sees them."""
    video: codecs.VideoConfig | None = None
    audio: codecs.AacConfig | None = None
    samples = []
    for tag in load_tags(path):
        if tag.tag_type == flv.TAG_VIDEO:
            packet = codecs.parse_video(tag.body)
            if packet.is_config:
                video = codecs.parse_video_config(packet)
            elif packet.is_frame:
                samples.append(Sample(True, tag.timestamp, packet.cts,
                                      flv.is_video_keyframe(tag.body), packet.data))
        elif tag.tag_type == flv.TAG_AUDIO and tag.body[0] >> 4 == flv.AUDIO_AAC:
            if tag.body[1] == 0:
                audio = codecs.parse_aac_config(tag.body[2:])
            else:
                samples.append(Sample(False, tag.timestamp, 0, True, tag.body[2:]))
    assert video is not None and audio is not None
    return video, audio, samples


def cut_parts(samples: list[Sample]) -> list[list[Sample]]:
    """LL-HLS-like parts: a new one at each video keyframe, and at the first video frame
    PART_MS or more after the part's start."""
    parts: list[list[Sample]] = []
    for sample in samples:
        if not parts or (sample.video and (sample.keyframe
                                           or sample.dts - parts[-1][0].dts >= PART_MS)):
            parts.append([])
        parts[-1].append(sample)
    return parts


def part_ends(parts: list[list[Sample]], stream_end: int) -> list[int]:
    return [nxt[0].dts for nxt in parts[1:]] + [stream_end]


def write_mp4(path: Path, writer: Fmp4Writer, parts: list[list[Sample]],
              ends: list[int]) -> list[bytes]:
    fragments = [writer.fragment(i + 1, part, end=end)
                 for i, (part, end) in enumerate(zip(parts, ends, strict=True))]
    path.write_bytes(writer.init_segment() + b"".join(fragments))
    return fragments


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=True,
                          timeout=60)


def decoded_frames(ffmpeg: str, path: Path) -> dict[int, list[tuple[str, str]]]:
    """(size, checksum) of every decoded frame by stream index; stderr must stay empty."""
    out = run(ffmpeg, "-hide_banner", "-v", "error", "-i", path, "-f", "framecrc", "-")
    assert out.stderr == "", out.stderr
    frames: dict[int, list[tuple[str, str]]] = {}
    for line in out.stdout.splitlines():
        if not line.startswith("#"):
            stream, _dts, _pts, _duration, size, crc = (f.strip() for f in line.split(","))
            frames.setdefault(int(stream), []).append((size, crc))
    return frames


def probe(ffprobe: str, path: Path, *entries: str) -> dict[str, Any]:
    out = run(ffprobe, "-v", "error", *entries, "-of", "json", path)
    assert out.stderr == "", out.stderr
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


@dataclass(frozen=True)
class Written:
    source: Path
    out: Path
    video: codecs.VideoConfig
    audio: codecs.AacConfig
    samples: list[Sample]
    parts: list[list[Sample]]
    ends: list[int]
    fragments: list[bytes]


@pytest.fixture(scope="module")
def written(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> Written:
    """3 s of 640x360@30 H.264 (GOP 30, 2 B-frames) + AAC 44.1 kHz stereo, as FLV, muxed."""
    folder = tmp_path_factory.mktemp("fmp4")
    source = folder / "source.flv"
    run(ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "3",
        "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-keyint_min", "30",
        "-sc_threshold", "0", "-bf", "2", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-ac", "2", "-f", "flv", source)
    video, audio, samples = flv_samples(source)
    parts = cut_parts(samples)
    ends = part_ends(parts, max(s.dts for s in samples if s.video) + 33)
    out = folder / "out.mp4"
    fragments = write_mp4(out, Fmp4Writer(video, audio), parts, ends)
    return Written(source, out, video, audio, samples, parts, ends, fragments)


# -- the real decoder ---------------------------------------------------------------------------


def test_source_exercises_b_frames_and_mid_gop_parts(written: Written) -> None:
    assert any(s.cts > 0 for s in written.samples), "B-frames: composition offsets"
    starts = [p[0] for p in written.parts]
    assert sum(s.video and s.keyframe for s in starts) == 3, "a keyframe-first part per GOP"
    assert sum(not s.keyframe for s in starts) >= 6, "parts cut mid-GOP"
    assert all(s.video for s in starts[1:]), "later parts start at a video frame"


def test_ffprobe_reads_h264_and_aac_with_sps_size_and_sample_rate(written: Written,
                                                                   ffprobe: str) -> None:
    info = probe(ffprobe, written.out, "-show_streams", "-show_format")
    streams = {s["codec_type"]: s for s in info["streams"]}
    video, audio = streams["video"], streams["audio"]
    assert (video["codec_name"], video["codec_tag_string"], video["width"], video["height"]) \
        == ("h264", "avc1", 640, 360)
    assert (audio["codec_name"], audio["codec_tag_string"], audio["sample_rate"],
            audio["channels"]) == ("aac", "mp4a", "44100", 2)
    assert (video["time_base"], audio["time_base"]) == ("1/90000", "1/44100")
    assert info["format"]["tags"]["major_brand"] == "iso6"


def test_demuxed_packets_carry_the_flv_timeline(written: Written, ffprobe: str) -> None:
    packets = probe(ffprobe, written.out, "-show_packets")["packets"]
    video = [(int(p["dts"]), int(p["pts"]), "K" in p["flags"], int(p["size"]))
             for p in packets if p["codec_type"] == "video"]
    assert video == [(s.dts * 90, (s.dts + s.cts) * 90, s.keyframe, len(s.data))
                     for s in written.samples if s.video]
    # Audio: each fragment restarts at its first frame's FLV time (rounded to 1/44100 s),
    # then counts 1024 samples per AAC frame.
    expected_audio = []
    for part in written.parts:
        frames = [s for s in part if not s.video]
        if frames:
            base = round(frames[0].dts * 44100 / 1000)
            expected_audio += [(base + i * 1024, len(s.data)) for i, s in enumerate(frames)]
    audio = [(int(p["pts"]), int(p["size"])) for p in packets if p["codec_type"] == "audio"]
    assert audio == expected_audio


def test_ffmpeg_decodes_the_parts_to_the_source_pictures_and_sound(written: Written,
                                                                     ffmpeg: str) -> None:
    null = run(ffmpeg, "-hide_banner", "-v", "error", "-i", written.out, "-f", "null", "-")
    assert null.stderr == ""
    ours, source = decoded_frames(ffmpeg, written.out), decoded_frames(ffmpeg, written.source)
    assert len(ours[0]) == sum(s.video for s in written.samples) == 90
    assert len(ours[1]) == sum(not s.video for s in written.samples)
    assert ours == source, "identical decoded frames, video and audio"


def test_duration_matches_the_source_within_one_frame(written: Written, ffprobe: str) -> None:
    ours = float(probe(ffprobe, written.out, "-show_format")["format"]["duration"])
    source = float(probe(ffprobe, written.source, "-show_format")["format"]["duration"])
    assert abs(ours - source) <= 1 / 30, (ours, source)


# -- structure ----------------------------------------------------------------------------------


def test_init_segment_has_a_trak_per_track_and_the_configs_verbatim(written: Written) -> None:
    init = Fmp4Writer(written.video, written.audio).init_segment()
    ftyp, moov = walk(init)
    assert ftyp.kind == "ftyp" and ftyp.body[:4] == b"iso6"
    mvhd, video, audio, mvex = moov.children()
    assert [b.kind for b in (mvhd, video, audio, mvex)] == ["mvhd", "trak", "trak", "mvex"]
    assert mvhd.u32(12) == 1000 and mvhd.u32(96) == 3, "timescale; next_track_ID"
    for trak, track_id, handler, timescale in ((video, 1, b"vide", 90000),
                                               (audio, 2, b"soun", 44100)):
        tkhd = trak.child("tkhd")
        assert tkhd.u32(0) & 0xFFFFFF == 3 and tkhd.u32(12) == track_id, "enabled, in movie"
        assert trak.path("mdia/hdlr").body[8:12] == handler
        assert trak.path("mdia/mdhd").u32(12) == timescale
        stbl = trak.path("mdia/minf/stbl")
        assert [b.kind for b in stbl.children()] == ["stsd", "stts", "stsc", "stsz", "stco"]
    tkhd = video.child("tkhd").body
    assert (int.from_bytes(tkhd[76:80], "big"), int.from_bytes(tkhd[80:84], "big")) \
        == (640 << 16, 360 << 16)
    avc1 = video.path("mdia/minf/stbl/stsd/avc1")
    assert avc1.body[24:28] == bytes.fromhex("02800168"), "sample entry 640x360"
    assert avc1.child("avcC").body == written.video.record
    esds = audio.path("mdia/minf/stbl/stsd/mp4a/esds")
    assert written.audio.asc in esds.body and len(written.audio.asc) >= 2
    mp4a = audio.path("mdia/minf/stbl/stsd/mp4a").body
    assert int.from_bytes(mp4a[16:18], "big") == 2, "channelcount"
    assert int.from_bytes(mp4a[24:28], "big") == 44100 << 16, "samplerate, 16.16"
    assert [(t.kind, t.u32(4)) for t in mvex.children()] == [("trex", 1), ("trex", 2)]


def test_fragments_tile_and_each_traf_describes_its_track(written: Written) -> None:
    data = written.out.read_bytes()
    top = walk(data)
    assert [b.kind for b in top] == ["ftyp", "moov"] + ["moof", "mdat"] * len(written.parts)
    pos = sum(len(b.raw) for b in top[:2])
    for number, (part, end, fragment) in enumerate(zip(written.parts, written.ends,
                                                       written.fragments, strict=True), 1):
        sequence, trafs, moof, mdat = parse_fragment(fragment, pos)
        assert sequence == number
        split = [(True, [s for s in part if s.video]), (False, [s for s in part if not s.video])]
        tracks = [(video, track) for video, track in split if track]
        assert len(trafs) == len(tracks)
        for traf, (video, track) in zip(trafs, tracks, strict=True):
            assert traf.tfhd_flags == 0x020000, "default-base-is-moof"
            assert traf.track_id == (1 if video else 2)
            trun = traf.trun
            assert trun.sizes == [len(s.data) for s in track]
            start = moof.offset + trun.data_offset
            assert data[start:start + sum(trun.sizes)] == b"".join(s.data for s in track)
            if video:
                assert traf.base == track[0].dts * 90
                assert trun.version == 1 and trun.cts == [s.cts * 90 for s in track]
                assert trun.sample_flags == [SYNC_SAMPLE if s.keyframe else NON_SYNC_SAMPLE
                                             for s in track]
                assert traf.base + sum(trun.durations) == end * 90, "lasts until end"
            else:
                assert traf.base == round(track[0].dts * 44100 / 1000)
                assert trun.durations == [1024] * len(track)
                assert trun.sample_flags == [SYNC_SAMPLE] * len(track) and not trun.cts
        assert len(mdat.body) == sum(len(s.data) for s in part)
        pos += len(fragment)


def test_keyframe_first_parts_flag_sample_zero_as_sync(written: Written) -> None:
    for part, fragment in zip(written.parts, written.fragments, strict=True):
        flags = parse_fragment(fragment)[1][0].trun.sample_flags
        first = next(s for s in part if s.video)
        if first.keyframe:
            assert flags[0] == 0x0200_0000, "sample_depends_on 2, sync"
        else:
            assert flags[0] == 0x0101_0000, "sample_depends_on 1, non-sync"
            assert flags[0] >> 16 & 1


# -- determinism --------------------------------------------------------------------------------


def test_same_samples_give_the_same_bytes_from_any_writer(written: Written) -> None:
    late = Fmp4Writer(written.video, written.audio)  # a node that joined mid-stream
    assert late.init_segment() == Fmp4Writer(written.video, written.audio).init_segment()
    # Asked for the parts in reverse order, one at a time, each twice: nothing carries over.
    for i in reversed(range(len(written.parts))):
        part, end = written.parts[i], written.ends[i]
        assert late.fragment(i + 1, part, end=end) == written.fragments[i]
        assert late.fragment(i + 1, part, end=end) == written.fragments[i]


# -- fragment rules, on small synthetic samples -------------------------------------------------


def baseline_writer(*, video: bool = True, audio: bool = True) -> Fmp4Writer:
    return Fmp4Writer(codecs.parse_avc_config(BASELINE_RECORD) if video else None,
                      codecs.parse_aac_config(ASC_LC_44100_STEREO) if audio else None)


def video_sample(dts: int, *, key: bool = False, cts: int = 0) -> Sample:
    return Sample(True, dts, cts, key, b"\x00\x00\x00\x02\x41\x9a")


def audio_sample(dts: int) -> Sample:
    return Sample(False, dts, 0, True, b"\x21\x10\x05")


def only_traf(fragment: bytes) -> Traf:
    (traf,) = parse_fragment(fragment)[1]
    return traf


def test_last_video_sample_lasts_until_end() -> None:
    traf = only_traf(baseline_writer().fragment(1, [video_sample(1000, key=True),
                                                    video_sample(1033)], end=1100))
    assert traf.trun.durations == [33 * 90, 67 * 90]


def test_last_video_sample_reuses_the_previous_duration_when_end_is_not_after_it() -> None:
    for end in (1033, 1000, 0):
        traf = only_traf(baseline_writer().fragment(1, [video_sample(1000), video_sample(1033)],
                                                    end=end))
        assert traf.trun.durations == [33 * 90, 33 * 90]


def test_single_video_sample_without_end_lasts_one_frame_at_30_fps() -> None:
    traf = only_traf(baseline_writer().fragment(1, [video_sample(500)], end=500))
    assert traf.trun.durations == [3000]


def test_video_decode_times_going_backwards_give_zero_durations_not_negative_ones() -> None:
    traf = only_traf(baseline_writer().fragment(1, [video_sample(1000), video_sample(990)],
                                                end=1023))
    assert traf.trun.durations == [0, 33 * 90]


@pytest.mark.parametrize("dts,base", [
    (0, 0), (1, 44), (23, 1014), (46, 2029), (70, 3087),
    (5, 220), (15, 662),  # 220.5 and 661.5: ties go to even, as round() does
    (2**32 - 1, 189_408_057_710),  # 189 408 057 709.5
])
def test_audio_base_is_the_dts_in_sample_rate_ticks_rounded(dts: int, base: int) -> None:
    assert only_traf(baseline_writer().fragment(1, [audio_sample(dts)], end=0)).base == base


def test_decode_times_up_to_2_32_ms_fit_the_64_bit_tfdt() -> None:
    dts = 2**32 - 1
    traf = only_traf(baseline_writer().fragment(9, [video_sample(dts, key=True)], end=dts + 40))
    assert traf.base == dts * 90 > 2**32 and traf.trun.durations == [3600]


def test_one_track_fragment_writes_only_that_tracks_traf_after_the_video_data() -> None:
    writer = baseline_writer()
    assert only_traf(writer.fragment(1, [audio_sample(0), audio_sample(23)], end=46)).track_id \
        == 2
    assert only_traf(writer.fragment(1, [video_sample(0, key=True)], end=33)).track_id == 1
    mixed = [audio_sample(0), video_sample(0, key=True), audio_sample(23), video_sample(33)]
    fragment = writer.fragment(4, mixed, end=66)
    _, (video, audio), _, mdat = parse_fragment(fragment)
    assert audio.trun.data_offset == video.trun.data_offset + 2 * 6
    assert mdat.body == b"\x00\x00\x00\x02\x41\x9a" * 2 + b"\x21\x10\x05" * 2


def test_audio_only_writer_numbers_its_track_one() -> None:
    writer = baseline_writer(video=False)
    _, moov = walk(writer.init_segment())
    (trak,) = [b for b in moov.children() if b.kind == "trak"]
    assert trak.child("tkhd").u32(12) == 1
    assert only_traf(writer.fragment(1, [audio_sample(10)], end=0)).track_id == 1


@pytest.mark.parametrize("writer,samples,message", [
    (baseline_writer(), [], "at least one sample"),
    (baseline_writer(audio=False), [video_sample(0), audio_sample(0)], "has no audio track"),
    (baseline_writer(video=False), [video_sample(0)], "has no video track"),
])
def test_unwritable_fragments_raise_value_error(writer: Fmp4Writer, samples: list[Sample],
                                                message: str) -> None:
    with pytest.raises(ValueError, match=message):
        writer.fragment(1, samples, end=0)


def test_a_writer_needs_a_track_and_the_raw_configs() -> None:
    with pytest.raises(ValueError, match="video or an audio track"):
        Fmp4Writer(None, None)
    with pytest.raises(ValueError, match="decoder configuration record"):
        Fmp4Writer(codecs.VideoConfig(codecs.H264, (BASELINE_SPS,), 4), None)
    with pytest.raises(ValueError, match="AudioSpecificConfig"):
        Fmp4Writer(None, codecs.AacConfig(2, 4, 2))


def test_unparsable_sps_falls_back_to_1280x720() -> None:
    garbage = codecs.VideoConfig(codecs.H264, (b"\x67\x64", b"\x68\xee"), 4, b"\x01")
    no_sps = codecs.VideoConfig(codecs.HEVC, (), 4, b"\x01")
    assert video_size(garbage) == video_size(no_sps) == FALLBACK_SIZE == (1280, 720)
    _, moov = walk(Fmp4Writer(garbage, None).init_segment())
    assert moov.path("trak/mdia/minf/stbl/stsd/avc1").body[24:28] == bytes.fromhex("050002d0")


@pytest.fixture(scope="module")
def x265(ffmpeg: str) -> None:
    if "libx265" not in run(ffmpeg, "-hide_banner", "-encoders").stdout:
        pytest.skip("this ffmpeg has no libx265 encoder")


# -- SPS sizes: real encoders -------------------------------------------------------------------


def nal_units(annexb: bytes) -> list[bytes]:
    """Annex-B → NAL units (a 4-byte start code's leading zero trails the unit before)."""
    return [unit.rstrip(b"\x00") for unit in re.split(b"\x00\x00\x01", annexb)[1:]]


def encode(ffmpeg: str, folder: Path, size: str, encoder: str, *args: str) -> Path:
    """One frame of testsrc2 at ``size``, as a raw Annex-B stream."""
    out = folder / f"{encoder}-{size}.{'hevc' if encoder == 'libx265' else 'h264'}"
    run(ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
        "-i", f"testsrc2=size={size}:rate=30", "-frames:v", "1", "-c:v", encoder, *args,
        "-f", "hevc" if encoder == "libx265" else "h264", out)
    return out


@pytest.mark.parametrize("size,args,profile", [
    ("640x360", ["-pix_fmt", "yuv420p"], 100),  # High, 368 rows cropped to 360
    ("1280x720", ["-pix_fmt", "yuv420p"], 100),
    ("1920x1080", ["-pix_fmt", "yuv420p"], 100),  # 1088 cropped to 1080
    ("1366x768", ["-pix_fmt", "yuv420p"], 100),  # 1376 columns cropped to 1366
    ("1920x1080", ["-pix_fmt", "yuv420p", "-flags", "+ildct+ilme"], 100),  # field MBs
    ("854x480", ["-pix_fmt", "yuv422p"], 122),  # High 4:2:2: chroma_format_idc 2
    ("854x480", ["-pix_fmt", "yuv444p"], 244),  # High 4:4:4: chroma_format_idc 3
    ("640x360", ["-pix_fmt", "yuv420p", "-profile:v", "baseline"], 66),
])
def test_avc_sps_size_of_x264_streams(ffmpeg: str, ffprobe: str, tmp_path: Path, size: str,
                                      args: list[str], profile: int) -> None:
    stream = encode(ffmpeg, tmp_path, size, "libx264", "-preset", "veryfast", *args)
    sps = next(n for n in nal_units(stream.read_bytes()) if n[0] & 0x1F == 7)
    assert sps[1] == profile
    if "+ildct+ilme" in args:
        (info,) = probe(ffprobe, stream, "-show_streams")["streams"]
        assert info["field_order"] != "progressive", "the stream really is field-coded"
    assert avc_sps_size(sps) == tuple(int(v) for v in size.split("x"))


@pytest.mark.usefixtures("x265")
@pytest.mark.parametrize("size,pix_fmt", [("640x360", "yuv420p"), ("1920x1080", "yuv420p"),
                                          ("1366x768", "yuv420p"), ("426x240", "yuv420p"),
                                          ("426x240", "yuv444p")])
def test_hevc_sps_size_of_x265_streams(ffmpeg: str, tmp_path: Path, size: str,
                                       pix_fmt: str) -> None:
    stream = encode(ffmpeg, tmp_path, size, "libx265", "-preset", "ultrafast", "-pix_fmt",
                    pix_fmt, "-x265-params", "log-level=error")
    sps = next(n for n in nal_units(stream.read_bytes()) if (n[0] >> 1) & 0x3F == 33)
    assert hevc_sps_size(sps) == tuple(int(v) for v in size.split("x"))


# -- SPS sizes: hand-decoded vectors ------------------------------------------------------------


def test_avc_sps_hand_decoded_baseline_640x360() -> None:
    # 67 | 42 c0 1e (Baseline, level 3.0) | d9 = 1 1 011 001.. : sps_id 0, log2_max_frame_num 0,
    # poc_type 2, max_num_ref_frames '001'+'00' = 3 | 00: ..0 gaps, 00000.. | a0 = 1 01000 00:
    # pic_width_in_mbs_minus1 = 31 + 8 = 39 → 640 | 2f = 00 1 0111 1: height_in_map_units_minus1
    # = 15 + 7 = 22 → 23 x 16 = 368, frame_mbs_only 1 | f9 = 1 1 1 1 1 001, 70 = 01..: direct_8x8,
    # cropping, left/right/top 0, bottom '001'+'01' = 4 → 368 - 2 x 4 = 360.
    assert avc_sps_size(BASELINE_SPS) == (640, 360)


# High, 4:2:0, poc_type 1 with offset_for_non_ref_pic = -2**21 (a 45-bit code whose zero run
# needs an emulation prevention byte: 22 00 00 [03] 01), 120 x 34 field-pair MBs, cropped by
# 2 x 4 rows: 1920x1080. Field by field:
#   67 | 64 00 28 | ac = 1 010 1 1 0 0: sps_id 0, chroma_format_idc 1, bit depths 0, no
#   transform bypass, no scaling matrix | 22 = 00100 010: log2_max_frame_num_minus4 3,
#   poc_type 1 | 00 00 03 01: delta_pic_order_always_zero 0 and 22 zeros, 1 … | 00 00 06 =
#   … 21 zeros, 1 (codeNum 2**22 → -2**21), offset_for_top_to_bottom_field '1' = 0, cycle
#   length '01|0' = 1 | 91 = 010 00101: offset_for_ref_frame +1, max_num_ref_frames 4 |
#   40 78 = 0 0000001 111000: gaps 0, width_in_mbs_minus1 119 | 04 4f = 00000100 010 0 1 1 1 1:
#   height_in_map_units_minus1 33, frame_mbs_only 0, mb_adaptive 1, direct_8x8 1, cropping 1,
#   left 0 | da = 1 1 011 0 1 0: right 0, top 0, bottom 2, no VUI, stop bit.
EPB_SPS = bytes.fromhex("67640028ac2200000301000006914078044fda")


def test_avc_sps_hand_decoded_with_an_emulation_prevention_byte(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert avc_sps_size(EPB_SPS) == (1920, 1080)
    assert fmp4.unescape(EPB_SPS) == EPB_SPS.replace(b"\x00\x00\x03\x01", b"\x00\x00\x01")
    # Read with the 03 left in, the same bytes say something else: the vector tests unescaping.
    monkeypatch.setattr(fmp4, "unescape", lambda nal: nal)
    assert avc_sps_size(EPB_SPS) != (1920, 1080)


def test_hevc_sps_hand_decoded_x265_640x360() -> None:
    # 42 01 | 01: vps_id 0, max_sub_layers_minus1 0, nesting 1 | profile_tier_level, 12 bytes
    # unescaped: 01 60000000 900000000000 3f (Main, level 2.1) | a0 = 1 010 0000: sps_id 0,
    # chroma_format_idc 1 | 05 02 = 00000 1 01 0000001 ..: width '0'x9 '1' 010000001 = 511 +
    # 129 = 640 | 02 01 69 = ..0 0000000 1 01101001: height 255 + 105 = 360 | 65 = 0...:
    # conformance_window_flag 0.
    sps = bytes.fromhex("42010101600000030090000003000003003fa00502016965959a4932bc05a0"
                        "2000000300200000030321")
    assert hevc_sps_size(sps) == (640, 360)


@pytest.mark.parametrize("sps", [b"", b"\x67", b"\x67\x64\x00", EPB_SPS[:9], b"\x42\x01\x01"])
def test_truncated_sps_raises_protocol_error(sps: bytes) -> None:
    parse = hevc_sps_size if sps[:1] == b"\x42" else avc_sps_size
    with pytest.raises(ProtocolError):
        parse(sps)


# -- SPS sizes: generated SPSs ------------------------------------------------------------------


class BitWriter:
    def __init__(self) -> None:
        self.bits = ""

    def u(self, width: int, value: int) -> None:
        self.bits += format(value, f"0{width}b") if width else ""

    def ue(self, value: int) -> None:
        code = value + 1
        self.bits += "0" * (code.bit_length() - 1) + format(code, "b")

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def nal(self) -> bytes:
        """rbsp_trailing_bits, then emulation prevention (a 03 after 00 00 before 00..03)."""
        bits = self.bits + "1"
        bits += "0" * (-len(bits) % 8)
        out, zeros = bytearray(), 0
        for byte in int(bits, 2).to_bytes(len(bits) // 8, "big"):
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(out)


def test_bit_writer_reproduces_the_hand_decoded_vector() -> None:
    w = BitWriter()
    for width, value in ((8, 0x67), (8, 100), (8, 0), (8, 40)):
        w.u(width, value)
    for ue in (0, 1, 0, 0):
        w.ue(ue)
    w.u(2, 0)
    w.ue(3)
    w.ue(1)
    w.u(1, 0)
    w.se(-(2**21))
    w.se(0)
    w.ue(1)
    w.se(1)
    w.ue(4)
    w.u(1, 0)
    w.ue(119)
    w.ue(33)
    w.u(3, 0b011)
    w.u(1, 1)
    for crop in (0, 0, 0, 2):
        w.ue(crop)
    w.u(1, 0)
    assert w.nal() == EPB_SPS


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_avc_sps_size_of_any_generated_sps(data: st.DataObject) -> None:
    draw = data.draw
    profile = draw(st.sampled_from([66, 77, 88, 100, 110, 122, 244, 44, 83, 118, 128]))
    w = BitWriter()
    w.u(8, 0x67)
    w.u(8, profile)
    w.u(16, draw(st.integers(0, 0xFFFF)))
    w.ue(draw(st.integers(0, 31)))
    chroma, separate = 1, 0
    if profile not in (66, 77, 88):
        chroma = draw(st.integers(0, 3))
        w.ue(chroma)
        if chroma == 3:
            separate = draw(st.integers(0, 1))
            w.u(1, separate)
        w.ue(draw(st.integers(0, 6)))
        w.ue(draw(st.integers(0, 6)))
        w.u(1, draw(st.integers(0, 1)))
        present = draw(st.lists(st.booleans(), min_size=12 if chroma == 3 else 8,
                                max_size=12 if chroma == 3 else 8))
        deltas = draw(st.randoms(use_true_random=False))
        w.u(1, any(present))
        if any(present):
            for i, listed in enumerate(present):
                w.u(1, listed)
                last = following = 8
                for _ in range(16 if i < 6 else 64) if listed else ():
                    if following:  # delta_scale until a next scale of 0 ends the list
                        delta = deltas.choice((deltas.randint(-128, 127), -last))
                        w.se(delta)
                        following = (last + delta + 256) % 256
                    last = following or last
    w.ue(draw(st.integers(0, 12)))
    poc_type = draw(st.integers(0, 2))
    w.ue(poc_type)
    if poc_type == 0:
        w.ue(draw(st.integers(0, 12)))
    elif poc_type == 1:
        w.u(1, draw(st.integers(0, 1)))
        w.se(draw(st.integers(-(2**30), 2**30)))
        w.se(draw(st.integers(-(2**30), 2**30)))
        cycle = draw(st.lists(st.integers(-(2**30), 2**30), max_size=5))
        w.ue(len(cycle))
        for offset in cycle:
            w.se(offset)
    w.ue(draw(st.integers(0, 16)))
    w.u(1, draw(st.integers(0, 1)))
    width_mbs, height_units = draw(st.integers(1, 512)), draw(st.integers(1, 300))
    frame_mbs_only = draw(st.integers(0, 1))
    w.ue(width_mbs - 1)
    w.ue(height_units - 1)
    w.u(1, frame_mbs_only)
    if not frame_mbs_only:
        w.u(1, draw(st.integers(0, 1)))
    w.u(1, draw(st.integers(0, 1)))
    # Table 6-1: crop offsets count in chroma samples, doubled for field pairs.
    array_type = 0 if separate else chroma
    unit_x = 2 if array_type in (1, 2) else 1
    unit_y = (2 if array_type == 1 else 1) * (2 - frame_mbs_only)
    width, height = width_mbs * 16, (2 - frame_mbs_only) * height_units * 16
    crop_x = draw(st.integers(0, (width - 1) // unit_x))
    crop_y = draw(st.integers(0, (height - 1) // unit_y))
    crop = draw(st.booleans()) and (crop_x or crop_y)
    w.u(1, bool(crop))
    if crop:
        left, top = draw(st.integers(0, crop_x)), draw(st.integers(0, crop_y))
        for value in (left, crop_x - left, top, crop_y - top):
            w.ue(value)
        width, height = width - unit_x * crop_x, height - unit_y * crop_y
    w.u(1, 0)  # no VUI
    assert avc_sps_size(w.nal()) == (width, height)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_hevc_sps_size_of_any_generated_sps(data: st.DataObject) -> None:
    draw = data.draw
    w = BitWriter()
    w.u(16, 0x4201)
    w.u(4, draw(st.integers(0, 15)))
    sub_layers = draw(st.integers(0, 6))
    w.u(3, sub_layers)
    w.u(1, draw(st.integers(0, 1)))
    w.u(96, draw(st.integers(0, 2**96 - 1)))  # general profile, tier, level
    present = [(draw(st.integers(0, 1)), draw(st.integers(0, 1))) for _ in range(sub_layers)]
    for profile_present, level_present in present:
        w.u(1, profile_present)
        w.u(1, level_present)
    if sub_layers:
        w.u(2 * (8 - sub_layers), 0)
    for profile_present, level_present in present:
        w.u(88 * profile_present, draw(st.integers(0, 2**88 - 1)) if profile_present else 0)
        w.u(8 * level_present, draw(st.integers(0, 255)) if level_present else 0)
    w.ue(draw(st.integers(0, 15)))
    chroma = draw(st.integers(0, 3))
    w.ue(chroma)
    separate = draw(st.integers(0, 1)) if chroma == 3 else 0
    if chroma == 3:
        w.u(1, separate)
    width, height = draw(st.integers(8, 8192)), draw(st.integers(8, 4320))
    w.ue(width)
    w.ue(height)
    array_type = 0 if separate else chroma
    sub_width = 2 if array_type in (1, 2) else 1
    sub_height = 2 if array_type == 1 else 1
    window = draw(st.booleans())
    w.u(1, window)
    if window:
        offsets = [draw(st.integers(0, (width - 1) // sub_width // 2)) for _ in range(2)] \
            + [draw(st.integers(0, (height - 1) // sub_height // 2)) for _ in range(2)]
        for value in offsets:
            w.ue(value)
        width -= sub_width * (offsets[0] + offsets[1])
        height -= sub_height * (offsets[2] + offsets[3])
    w.u(8, draw(st.integers(0, 255)))  # the rest of the SPS, unread
    assert hevc_sps_size(w.nal()) == (width, height)


# -- HEVC end to end, through enhanced-RTMP tag bodies ------------------------------------------


def hvcc(vps: bytes, sps: bytes, pps: bytes) -> bytes:
    """An HEVCDecoderConfigurationRecord (ISO 14496-15 §8.3.3.1): the 12 general
    profile_tier_level bytes are the SPS's, then 4:2:0 8-bit, one temporal layer, 4-byte NAL
    lengths, and complete VPS/SPS/PPS arrays."""
    ptl = sps.replace(b"\x00\x00\x03", b"\x00\x00")[3:15]
    record = b"\x01" + ptl + bytes.fromhex("f000fcfdf8f800000f") + b"\x03"
    for nal_type, nal in ((32, vps), (33, sps), (34, pps)):
        record += bytes((0x80 | nal_type,)) + b"\x00\x01" + len(nal).to_bytes(2, "big") + nal
    return record


@pytest.mark.usefixtures("x265")
def test_hevc_parts_decode_to_the_x265_pictures(ffmpeg: str, ffprobe: str,
                                                tmp_path: Path) -> None:
    raw = tmp_path / "source.hevc"
    run(ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
        "-i", "testsrc2=size=426x240:rate=30", "-t", "1", "-c:v", "libx265",
        "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-x265-params", "keyint=15:scenecut=0:bframes=0:aud=1:log-level=error", "-f", "hevc", raw)
    nals = nal_units(raw.read_bytes())
    sets = {t: next(n for n in nals if (n[0] >> 1) & 0x3F == t) for t in (32, 33, 34)}
    # What an enhanced-RTMP publisher sends: SequenceStart with the hvcC, then CodedFrames.
    bodies = [bytes((0x90,)) + b"hvc1" + hvcc(sets[32], sets[33], sets[34])]
    access_units: list[list[bytes]] = []
    for nal in nals:
        nal_type = (nal[0] >> 1) & 0x3F
        if nal_type == 35:  # access unit delimiter: a new frame
            access_units.append([])
        elif nal_type not in (32, 33, 34):
            access_units[-1].append(nal)
    for unit in access_units:
        key = any(16 <= (n[0] >> 1) & 0x3F <= 23 for n in unit)  # IRAP pictures
        bodies.append(bytes((0x80 | (0x10 if key else 0x20) | 1,)) + b"hvc1" + b"\x00\x00\x00"
                      + b"".join(len(n).to_bytes(4, "big") + n for n in unit))
    config = codecs.parse_video_config(codecs.parse_video(bodies[0]))
    assert config is not None and config.codec == codecs.HEVC
    samples = []
    for i, body in enumerate(bodies[1:]):
        packet = codecs.parse_video(body)
        samples.append(Sample(True, (i * 1000 + 15) // 30, packet.cts,
                              flv.is_video_keyframe(body), packet.data))
    assert len(samples) == 30 and sum(s.keyframe for s in samples) == 2
    parts = cut_parts(samples)
    out = tmp_path / "out.mp4"
    writer = Fmp4Writer(config, None)
    write_mp4(out, writer, parts, part_ends(parts, 1000))
    (video,) = probe(ffprobe, out, "-show_streams")["streams"]
    assert (video["codec_name"], video["codec_tag_string"], video["width"], video["height"]) \
        == ("hevc", "hvc1", 426, 240)
    _, moov = walk(writer.init_segment())
    assert moov.path("trak/mdia/minf/stbl/stsd/hvc1/hvcC").body == config.record
    ours = decoded_frames(ffmpeg, out)
    assert len(ours[0]) == 30 and ours == decoded_frames(ffmpeg, raw)
