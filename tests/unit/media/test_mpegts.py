"""The MPEG-TS muxer (ISO 13818-1) against known vectors and an independent demuxer written
here: PSI tables and their CRC, continuity counters, PES timestamps, PCR and stuffing — and,
when ffprobe is available, a real decoder reading what it muxed."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcly.media import codecs
from arcly.media.flv import parse_header, parse_tags
from arcly.media.mpegts import (
    DELAY,
    PID_AUDIO,
    PID_PAT,
    PID_PMT,
    PID_VIDEO,
    TsMuxer,
    _timestamp,
    crc32_mpeg2,
)
from tests import tools

MASK33 = (1 << 33) - 1


# -- an independent reader ----------------------------------------------------------------------


def crc32_bitwise(data: bytes) -> int:
    """CRC-32/MPEG-2 one bit at a time: poly 0x04C11DB7, init 0xFFFFFFFF, no reflection,
    no final xor (ISO 13818-1 Annex A)."""
    crc = 0xFFFFFFFF
    for byte in data:
        for bit in range(7, -1, -1):
            top = (crc >> 31) ^ ((byte >> bit) & 1)
            crc = (crc << 1) & 0xFFFFFFFF
            if top:
                crc ^= 0x04C11DB7
    return crc


@dataclass
class Packet:
    pid: int
    start: bool
    cc: int
    adaptation: bytes | None  # the adaptation field after its length byte; None: absent
    payload: bytes

    @property
    def af_flags(self) -> int:
        return self.adaptation[0] if self.adaptation else 0

    @property
    def pcr(self) -> tuple[int, int] | None:
        """(base, extension) when the adaptation field carries a PCR."""
        if not self.af_flags & 0x10:
            return None
        raw = self.adaptation[1:7]  # type: ignore[index]
        assert raw[4] & 0x7E == 0x7E, "PCR reserved bits are ones"
        base = (int.from_bytes(raw[:4], "big") << 1) | (raw[4] >> 7)
        return base, ((raw[4] & 1) << 8) | raw[5]


def split_packets(data: bytes) -> list[Packet]:
    assert len(data) % 188 == 0, f"{len(data)} bytes is not whole 188-byte packets"
    out = []
    for pos in range(0, len(data), 188):
        raw = data[pos:pos + 188]
        assert raw[0] == 0x47, f"sync byte at {pos}"
        assert not raw[1] & 0x80, "transport error indicator clear"
        assert raw[3] >> 6 == 0, "not scrambled"
        control = (raw[3] >> 4) & 0x3
        assert control in (1, 3), "every packet carries a payload"
        body = raw[4:]
        adaptation = None
        if control == 3:
            length = body[0]
            assert length <= 183
            adaptation = body[1:1 + length]
            body = body[1 + length:]
            if length > 0:
                # Whatever follows the flagged fields is stuffing, all 0xFF.
                used = 1 + (6 if adaptation[0] & 0x10 else 0)
                assert set(adaptation[used:]) <= {0xFF}, "stuffing bytes are 0xFF"
        out.append(Packet(((raw[1] & 0x1F) << 8) | raw[2], bool(raw[1] & 0x40), raw[3] & 0x0F,
                          adaptation, body))
    return out


def pes_units(packets: list[Packet], pid: int) -> list[bytes]:
    units: list[bytearray] = []
    for packet in packets:
        if packet.pid != pid:
            continue
        if packet.start:
            units.append(bytearray())
        assert units, "a PES starts with payload_unit_start_indicator"
        units[-1] += packet.payload
    return [bytes(u) for u in units]


def read_timestamp(raw: bytes, prefix: int) -> int:
    assert raw[0] >> 4 == prefix, f"timestamp prefix {raw[0] >> 4:04b} != {prefix:04b}"
    assert raw[0] & 1 and raw[2] & 1 and raw[4] & 1, "marker bits are ones"
    return (((raw[0] >> 1) & 0x07) << 30) | (raw[1] << 22) | ((raw[2] >> 1) << 15) \
        | (raw[3] << 7) | (raw[4] >> 1)


@dataclass
class Pes:
    stream_id: int
    length: int
    pts: int
    dts: int
    header: bytes
    payload: bytes


def parse_pes(unit: bytes) -> Pes:
    assert unit[:3] == b"\x00\x00\x01", "PES start code prefix"
    length = int.from_bytes(unit[4:6], "big")
    assert unit[6] == 0x80, "'10' marker, no scrambling/priority/alignment flags"
    flags, header_len = unit[7], unit[8]
    fields = unit[9:9 + header_len]
    if flags == 0xC0:
        assert header_len == 10
        pts, dts = read_timestamp(fields[:5], 0b0011), read_timestamp(fields[5:], 0b0001)
    else:
        assert (flags, header_len) == (0x80, 5)
        pts = dts = read_timestamp(fields, 0b0010)
    return Pes(unit[3], length, pts, dts, unit[:9 + header_len], unit[9 + header_len:])


def section(packet: Packet) -> bytes:
    """The PSI section in a packet (pointer field 0), CRC included."""
    assert packet.start and packet.payload[0] == 0, "pointer_field 0"
    length = ((packet.payload[2] & 0x0F) << 8) | packet.payload[3]
    data = packet.payload[1:4 + length]
    assert set(packet.payload[4 + length:]) <= {0xFF}, "after the section: 0xFF"
    return data


# -- PSI ----------------------------------------------------------------------------------------


def test_crc32_mpeg2_matches_the_catalogue_check_value() -> None:
    assert crc32_mpeg2(b"123456789") == 0x0376E6E7  # CRC-32/MPEG-2 "check" in the CRC catalogue
    assert crc32_bitwise(b"123456789") == 0x0376E6E7
    assert crc32_mpeg2(b"") == 0xFFFFFFFF


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_crc32_mpeg2_equals_a_bitwise_implementation(data: bytes) -> None:
    assert crc32_mpeg2(data) == crc32_bitwise(data)


def test_pat_is_the_well_known_single_program_table() -> None:
    pat = TsMuxer(video="h264", audio=True).tables()[:188]
    # Byte for byte the PAT ffmpeg writes (program 1 → PMT PID 0x1000), CRC 0x2AB104B2.
    assert pat[:21] == bytes.fromhex("474000100000b00d0001c100000001f0002ab104b2")
    assert pat[21:] == b"\xff" * (188 - 21)


def test_pmt_lists_h264_and_aac_with_the_pcr_on_video() -> None:
    pmt = TsMuxer(video="h264", audio=True).tables()[188:]
    assert len(pmt) == 188
    # ffmpeg's PMT for H.264 on 0x100 and AAC on 0x101 with the PCR on 0x100.
    assert pmt[:31] == bytes.fromhex(
        "475000100002b0170001c10000e100f0001be100f0000fe101f0002f44b99b")
    assert pmt[31:] == b"\xff" * (188 - 31)


@pytest.mark.parametrize("video,audio,streams,pcr_pid", [
    ("h264", True, [(0x1B, PID_VIDEO), (0x0F, PID_AUDIO)], PID_VIDEO),
    ("hevc", True, [(0x24, PID_VIDEO), (0x0F, PID_AUDIO)], PID_VIDEO),
    ("h264", False, [(0x1B, PID_VIDEO)], PID_VIDEO),
    (None, True, [(0x0F, PID_AUDIO)], PID_AUDIO),
])
def test_pmt_declares_each_elementary_stream_and_pcr_pid(
        video: str | None, audio: bool, streams: list[tuple[int, int]], pcr_pid: int) -> None:
    pat_packet, pmt_packet = split_packets(TsMuxer(video=video, audio=audio).tables())
    assert (pat_packet.pid, pmt_packet.pid) == (PID_PAT, PID_PMT)
    pat, pmt = section(pat_packet), section(pmt_packet)
    assert pat[0] == 0x00 and pmt[0] == 0x02, "table ids"
    program, pmt_pid = int.from_bytes(pat[8:10], "big"), int.from_bytes(pat[10:12], "big") & 0x1FFF
    assert (program, pmt_pid) == (1, PID_PMT)
    assert int.from_bytes(pmt[3:5], "big") == 1, "program_number"
    assert int.from_bytes(pmt[8:10], "big") & 0x1FFF == pcr_pid
    info_len = int.from_bytes(pmt[10:12], "big") & 0x0FFF
    entries, pos = [], 12 + info_len
    while pos < len(pmt) - 4:
        es_info = int.from_bytes(pmt[pos + 3:pos + 5], "big") & 0x0FFF
        entries.append((pmt[pos], int.from_bytes(pmt[pos + 1:pos + 3], "big") & 0x1FFF))
        pos += 5 + es_info
    assert entries == streams


@pytest.mark.parametrize("video,audio", [("h264", True), ("hevc", False), (None, True)])
def test_psi_sections_carry_a_valid_crc(video: str | None, audio: bool) -> None:
    for packet in split_packets(TsMuxer(video=video, audio=audio).tables()):
        data = section(packet)
        assert int.from_bytes(data[-4:], "big") == crc32_bitwise(data[:-4])
        assert crc32_bitwise(data) == 0, "CRC over the whole section leaves a zero residue"


# -- continuity counters ------------------------------------------------------------------------


def test_continuity_counters_start_at_zero_and_increment_mod_16_per_pid() -> None:
    muxer = TsMuxer(video="h264", audio=True)
    data = muxer.tables()
    for i in range(12):
        data += muxer.video_frame(bytes([i]) * 700, i * 33, 0, i == 0)  # 4 packets each
        data += muxer.audio_frame(bytes([i]) * 300, i * 23)  # 2 packets each
    data += muxer.tables()  # tables again in the same muxer: their counters go on
    by_pid: dict[int, list[int]] = {}
    for packet in split_packets(data):
        by_pid.setdefault(packet.pid, []).append(packet.cc)
    assert by_pid[PID_PAT] == [0, 1] and by_pid[PID_PMT] == [0, 1]
    for pid in (PID_VIDEO, PID_AUDIO):
        counters = by_pid[pid]
        assert len(counters) > 16, "enough packets to wrap"
        assert counters == [i % 16 for i in range(len(counters))]


def test_each_new_muxer_restarts_counters_with_the_discontinuity_indicator() -> None:
    for _ in range(2):  # two segments: identical bytes, each self-contained
        muxer = TsMuxer(video="h264", audio=True)
        packets = split_packets(muxer.video_frame(b"\x01" * 400, 0, 0, True)
                                + muxer.video_frame(b"\x02" * 400, 33, 0, False)
                                + muxer.audio_frame(b"\x03" * 400, 0)
                                + muxer.audio_frame(b"\x04" * 400, 23))
        for pid in (PID_VIDEO, PID_AUDIO):
            mine = [p for p in packets if p.pid == pid]
            assert mine[0].cc == 0 and mine[0].af_flags & 0x80, "first packet: discontinuity"
            assert not any(p.af_flags & 0x80 for p in mine[1:])


# -- PES timestamps -----------------------------------------------------------------------------


@pytest.mark.parametrize("marker,value,expected", [
    (2, 90_000, "2100 05bf 21"),  # 1 s: the classic first PTS
    (2, 0, "2100 0100 01"),
    (3, 219_600, "3100 0db3 a1"),
    (1, 216_000, "1100 0d97 81"),
    (2, MASK33, "2fff ffff ff"),  # all 33 bits
    (2, 1 << 33, "2100 0100 01"),  # wraps to 0
    (2, 1 << 32, "2900 0100 01"),  # the 33rd bit lands in byte 0
])
def test_timestamp_fields_match_hand_encoded_bytes(marker: int, value: int,
                                                   expected: str) -> None:
    assert _timestamp(marker, value) == bytes.fromhex(expected)


def test_audio_pes_carries_pts_only_with_hand_encoded_bytes() -> None:
    packet = split_packets(TsMuxer(video="h264", audio=True).audio_frame(b"\xaa" * 50, 0))[0]
    # PTS = 0 ms + the 1.4 s decoder delay = 126000 ticks of 90 kHz.
    assert DELAY == 126_000
    pes = packet.payload
    assert pes[:14] == bytes.fromhex("000001c0" "003a" "808005" "210007d861")
    assert pes[14:] == b"\xaa" * 50
    assert int.from_bytes(pes[4:6], "big") == 3 + 5 + 50, "bounded PES length"


def test_video_pes_carries_pts_and_dts_with_hand_encoded_bytes() -> None:
    muxer = TsMuxer(video="h264", audio=False)
    unit = pes_units(split_packets(muxer.video_frame(b"\x00\x00\x00\x01\x09\xf0", 1000, 40,
                                                     True)), PID_VIDEO)[0]
    # DTS = 1000 ms * 90 + DELAY = 216000, PTS = DTS + 40 ms * 90 = 219600.
    assert unit[:19] == bytes.fromhex("000001e0" "0000" "80c00a" "31000db3a1" "11000d9781")
    assert unit[19:] == b"\x00\x00\x00\x01\x09\xf0"


@settings(max_examples=150, deadline=None)
@given(dts_ms=st.integers(0, 2**32 - 1), cts_ms=st.integers(0, 2000),
       audio_ms=st.integers(0, 2**32 - 1))
def test_decoded_timestamps_are_90khz_ticks_plus_the_delay(dts_ms: int, cts_ms: int,
                                                           audio_ms: int) -> None:
    muxer = TsMuxer(video="h264", audio=True)
    packets = split_packets(muxer.video_frame(b"\x01" * 10, dts_ms, cts_ms, False)
                            + muxer.audio_frame(b"\x02" * 10, audio_ms))
    video = parse_pes(pes_units(packets, PID_VIDEO)[0])
    audio = parse_pes(pes_units(packets, PID_AUDIO)[0])
    assert video.dts == (dts_ms * 90 + DELAY) & MASK33
    assert video.pts == ((dts_ms + cts_ms) * 90 + DELAY) & MASK33
    assert audio.pts == audio.dts == (audio_ms * 90 + DELAY) & MASK33
    assert (video.stream_id, audio.stream_id) == (0xE0, 0xC0)
    assert packets[0].pcr == ((dts_ms * 90) & MASK33, 0), "PCR runs DELAY behind the DTS"


# -- adaptation field: PCR, random access, stuffing -----------------------------------------------


def test_pcr_and_random_access_on_the_first_packet_of_video_pes_only() -> None:
    muxer = TsMuxer(video="h264", audio=True)
    key = split_packets(muxer.video_frame(b"\x05" * 1000, 2000, 0, True))
    delta = split_packets(muxer.video_frame(b"\x06" * 1000, 2033, 0, False))
    audio = split_packets(muxer.audio_frame(b"\x07" * 1000, 2010))
    assert key[0].pcr == (180_000, 0) and key[0].af_flags & 0x40, "keyframe: PCR + RAI"
    assert delta[0].pcr == (2033 * 90, 0) and not delta[0].af_flags & 0x40
    assert all(p.pcr is None for p in key[1:] + delta[1:])
    assert all(p.pcr is None and not p.af_flags & 0x40 for p in audio), \
        "audio carries no PCR when video does"


def test_audio_only_muxer_puts_pcr_and_random_access_on_audio() -> None:
    muxer = TsMuxer(video=None, audio=True)
    for ts in (0, 23):
        first = split_packets(muxer.audio_frame(b"\x01" * 300, ts))[0]
        assert first.pcr == (ts * 90, 0)
        assert first.af_flags & 0x40


@pytest.mark.parametrize("size", [0, 1, 100, 161, 162, 163, 164, 168, 169, 170, 175, 176,
                                  177, 178, 183, 184, 344, 345, 346, 347, 5000])
@pytest.mark.parametrize("kind", ["video", "audio"])
def test_any_payload_becomes_whole_packets_that_reassemble_to_it(size: int, kind: str) -> None:
    check_round_trip(kind, bytes(range(256)) * (size // 256) + bytes(range(size % 256)))


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(["video", "audio"]), payload=st.binary(max_size=2500),
       repeat=st.integers(1, 3))
def test_property_any_payload_gives_whole_188_byte_packets(kind: str, payload: bytes,
                                                           repeat: int) -> None:
    check_round_trip(kind, payload, repeat)


def check_round_trip(kind: str, payload: bytes, repeat: int = 2) -> None:
    """Mux ``payload`` ``repeat`` times on one muxer (later PES have no discontinuity flag, so
    their stuffing differs); the independent reader gets each PES back intact."""
    muxer = TsMuxer(video="h264", audio=True)
    data = b"".join(muxer.video_frame(payload, i * 33, 0, i == 0) if kind == "video"
                    else muxer.audio_frame(payload, i * 23) for i in range(repeat))
    packets = split_packets(data)
    pid = PID_VIDEO if kind == "video" else PID_AUDIO
    assert {p.pid for p in packets} == {pid}
    units = pes_units(packets, pid)
    assert len(units) == repeat
    for unit in units:
        pes = parse_pes(unit)
        assert pes.payload == payload
        if kind == "audio":
            assert pes.length == len(unit) - 6, "PES_packet_length counts what follows it"
        else:
            assert pes.length == 0, "video PES are unbounded"


# -- a real decoder -----------------------------------------------------------------------------


def test_ffprobe_reads_the_muxed_h264_and_aac(tmp_path: Path) -> None:
    found = tools.find()
    if found is None:
        pytest.skip("no ffmpeg/ffprobe")
    ffmpeg, ffprobe = found
    source = tmp_path / "source.flv"
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "1",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "15", "-bf", "2",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", "-f", "flv", str(source)],
                   check=True, timeout=60)
    data = source.read_bytes()
    tags, _ = parse_tags(data, parse_header(data))
    muxer = TsMuxer(video="h264", audio=True)
    out = [muxer.tables()]
    video_config: codecs.VideoConfig | None = None
    aac: codecs.AacConfig | None = None
    expected_video_pts: list[int] = []
    audio_frames = 0
    for tag in tags:
        if tag.tag_type == 9:
            packet = codecs.parse_video(tag.body)
            if packet.is_config:
                video_config = codecs.parse_video_config(packet)
            elif packet.is_frame:
                assert video_config is not None
                keyframe = tag.body[0] >> 4 == 1
                annexb = codecs.to_annexb(packet.data, video_config, keyframe=keyframe)
                out.append(muxer.video_frame(annexb, tag.timestamp, packet.cts, keyframe))
                expected_video_pts.append((tag.timestamp + packet.cts) * 90 + DELAY)
        elif tag.tag_type == 8 and tag.body[0] >> 4 == 10:
            if tag.body[1] == 0:
                aac = codecs.parse_aac_config(tag.body[2:])
            else:
                assert aac is not None
                raw = tag.body[2:]
                out.append(muxer.audio_frame(aac.adts_header(len(raw)) + raw, tag.timestamp))
                audio_frames += 1
    segment = tmp_path / "segment.ts"
    segment.write_bytes(b"".join(out))
    probe = subprocess.run([ffprobe, "-v", "error", "-show_streams", "-show_packets",
                            "-of", "json", str(segment)],
                           capture_output=True, text=True, check=True, timeout=60)
    assert probe.stderr == "", probe.stderr
    info = json.loads(probe.stdout)
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert (streams["video"]["codec_name"], streams["video"]["width"],
            streams["video"]["height"]) == ("h264", 320, 180)
    assert (streams["audio"]["codec_name"], streams["audio"]["sample_rate"],
            streams["audio"]["channels"]) == ("aac", "44100", 2)
    video_packets = [p for p in info["packets"] if p["codec_type"] == "video"]
    audio_packets = [p for p in info["packets"] if p["codec_type"] == "audio"]
    assert [int(p["pts"]) for p in video_packets] == expected_video_pts
    assert len(audio_packets) == audio_frames > 0
    assert sum(1 for p in video_packets if "K" in p["flags"]) == 2, "keyframes at 0 s and 0.5 s"
