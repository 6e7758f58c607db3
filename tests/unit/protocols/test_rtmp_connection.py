"""The sans-I/O RTMP connection driven with plain bytes: a whole conversation, no sockets."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from arcly.engine import FrameKind, ProtocolError
from arcly.media import amf0
from arcly.protocols.rtmp import chunk, handshake
from arcly.protocols.rtmp.chunk import ChunkDecoder, encode_message
from arcly.protocols.rtmp.connection import RtmpConnection, State
from arcly.protocols.rtmp.events import (
    Connected,
    HandshakeDone,
    MediaReceived,
    PlayRequested,
    PublishRequested,
    StreamClosed,
)


def cmd(*values: Any, stream_id: int = 0) -> bytes:
    return encode_message(3, chunk.COMMAND_AMF0, stream_id, 0, amf0.encode(*values), 128)


def open_connection() -> tuple[RtmpConnection, ChunkDecoder]:
    conn = RtmpConnection()
    c1 = b"\x00" * 8 + bytes(range(256)) * 6
    events = conn.receive_data(b"\x03" + c1[:1536])
    assert events == [HandshakeDone(digest=False)]
    s = conn.data_to_send()
    assert len(s) == 3073 and s[0] == 3
    assert s[1537:1541] == c1[:4] and s[1545:] == c1[8:1536], "simple C1: S2 echoes C1"
    conn.receive_data(s[1:1537])
    assert conn.state is State.OPEN
    return conn, ChunkDecoder()


def replies(conn: RtmpConnection, decoder: ChunkDecoder) -> list[list[Any]]:
    return [amf0.decode(m.payload) for m in decoder.feed(conn.data_to_send())
            if m.type_id == chunk.COMMAND_AMF0]


def test_publish_conversation_like_ffmpeg() -> None:
    conn, dec = open_connection()
    events = conn.receive_data(cmd("connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live"}))
    assert isinstance(events[0], Connected) and events[0].app == "live"
    assert replies(conn, dec)[0][3]["code"] == "NetConnection.Connect.Success"
    conn.receive_data(cmd("releaseStream", 2.0, None, "cam") + cmd("FCPublish", 3.0, None, "cam")
                      + cmd("createStream", 4.0, None))
    out = replies(conn, dec)
    assert ["_result", 4.0, None, 1.0] in out
    events = conn.receive_data(cmd("publish", 5.0, None, "cam?token=abc", "live", stream_id=1))
    assert events == [PublishRequested(1, "cam", "token=abc", "live")]
    conn.accept_publish(1, "cam")
    assert replies(conn, dec)[-1][3]["code"] == "NetStream.Publish.Start"
    meta = amf0.encode("@setDataFrame", "onMetaData", {"width": 640.0})
    media = (encode_message(5, chunk.DATA_AMF0, 1, 0, meta, 128)
             + encode_message(6, chunk.VIDEO, 1, 0, b"\x17\x00abc", 128)
             + encode_message(4, chunk.AUDIO, 1, 0, b"\xaf\x00\x12\x10", 128))
    events = conn.receive_data(media)
    assert [e.kind for e in events if isinstance(e, MediaReceived)] == [
        FrameKind.DATA, FrameKind.VIDEO, FrameKind.AUDIO]
    assert events[0].payload == amf0.encode("onMetaData", {"width": 640.0})
    events = conn.receive_data(cmd("FCUnpublish", 6.0, None, "cam")
                               + cmd("deleteStream", 7.0, None, 1.0))
    assert StreamClosed(1, "FCUnpublish") in events


def test_play_and_end_of_stream_notifications() -> None:
    conn, dec = open_connection()
    conn.receive_data(cmd("connect", 1.0, {"app": "live"}) + cmd("createStream", 2.0, None))
    events = conn.receive_data(cmd("play", 0.0, None, "cam", -2.0, stream_id=1))
    assert events == [PlayRequested(1, "cam", "", -2.0)]
    conn.accept_play(1, "cam")
    conn.end_play(1, "cam")
    msgs = dec.feed(conn.data_to_send())
    codes = [amf0.decode(m.payload)[3]["code"] for m in msgs
             if m.type_id == chunk.COMMAND_AMF0 and amf0.decode(m.payload)[0] == "onStatus"]
    assert codes == ["NetStream.Play.Reset", "NetStream.Play.Start",
                     "NetStream.Play.UnpublishNotify", "NetStream.Play.Stop"]
    assert any(m.type_id == chunk.USER_CONTROL and m.payload[:2] == b"\x00\x01" for m in msgs)


def test_acknowledgement_window_and_ping() -> None:
    conn, dec = open_connection()
    conn.receive_data(encode_message(2, chunk.WINDOW_ACK_SIZE, 0, 0, struct.pack(">I", 10), 128))
    conn.receive_data(encode_message(2, chunk.USER_CONTROL, 0, 0, b"\x00\x06\x00\x00\x00\x2a", 128))
    msgs = dec.feed(conn.data_to_send())
    assert any(m.type_id == chunk.ACK for m in msgs)
    assert any(m.payload == b"\x00\x07\x00\x00\x00\x2a" for m in msgs)


def test_aggregate_message_is_split_with_rebased_timestamps() -> None:
    conn, _ = open_connection()
    conn.receive_data(cmd("connect", 1.0, {"app": "live"}) + cmd("createStream", 2.0, None)
                      + cmd("publish", 0.0, None, "cam", "live", stream_id=1))
    conn.accept_publish(1, "cam")

    def sub(tag_type: int, ts: int, body: bytes) -> bytes:
        return (bytes([tag_type]) + len(body).to_bytes(3, "big")
                + (ts & 0xFFFFFF).to_bytes(3, "big") + bytes([ts >> 24]) + b"\x00\x00\x00"
                + body + struct.pack(">I", 11 + len(body)))

    body = sub(9, 500, b"\x17\x01abc") + sub(8, 520, b"\xaf\x01xy")
    events = conn.receive_data(encode_message(6, chunk.AGGREGATE, 1, 1000, body, 128))
    assert [(e.kind, e.timestamp) for e in events if isinstance(e, MediaReceived)] == [
        (FrameKind.VIDEO, 1000), (FrameKind.AUDIO, 1020)]


def test_digest_handshake_is_answered_so_ffmpeg_style_clients_validate_it() -> None:
    c1 = bytearray(b"\x00\x00\x00\x00\x09\x00\x7c\x02" + bytes(range(256)) * 6)[:1536]
    offset = handshake.digest_offset(bytes(c1), 0)
    c1[offset:offset + 32] = handshake.packet_digest(bytes(c1), offset, handshake.FP_KEY[:30])
    response = handshake.server_response(bytes(c1), 0)
    s1, s2 = response[1:1537], response[1537:]
    # What ffmpeg checks: S1's digest under the server key, S2's signature from C1's digest.
    s1_offset = handshake.digest_offset(s1, 1)
    s1_offset0 = handshake.digest_offset(s1, 0)
    assert s1[s1_offset0:s1_offset0 + 32] == handshake.packet_digest(
        s1, s1_offset0, handshake.FMS_KEY[:36]) or s1[s1_offset:s1_offset + 32] == \
        handshake.packet_digest(s1, s1_offset, handshake.FMS_KEY[:36])
    import hashlib
    import hmac
    key = hmac.new(handshake.FMS_KEY, bytes(c1[offset:offset + 32]), hashlib.sha256).digest()
    assert s2[-32:] == hmac.new(key, s2[:-32], hashlib.sha256).digest()


@settings(max_examples=300)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_after_handshake_raise_only_protocol_error(data: bytes) -> None:
    conn, _ = open_connection()
    try:
        conn.receive_data(data)
    except ProtocolError:
        pass


@given(st.lists(st.binary(max_size=300), max_size=6))
def test_arbitrary_commands_raise_only_protocol_error(payloads: list[bytes]) -> None:
    conn, _ = open_connection()
    try:
        conn.receive_data(cmd("connect", 1.0, {"app": "live"}))
        for payload in payloads:
            conn.receive_data(encode_message(3, chunk.COMMAND_AMF0, 0, 0, payload, 128))
    except ProtocolError:
        pass
