"""Codec configuration: AVC/HEVC decoder configuration records, the AAC AudioSpecificConfig,
ADTS headers, FLV video packet splitting and the length-prefixed → Annex-B conversion."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcly.engine import ProtocolError
from arcly.media.codecs import (
    AUD_H264,
    AUD_HEVC,
    H264,
    HEVC,
    START_CODE,
    AacConfig,
    VideoConfig,
    parse_aac_config,
    parse_avc_config,
    parse_hevc_config,
    parse_video,
    parse_video_config,
    to_annexb,
)

# The FLV sequence header libx264 (via ffmpeg) writes for 640x360 Constrained Baseline @ 3.0:
#   ffmpeg -f lavfi -i testsrc2=size=640x360 -c:v libx264 -profile:v baseline -f flv out.flv
BASELINE_640X360_TAG = bytes.fromhex(
    "1700000000"  # keyframe | AVC, AVCPacketType 0 (sequence header), composition time 0
    "0142c01effe1" "0019" "6742c01ed900a02ff970110000030001000003003c0f162e48"
    "01" "0005" "68cb83cb20")
BASELINE_SPS = bytes.fromhex("6742c01ed900a02ff970110000030001000003003c0f162e48")
BASELINE_PPS = bytes.fromhex("68cb83cb20")

# The hvcC libx265 (via ffmpeg, 640x360 Main) writes into MP4, cut to its VPS/SPS/PPS arrays
# (numOfArrays 4 → 3: its fourth array, a 2 KiB x265 "info" SEI, is left out).
HEVC_VPS = bytes.fromhex("40010c01ffff01600000030090000003000003003f959809")
HEVC_SPS = bytes.fromhex("42010101600000030090000003000003003fa00502016965959a4932bc05a0"
                         "2000000300200000030321")
HEVC_PPS = bytes.fromhex("4401c172b46240")
HEVC_RECORD = (bytes.fromhex("0101600000009000000000003ff000fcfdf8f800000f") + b"\x03"
               + b"\xa0\x00\x01" + struct.pack(">H", len(HEVC_VPS)) + HEVC_VPS
               + b"\xa1\x00\x01" + struct.pack(">H", len(HEVC_SPS)) + HEVC_SPS
               + b"\xa2\x00\x01" + struct.pack(">H", len(HEVC_PPS)) + HEVC_PPS)


def avc_record(sps: list[bytes], pps: list[bytes], *, length_size: int = 4,
               profile: bytes = b"\x64\x00\x1f") -> bytes:
    """An AVCDecoderConfigurationRecord built field by field from ISO 14496-15 §5.3.3.1."""
    out = bytearray([1, *profile, 0xFC | (length_size - 1), 0xE0 | len(sps)])
    for ps in sps:
        out += struct.pack(">H", len(ps)) + ps
    out.append(len(pps))
    for ps in pps:
        out += struct.pack(">H", len(ps)) + ps
    return bytes(out)


def length_prefixed(nals: list[bytes], size: int = 4) -> bytes:
    return b"".join(len(n).to_bytes(size, "big") + n for n in nals)


def asc_bits(*fields: tuple[int, int]) -> bytes:
    """Pack (value, bit width) fields MSB first, zero-padded to whole bytes."""
    value, width = 0, 0
    for field_value, bits in fields:
        value = (value << bits) | field_value
        width += bits
    pad = -width % 8
    return (value << pad).to_bytes((width + pad) // 8, "big")


# -- AVC ----------------------------------------------------------------------------------------


def test_ffmpeg_baseline_sequence_header_yields_its_sps_and_pps() -> None:
    packet = parse_video(BASELINE_640X360_TAG)
    assert (packet.codec, packet.is_config, packet.is_frame, packet.cts) == (H264, True, False, 0)
    config = parse_video_config(packet)
    assert config == VideoConfig(H264, (BASELINE_SPS, BASELINE_PPS), 4)
    sps, pps = config.parameter_sets
    assert sps[0] & 0x1F == 7 and pps[0] & 0x1F == 8, "NAL types SPS and PPS"
    record = packet.data
    assert record[1:4] == sps[1:4], "profile, constraints and level copied from the SPS"
    assert sps[1] == 66 and sps[3] == 30, "Baseline profile, level 3.0"


def test_annexb_parameter_sets_are_start_code_prefixed_in_order() -> None:
    config = parse_avc_config(BASELINE_640X360_TAG[5:])
    assert config.annexb_parameter_sets() == (START_CODE + BASELINE_SPS + START_CODE
                                              + BASELINE_PPS)


@pytest.mark.parametrize("length_size", [1, 2, 4])
def test_avc_record_nal_length_size_comes_from_length_size_minus_one(length_size: int) -> None:
    config = parse_avc_config(avc_record([BASELINE_SPS], [BASELINE_PPS], length_size=length_size))
    assert config.nal_length_size == length_size


def test_avc_record_with_several_sps_and_pps_keeps_them_all_in_order() -> None:
    sets = [b"\x67\x01", b"\x67\x02\x03"], [b"\x68\x04", b"\x68\x05", b"\x68\x06\x07"]
    config = parse_avc_config(avc_record(*sets))
    assert config.parameter_sets == (*sets[0], *sets[1])


def test_avc_record_ignores_trailing_high_profile_extension_bytes() -> None:
    # High-profile records end with chroma_format / bit depth / SPS-ext fields.
    record = avc_record([b"\x67\x64"], [b"\x68\xee"]) + bytes.fromhex("fdf8f800")
    assert parse_avc_config(record).parameter_sets == (b"\x67\x64", b"\x68\xee")


@settings(max_examples=150, deadline=None)
@given(sps=st.lists(st.binary(min_size=1, max_size=40), max_size=3),
       pps=st.lists(st.binary(min_size=1, max_size=20), max_size=3),
       length_size=st.sampled_from([1, 2, 4]))
def test_avc_record_round_trips_any_parameter_sets(sps: list[bytes], pps: list[bytes],
                                                   length_size: int) -> None:
    record = avc_record(sps, pps, length_size=length_size)
    assert parse_avc_config(record) == VideoConfig(H264, (*sps, *pps), length_size)
    for cut in range(len(record)):
        with pytest.raises(ProtocolError):
            parse_avc_config(record[:cut])


@pytest.mark.parametrize("record,message", [
    (b"", "malformed"),
    (b"\x01\x42\xc0\x1e\xff\xe1", "malformed"),  # 6 bytes
    (b"\x00\x42\xc0\x1e\xff\xe1\x00\x05", "malformed"),  # configurationVersion 0
    (b"\x01\x42\xc0\x1e\xff\xe1\x00\x19\x67\x42", "truncated"),  # SPS shorter than its size
    (b"\x01\x42\xc0\x1e\xff\xe0", "malformed"),  # no SPS and no PPS count
    (b"\x01\x42\xc0\x1e\xff\xe0\x01\x00", "truncated"),  # PPS size cut in half
])
def test_malformed_avc_record_raises_protocol_error(record: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_avc_config(record)


# -- HEVC ---------------------------------------------------------------------------------------


def test_x265_hvcc_yields_vps_sps_pps_and_four_byte_lengths() -> None:
    config = parse_hevc_config(HEVC_RECORD)
    assert config == VideoConfig(HEVC, (HEVC_VPS, HEVC_SPS, HEVC_PPS), 4)
    assert [(ps[0] >> 1) & 0x3F for ps in config.parameter_sets] == [32, 33, 34]


def test_hevc_sequence_start_in_enhanced_rtmp_and_legacy_codec_id_12() -> None:
    enhanced = bytes([0x90]) + b"hvc1" + HEVC_RECORD  # keyframe, PacketType 0 SequenceStart
    legacy = b"\x1c\x00\x00\x00\x00" + HEVC_RECORD  # keyframe | codec id 12, sequence header
    for body in (enhanced, legacy):
        packet = parse_video(body)
        assert (packet.codec, packet.is_config) == (HEVC, True)
        config = parse_video_config(packet)
        assert config is not None and config.parameter_sets == (HEVC_VPS, HEVC_SPS, HEVC_PPS)


@pytest.mark.parametrize("cut", [0, 22, 23, 25, 27, 40, len(HEVC_RECORD) - 1])
def test_truncated_hevc_record_raises_protocol_error(cut: int) -> None:
    with pytest.raises(ProtocolError, match="HEVC configuration record truncated"):
        parse_hevc_config(HEVC_RECORD[:cut])


# -- FLV video packets --------------------------------------------------------------------------


def test_legacy_avc_frame_gives_signed_composition_offset_and_nal_data() -> None:
    nals = length_prefixed([b"\x65\x88\x84"])
    packet = parse_video(b"\x17\x01\x00\x00\x50" + nals)
    assert (packet.codec, packet.is_config, packet.is_frame, packet.cts, packet.data) == (
        H264, False, True, 80, nals)
    assert parse_video(b"\x27\x01\xff\xff\xdf" + nals).cts == -33, "24-bit two's complement"


def test_enhanced_rtmp_coded_frames_with_and_without_composition_offset() -> None:
    nals = length_prefixed([b"\x26\x01\xaf"])
    frames = parse_video(bytes([0x91]) + b"hvc1" + b"\xff\xff\xf0" + nals)
    assert (frames.codec, frames.is_frame, frames.cts, frames.data) == (HEVC, True, -16, nals)
    frames_x = parse_video(bytes([0xA3]) + b"hvc1" + nals)
    assert (frames_x.codec, frames_x.is_frame, frames_x.cts, frames_x.data) == (
        HEVC, True, 0, nals)


def test_video_packets_of_other_codecs_have_no_configuration() -> None:
    av1 = parse_video(bytes([0x90]) + b"av01" + b"\x81\x00\x0c\x00")
    assert av1.codec is None and av1.is_config
    assert parse_video_config(av1) is None
    vp6 = parse_video(b"\x14\x00\x00\x00\x00\x00")  # codec id 4 (VP6)
    assert vp6.codec is None and parse_video_config(vp6) is None


@pytest.mark.parametrize("body", [b"", b"\x17", b"\x17\x01\x00\x00", b"\x91avc1\x00\x00"])
def test_short_video_tags_raise_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_video(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_parse_or_raise_protocol_error_only(data: bytes) -> None:
    for parse in (parse_video, parse_avc_config, parse_hevc_config, parse_aac_config):
        try:
            parse(data)
        except ProtocolError:
            pass


# -- Annex-B ------------------------------------------------------------------------------------


def test_keyframe_gets_delimiter_then_parameter_sets_then_its_nal_units() -> None:
    config = VideoConfig(H264, (BASELINE_SPS, BASELINE_PPS), 4)
    idr, sei = b"\x65\x88\x84\x00", b"\x06\x05\x01\x02"
    out = to_annexb(length_prefixed([sei, idr]), config, keyframe=True)
    assert out == (b"\x00\x00\x00\x01\x09\xf0" + b"\x00\x00\x00\x01" + BASELINE_SPS
                   + b"\x00\x00\x00\x01" + BASELINE_PPS + b"\x00\x00\x00\x01" + sei
                   + b"\x00\x00\x00\x01" + idr)


def test_non_keyframe_has_no_parameter_sets_and_in_band_delimiters_are_dropped() -> None:
    config = VideoConfig(H264, (BASELINE_SPS, BASELINE_PPS), 2)
    slice_ = b"\x41\x9a\x02"
    out = to_annexb(length_prefixed([b"\x09\x10", slice_], size=2), config, keyframe=False)
    assert out == AUD_H264 + START_CODE + slice_


def test_hevc_annexb_uses_the_hevc_delimiter_and_drops_in_band_ones() -> None:
    config = VideoConfig(HEVC, (HEVC_VPS, HEVC_SPS, HEVC_PPS), 4)
    idr = b"\x26\x01\xaf\x09"  # IDR_W_RADL (type 19)
    out = to_annexb(length_prefixed([b"\x46\x01\x50", idr]), config, keyframe=True)
    assert AUD_HEVC == b"\x00\x00\x00\x01\x46\x01\x50"  # AUD: type 35, layer 0, tid 1
    assert out == (AUD_HEVC + START_CODE + HEVC_VPS + START_CODE + HEVC_SPS + START_CODE
                   + HEVC_PPS + START_CODE + idr)


@pytest.mark.parametrize("data", [
    b"\x00\x00\x00\x10\x65\x88",  # says 16 bytes, has 2
    b"\x00\x00\x00\x00\x65",  # a zero-length NAL unit
    b"\x00\x00\x00\x02\x41\x9a\x00\x00\x00\x05\x41",  # second one overruns
])
def test_nal_unit_overrunning_the_frame_raises_protocol_error(data: bytes) -> None:
    config = VideoConfig(H264, (), 4)
    with pytest.raises(ProtocolError, match="overruns the frame"):
        to_annexb(data, config, keyframe=False)


@settings(max_examples=150, deadline=None)
@given(nals=st.lists(st.binary(min_size=1, max_size=300).filter(lambda n: n[0] & 0x1F != 9),
                     max_size=6),
       size=st.sampled_from([1, 2, 4]))
def test_annexb_holds_every_nal_unit_once_in_order(nals: list[bytes], size: int) -> None:
    nals = [n for n in nals if len(n) < 1 << (8 * size)]
    out = to_annexb(length_prefixed(nals, size), VideoConfig(H264, (), size), keyframe=False)
    assert out == AUD_H264 + b"".join(START_CODE + n for n in nals)


# -- AAC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("asc,expected", [
    (b"\x12\x10", AacConfig(2, 4, 2)),  # AAC-LC 44.1 kHz stereo (the common FLV header)
    (b"\x11\x90", AacConfig(2, 3, 2)),  # AAC-LC 48 kHz stereo
    (b"\x12\x08", AacConfig(2, 4, 1)),  # AAC-LC 44.1 kHz mono
    (b"\x13\x90", AacConfig(2, 7, 2)),  # AAC-LC 22.05 kHz stereo
    (b"\x2b\x11\x88\x00", AacConfig(5, 6, 2)),  # HE-AAC (explicit SBR): 24 kHz core, stereo
    (b"\x0a\x10", AacConfig(1, 4, 2)),  # AAC Main 44.1 kHz stereo
])
def test_audio_specific_config_known_vectors(asc: bytes, expected: AacConfig) -> None:
    assert parse_aac_config(asc) == expected


def test_audio_specific_config_escaped_object_type() -> None:
    # audioObjectType 31 escapes to 32 + 6 more bits: 42 (USAC), 48 kHz, stereo.
    asc = asc_bits((31, 5), (42 - 32, 6), (3, 4), (2, 4))
    assert parse_aac_config(asc) == AacConfig(42, 3, 2)


@settings(max_examples=200, deadline=None)
@given(object_type=st.integers(1, 30), frequency=st.integers(0, 12),
       channels=st.integers(0, 15), tail=st.binary(max_size=4))
def test_audio_specific_config_fields_round_trip(object_type: int, frequency: int,
                                                 channels: int, tail: bytes) -> None:
    asc = asc_bits((object_type, 5), (frequency, 4), (channels, 4)) + tail
    assert parse_aac_config(asc) == AacConfig(object_type, frequency, channels)


@pytest.mark.parametrize("asc,message", [
    (b"", "shorter than 2"),
    (b"\x12", "shorter than 2"),
    (asc_bits((2, 5), (15, 4), (0xABCDE, 24), (2, 4)), "explicit sampling rate"),
    (asc_bits((2, 5), (13, 4), (2, 4)), "index 13 is reserved"),
    (asc_bits((2, 5), (14, 4), (2, 4)), "index 14 is reserved"),
])
def test_unusable_audio_specific_config_raises_protocol_error(asc: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_aac_config(asc)


def read_adts(header: bytes) -> dict[str, int]:
    """The fixed and variable ADTS header fields (ISO 14496-3 §1.A.2.2), read bit by bit."""
    bits = int.from_bytes(header, "big")

    def take(start: int, width: int) -> int:
        return (bits >> (56 - start - width)) & ((1 << width) - 1)

    return {"syncword": take(0, 12), "id": take(12, 1), "layer": take(13, 2),
            "protection_absent": take(15, 1), "profile": take(16, 2),
            "frequency_index": take(18, 4), "private": take(22, 1), "channels": take(23, 3),
            "frame_length": take(30, 13), "fullness": take(43, 11), "blocks": take(54, 2)}


def test_adts_header_for_aac_lc_44k_stereo_matches_known_bytes() -> None:
    header = AacConfig(2, 4, 2).adts_header(371)
    # 0xFFF1: sync, MPEG-4, layer 0, no CRC; 0x50: LC, 44.1 kHz; 0x80: stereo; 378 bytes.
    assert header == bytes.fromhex("fff150802f5ffc")


@settings(max_examples=200, deadline=None)
@given(object_type=st.integers(1, 4), frequency=st.integers(0, 12),
       channels=st.integers(0, 7), payload=st.integers(0, 0x1FFF - 7))
def test_adts_header_fields_read_back(object_type: int, frequency: int, channels: int,
                                      payload: int) -> None:
    fields = read_adts(AacConfig(object_type, frequency, channels).adts_header(payload))
    assert fields == {"syncword": 0xFFF, "id": 0, "layer": 0, "protection_absent": 1,
                      "profile": object_type - 1, "frequency_index": frequency, "private": 0,
                      "channels": channels, "frame_length": payload + 7, "fullness": 0x7FF,
                      "blocks": 0}


def test_adts_refuses_frames_too_large_for_its_13_bit_length() -> None:
    config = AacConfig(2, 4, 2)
    assert read_adts(config.adts_header(0x1FFF - 7))["frame_length"] == 0x1FFF
    with pytest.raises(ProtocolError, match="too large for ADTS"):
        config.adts_header(0x1FFF - 6)


@pytest.mark.parametrize("asc", [b"\x2b\x11\x88\x00", asc_bits((29, 5), (6, 4), (1, 4))],
                         ids=["aot5-sbr", "aot29-ps"])
def test_he_aac_is_signalled_implicitly_as_aac_lc_in_adts(asc: bytes) -> None:
    header = parse_aac_config(asc).adts_header(100)
    assert read_adts(header)["profile"] == 1, "ADTS profile 1 = AAC-LC, SBR implicit"



# -- raw configuration bytes (fMP4 carries them verbatim) ---------------------------------------


def test_parsed_configs_keep_the_record_and_asc_verbatim_outside_equality() -> None:
    avc = parse_avc_config(BASELINE_640X360_TAG[5:])
    assert avc.record == BASELINE_640X360_TAG[5:]
    assert parse_hevc_config(HEVC_RECORD).record == HEVC_RECORD
    assert parse_aac_config(b"\x12\x10").asc == b"\x12\x10"
    assert avc == VideoConfig(H264, (BASELINE_SPS, BASELINE_PPS), 4), "equality ignores record"
    assert parse_aac_config(b"\x12\x10") == AacConfig(2, 4, 2), "equality ignores asc"


@pytest.mark.parametrize("asc,rate", [
    (b"\x12\x10", 44100), (b"\x11\x90", 48000), (b"\x13\x90", 22050),
    (b"\x2b\x11\x88\x00", 24000),  # HE-AAC: the core rate, at which a frame is 1024 samples
    (asc_bits((2, 5), (0, 4), (2, 4)), 96000), (asc_bits((2, 5), (12, 4), (1, 4)), 7350),
])
def test_aac_sample_rate_comes_from_the_frequency_index(asc: bytes, rate: int) -> None:
    assert parse_aac_config(asc).sample_rate == rate
