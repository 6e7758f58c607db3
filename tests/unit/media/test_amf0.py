from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arcly.engine import ProtocolError
from arcly.media import amf0

keys = st.text(min_size=1, max_size=20)
scalars = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False),
                    st.text(max_size=50), st.just(amf0.UNDEFINED))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)), max_leaves=20)


@given(st.lists(values, max_size=5))
def test_encode_then_decode_round_trips(items: list[Any]) -> None:
    assert amf0.decode(amf0.encode(*items)) == items


@given(st.binary(max_size=512))
def test_decoding_arbitrary_bytes_raises_only_protocol_error(data: bytes) -> None:
    try:
        amf0.decode(data)
    except ProtocolError:
        pass


def test_ecma_array_decodes_to_dict() -> None:
    data = amf0.encode("onMetaData", amf0.EcmaArray(width=640.0, height=360.0))
    assert amf0.decode(data) == ["onMetaData", {"width": 640.0, "height": 360.0}]


def test_known_connect_bytes_decode() -> None:
    # "connect", 1, {app: "live"} as ffmpeg sends it.
    data = (b"\x02\x00\x07connect\x00\x3f\xf0\x00\x00\x00\x00\x00\x00"
            b"\x03\x00\x03app\x02\x00\x04live\x00\x00\x09")
    assert amf0.decode(data) == ["connect", 1.0, {"app": "live"}]


@pytest.mark.parametrize("data", [
    b"\x02\x00\x10short",                  # string longer than the message
    b"\x03\x00\x01a\x00" + b"\x00" * 7,     # object property without an end marker
    b"\x0a\xff\xff\xff\xff",                # strict array claiming 4 billion items
    b"\x11\x01",                            # AVM+ switch (AMF3) is not AMF0
    b"\x03" * 10000,                        # nesting bomb
    b"\x02\x00\x02\xff\xfe",               # invalid UTF-8
])
def test_hostile_amf_is_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        amf0.decode(data)


def test_numbers_keep_their_value() -> None:
    assert amf0.decode(amf0.encode(math.pi, 3, True)) == [math.pi, 3.0, True]
