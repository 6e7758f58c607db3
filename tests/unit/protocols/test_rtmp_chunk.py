from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arcly.engine import ProtocolError
from arcly.protocols.rtmp import chunk
from arcly.protocols.rtmp.chunk import ChunkDecoder, encode_message

messages = st.lists(st.tuples(
    st.sampled_from([3, 4, 5, 6, 63, 64, 319, 320, 65599]),   # 1-, 2- and 3-byte basic headers
    st.sampled_from([chunk.AUDIO, chunk.VIDEO, chunk.DATA_AMF0]),
    st.integers(0, 5),
    st.one_of(st.integers(0, 0xFFFFFE), st.integers(0xFFFFFF, 0xFFFFFFFF)),  # extended too
    st.binary(max_size=1000)), max_size=8)


@given(messages, st.integers(1, 600), st.data())
def test_messages_survive_chunking_at_any_size_and_any_read_boundaries(
        items: list[tuple[int, int, int, int, bytes]], chunk_size: int,
        data: st.DataObject) -> None:
    wire = struct_set_chunk_size(chunk_size) + b"".join(
        encode_message(csid, t, sid, ts, body, chunk_size) for csid, t, sid, ts, body in items)
    decoder = ChunkDecoder()
    got = []
    pos = 0
    while pos < len(wire):
        step = data.draw(st.integers(1, 700))
        got += decoder.feed(wire[pos:pos + step])
        pos += step
    got = [m for m in got if m.type_id != chunk.SET_CHUNK_SIZE]
    assert [(m.csid, m.type_id, m.stream_id, m.timestamp, m.payload) for m in got] == items


def struct_set_chunk_size(size: int) -> bytes:
    return encode_message(2, chunk.SET_CHUNK_SIZE, 0, 0, struct.pack(">I", size), 128)


def test_header_types_1_2_3_carry_deltas() -> None:
    body = b"x" * 10
    wire = (encode_message(4, chunk.AUDIO, 1, 1000, body, 128)
            # type 1: delta 20, new length 3, same stream
            + bytes([0x44]) + (20).to_bytes(3, "big") + (3).to_bytes(3, "big") + b"\x08" + b"abc"
            # type 2: delta 30, same length
            + bytes([0x84]) + (30).to_bytes(3, "big") + b"def"
            # type 3: repeat delta 30
            + bytes([0xC4]) + b"ghi")
    got = ChunkDecoder().feed(wire)
    assert [(m.timestamp, m.payload) for m in got] == [(1000, body), (1020, b"abc"),
                                                        (1050, b"def"), (1080, b"ghi")]


def test_type3_after_type0_repeats_the_timestamp_field_as_delta() -> None:
    # ffmpeg's encoder sends a type-3 header for a new message whose delta equals the
    # previous type-0 timestamp field.
    wire = encode_message(4, chunk.AUDIO, 1, 23, b"abc", 128) + bytes([0xC4]) + b"def"
    assert [m.timestamp for m in ChunkDecoder().feed(wire)] == [23, 46]


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    try:
        ChunkDecoder(max_message_size=4096).feed(data)
    except ProtocolError:
        pass


@pytest.mark.parametrize("size", [0, 0x80000000, 0x1000000])
def test_invalid_chunk_sizes_are_refused(size: int) -> None:
    with pytest.raises(ProtocolError, match="chunk size"):
        ChunkDecoder().feed(encode_message(2, chunk.SET_CHUNK_SIZE, 0, 0,
                                           struct.pack(">I", size), 128))


def test_message_over_the_cap_is_refused_before_buffering() -> None:
    header = b"\x04" + b"\x00\x00\x00" + (5000).to_bytes(3, "big") + b"\x09" + b"\x01\x00\x00\x00"
    with pytest.raises(ProtocolError, match="exceeds"):
        ChunkDecoder(max_message_size=4096).feed(header)


def test_many_partial_messages_cannot_exhaust_memory() -> None:
    # Each chunk stream opens a 4000-byte message and sends only its first 128-byte chunk.
    decoder = ChunkDecoder(max_message_size=4096, max_buffered=4096)
    with pytest.raises(ProtocolError, match="partial messages"):
        for csid in range(3, 60):
            decoder.feed(bytes([csid]) + b"\x00\x00\x00" + (4000).to_bytes(3, "big")
                         + b"\x09\x01\x00\x00\x00" + b"x" * 128)


def _encode_mixed(plan: list[tuple[int, int, int, bytes, int]], chunk_size: int,
                  interleave: list[int]) -> tuple[bytes, list[tuple[int, int, int, int, bytes]]]:
    """Wire bytes for ``plan`` (csid, delta, type id, body, header choice) the way encoders
    really send: type-1/2/3 headers whenever the previous message on the chunk stream allows
    them, extended timestamps, and chunks of different chunk streams interleaved (at most one
    message in flight per chunk stream, as the spec requires). Returns the wire and the
    messages a decoder must produce, in completion order."""
    state: dict[int, tuple[int, int, int, int, bool]] = {}  # csid -> ts, delta, len, type, ext
    queue: list[tuple[int, tuple[int, int, int, int, bytes], list[bytes]]] = []
    for csid, delta, type_id, body, choice in plan:
        prev = state.get(csid)
        if prev is None:
            fmt, ts = 0, delta
        else:
            p_ts, p_delta, p_len, p_type, _ = prev
            ts = (p_ts + delta) & 0xFFFFFFFF
            options = [0, 1]
            if p_len == len(body) and p_type == type_id:
                options.append(2)
                if p_delta == delta:
                    options.append(3)
            fmt = options[choice % len(options)]
        field = ts if fmt == 0 else delta
        # A type-3 header carries the extended field when the header it repeats did.
        extended = (prev[4] if prev else False) if fmt == 3 else field >= 0xFFFFFF
        ext = struct.pack(">I", field) if extended else b""
        basic = chunk._basic_header(fmt, csid)
        head = basic
        if fmt <= 2:
            head += (0xFFFFFF if extended else field).to_bytes(3, "big")
        if fmt <= 1:
            head += len(body).to_bytes(3, "big") + bytes([type_id])
        if fmt == 0:
            head += struct.pack("<I", 1)
        chunks = [head + ext + body[:chunk_size]]
        for offset in range(chunk_size, len(body), chunk_size):
            chunks.append(chunk._basic_header(3, csid) + ext + body[offset:offset + chunk_size])
        state[csid] = (ts, field, len(body), type_id, extended)
        queue.append((csid, (csid, type_id, 1, ts, body), chunks))
    # Interleave: a chunk stream's next message starts only after its previous one finished.
    wire: list[bytes] = []
    expected: list[tuple[int, int, int, int, bytes]] = []
    active: list[tuple[tuple[int, int, int, int, bytes], list[bytes]]] = []
    picks = iter(interleave)
    while queue or active:
        busy = {m[0] for m, _ in active}
        for index, (csid, message, chunks) in enumerate(queue):
            if csid not in busy:
                active.append((message, list(chunks)))
                del queue[index]
                break
        i = next(picks, 0) % len(active)
        message, chunks = active[i]
        wire.append(chunks.pop(0))
        if not chunks:
            expected.append(message)
            del active[i]
    return b"".join(wire), expected


@given(st.lists(st.tuples(st.sampled_from([3, 4, 6, 64, 400]),
                          st.one_of(st.integers(0, 100), st.integers(0xFFFFF0, 0x1000010)),
                          st.sampled_from([chunk.AUDIO, chunk.VIDEO]),
                          st.sampled_from([b"", b"a" * 7, b"v" * 300, bytes(range(256)) * 5]),
                          st.integers(0, 3)), max_size=12),
       st.sampled_from([64, 128, 300, 4096]), st.lists(st.integers(0, 9), max_size=60),
       st.data())
def test_mixed_header_types_interleaved_and_split_anywhere(
        plan: list[tuple[int, int, int, bytes, int]], chunk_size: int, interleave: list[int],
        data: st.DataObject) -> None:
    wire, expected = _encode_mixed(plan, chunk_size, interleave)
    wire = struct_set_chunk_size(chunk_size) + wire
    decoder = ChunkDecoder()
    got = []
    pos = 0
    while pos < len(wire):  # reads of any size: one byte, a chunk and a half, everything
        step = data.draw(st.sampled_from([1, 5, 200, 5000, 100_000]))
        got += decoder.feed(wire[pos:pos + step])
        pos += step
    got = [m for m in got if m.type_id != chunk.SET_CHUNK_SIZE]
    assert [(m.csid, m.type_id, m.stream_id, m.timestamp, m.payload) for m in got] == expected
