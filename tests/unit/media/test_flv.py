from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from arcly.engine import Frame, FrameKind, ProtocolError
from arcly.media import flv

tags = st.lists(st.tuples(st.sampled_from([8, 9, 18]), st.integers(0, 0xFFFFFFFF),
                          st.binary(max_size=300)), max_size=10)


@given(tags)
def test_tags_round_trip(items: list[tuple[int, int, bytes]]) -> None:
    data = flv.file_header() + b"".join(flv.encode_tag(t, ts, body) for t, ts, body in items)
    parsed, rest = flv.parse_tags(data, flv.parse_header(data))
    assert rest == len(data)
    assert [(t.tag_type, t.timestamp, t.body) for t in parsed] == items


@given(st.binary(max_size=400))
def test_parsing_arbitrary_bytes_raises_only_protocol_error(data: bytes) -> None:
    try:
        flv.parse_tags(data, flv.parse_header(data))
    except ProtocolError:
        pass


def test_frame_tag_is_built_once_and_shared() -> None:
    frame = Frame(FrameKind.VIDEO, 40, b"\x27\x01\x00\x00\x00abc")
    assert flv.frame_tag(frame) is flv.frame_tag(frame)


def test_classification_of_avc_aac_and_enhanced_rtmp() -> None:
    avc_config = flv.make_frame(FrameKind.VIDEO, 0, b"\x17\x00\x00\x00\x00\x01")
    assert avc_config.config and not avc_config.keyframe
    key = flv.make_frame(FrameKind.VIDEO, 0, b"\x17\x01\x00\x00\x00\x01")
    assert key.keyframe and not key.config
    assert not flv.make_frame(FrameKind.VIDEO, 0, b"\x27\x01\x00\x00\x00").keyframe
    assert flv.make_frame(FrameKind.AUDIO, 0, b"\xaf\x00\x12\x10").config
    assert not flv.make_frame(FrameKind.AUDIO, 0, b"\xaf\x01\x21").config
    # Enhanced RTMP HEVC: IsExHeader | keyframe | SequenceStart, FourCC "hvc1".
    hevc_start = flv.make_frame(FrameKind.VIDEO, 0, b"\x90hvc1" + b"\x01" * 10)
    assert hevc_start.config and not hevc_start.keyframe
    end_of_sequence = flv.make_frame(FrameKind.VIDEO, 0, b"\x17\x02\x00\x00\x00")
    assert not end_of_sequence.keyframe and not end_of_sequence.config
    hevc_key = flv.make_frame(FrameKind.VIDEO, 0, b"\x91hvc1" + b"\x00" * 10)
    assert hevc_key.keyframe and not hevc_key.config
    assert hevc_key.payload == b"\x91hvc1" + b"\x00" * 10, "payload passes through untouched"
    assert flv.make_frame(FrameKind.DATA, 0, b"\x02\x00\x0aonMetaData\x08").config
