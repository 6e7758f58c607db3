"""Annex-B ↔ NAL units ↔ AVCC, and the AVC configuration record WHIP builds from SPS/PPS."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from arcly.media import codecs

SPS = bytes.fromhex("6764001facd9405005bb011000000300100000030320f18319")
PPS = bytes.fromhex("68ebe3cb22c0")


def test_split_annexb_takes_three_and_four_byte_start_codes() -> None:
    data = b"\x00\x00\x00\x01\x67\xaa" + b"\x00\x00\x01\x68\xbb" + b"\x00\x00\x01\x65\x01\x02"
    assert codecs.split_annexb(data) == [b"\x67\xaa", b"\x68\xbb", b"\x65\x01\x02"]


def test_split_annexb_of_nothing_is_nothing() -> None:
    assert codecs.split_annexb(b"") == []
    assert codecs.split_annexb(b"\x00\x00\x01") == []
    assert codecs.split_annexb(b"garbage without a start code") == []


# NAL units never contain 00 00 0x (emulation prevention), and none is empty.
nal_units = st.lists(st.binary(min_size=1, max_size=40).filter(
    lambda b: b"\x00\x00" not in b and not b.endswith(b"\x00")), min_size=1, max_size=8)


@given(nal_units, st.booleans())
def test_units_survive_annexb_and_back(units: list[bytes], long_codes: bool) -> None:
    code = b"\x00\x00\x00\x01" if long_codes else b"\x00\x00\x01"
    assert codecs.split_annexb(b"".join(code + u for u in units)) == units


@given(nal_units)
def test_length_prefixed_and_to_annexb_are_inverse(units: list[bytes]) -> None:
    config = codecs.VideoConfig(codecs.H264, (SPS, PPS), 4)
    annexb = codecs.to_annexb(codecs.length_prefixed(units), config, keyframe=False,
                              delimiter=False)
    assert codecs.split_annexb(annexb) == [u for u in units if u[0] & 0x1F != 9]


def test_a_keyframe_for_rtp_carries_parameter_sets_and_no_delimiter() -> None:
    config = codecs.VideoConfig(codecs.H264, (SPS, PPS), 4)
    idr = b"\x65\x88\x84"
    units = codecs.split_annexb(codecs.to_annexb(codecs.length_prefixed([idr]), config,
                                                 keyframe=True, delimiter=False))
    assert units == [SPS, PPS, idr]
    with_delimiter = codecs.split_annexb(codecs.to_annexb(codecs.length_prefixed([idr]),
                                                          config, keyframe=True))
    assert with_delimiter[0][0] & 0x1F == 9


def test_the_configuration_record_parses_back_to_its_sets() -> None:
    record = codecs.avc_config_record(SPS, PPS)
    config = codecs.parse_avc_config(record)
    assert config.parameter_sets == (SPS, PPS)
    assert config.nal_length_size == 4
    assert record[1:4] == SPS[1:4]  # profile, constraints, level
