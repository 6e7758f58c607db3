"""RTMP chunk streams (spec §5.3): messages in, chunks out, and back.

``ChunkDecoder`` is fed raw bytes and yields whole ``Message``s; it handles all four chunk
header types, 1-/2-/3-byte basic headers, extended timestamps (including on type-3 chunks),
interleaved chunk streams and the peer's Set Chunk Size / Abort. Limits on chunk size, message
size, open chunk streams and buffered bytes make a hostile peer cost bounded memory.
``encode_message`` is the inverse, with a full (type-0) header so the bytes of a message do not
depend on what was sent before — that is what lets every viewer share them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from arcly.engine.errors import ProtocolError

# Message type ids (spec §5.4, §7.1).
SET_CHUNK_SIZE = 1
ABORT = 2
ACK = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF3 = 15
SHARED_OBJECT_AMF3 = 16
COMMAND_AMF3 = 17
DATA_AMF0 = 18
SHARED_OBJECT_AMF0 = 19
COMMAND_AMF0 = 20
AGGREGATE = 22

DEFAULT_CHUNK_SIZE = 128  # every chunk stream starts at this size (spec §5.4.1)
DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024  # the largest message we reassemble
MAX_CHUNK_SIZE = 0xFFFFFF  # a chunk can never need to be larger than the largest message
EXTENDED = 0xFFFFFF


@dataclass(frozen=True, slots=True)
class Message:
    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes
    csid: int = 0


class _ChunkStream:
    __slots__ = (
        "buffer",
        "delta",
        "extended",
        "length",
        "started",
        "stream_id",
        "timestamp",
        "type_id",
    )

    def __init__(self) -> None:
        self.timestamp = 0
        self.delta = 0
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.extended = False
        self.buffer = bytearray()
        self.started = False  # a header has been seen on this chunk stream


class ChunkDecoder:
    """Reassemble messages from chunks. Feed with ``feed``; raises ``ProtocolError``."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 max_chunk_streams: int = 64, max_buffered: int | None = None) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_message_size = max_message_size
        self.max_chunk_streams = max_chunk_streams
        self.max_buffered = max_buffered if max_buffered is not None else 2 * max_message_size
        self._streams: dict[int, _ChunkStream] = {}
        self._buf = bytearray()
        self._pos = 0
        self._buffered = 0  # bytes held in partial messages

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        messages: list[Message] = []
        while True:
            msg = self._next()
            if msg is _NEED_MORE:
                break
            if msg is not None:
                assert isinstance(msg, Message)
                messages.append(msg)
                if msg.type_id == SET_CHUNK_SIZE:
                    self._apply_chunk_size(msg.payload)
                elif msg.type_id == ABORT and len(msg.payload) >= 4:
                    self._abort(struct.unpack(">I", msg.payload[:4])[0])
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        return messages

    def _apply_chunk_size(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise ProtocolError("RTMP: Set Chunk Size shorter than 4 bytes")
        size = struct.unpack(">I", payload[:4])[0]
        if size & 0x80000000 or size < 1 or size > MAX_CHUNK_SIZE:
            raise ProtocolError(f"RTMP: invalid chunk size {size}")
        self.chunk_size = size

    def _abort(self, csid: int) -> None:
        cs = self._streams.get(csid)
        if cs is not None:
            self._buffered -= len(cs.buffer)
            cs.buffer = bytearray()

    def _next(self) -> Message | object | None:
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 1:
            return _NEED_MORE
        first = buf[pos]
        fmt = first >> 6
        csid = first & 0x3F
        hlen = 1
        if csid == 0:
            if avail < 2:
                return _NEED_MORE
            csid = 64 + buf[pos + 1]
            hlen = 2
        elif csid == 1:
            if avail < 3:
                return _NEED_MORE
            csid = 64 + buf[pos + 1] + (buf[pos + 2] << 8)
            hlen = 3
        mlen = (11, 7, 3, 0)[fmt]
        if avail < hlen + mlen:
            return _NEED_MORE
        cs = self._streams.get(csid)
        if cs is None:
            if len(self._streams) >= self.max_chunk_streams:
                raise ProtocolError(f"RTMP: more than {self.max_chunk_streams} chunk streams")
            cs = _ChunkStream()
            if fmt != 0:
                raise ProtocolError(f"RTMP: chunk stream {csid} starts with a type-{fmt} header")
        h = pos + hlen
        new_message = not cs.buffer
        if fmt == 3:
            if not cs.started:
                raise ProtocolError(f"RTMP: type-3 chunk on unknown chunk stream {csid}")
            extended = cs.extended
            ts_field = 0
        else:
            ts_field = (buf[h] << 16) | (buf[h + 1] << 8) | buf[h + 2]
            extended = ts_field == EXTENDED
            if not new_message:
                raise ProtocolError(
                    f"RTMP: new type-{fmt} header on chunk stream {csid} mid-message")
        ext_len = 4 if extended else 0
        if avail < hlen + mlen + ext_len:
            return _NEED_MORE
        if extended:
            e = h + mlen
            ts_value = (buf[e] << 24) | (buf[e + 1] << 16) | (buf[e + 2] << 8) | buf[e + 3]
        else:
            ts_value = ts_field
        # Work out the header this chunk implies, without committing it yet.
        length, type_id, stream_id = cs.length, cs.type_id, cs.stream_id
        if fmt <= 1:
            length = (buf[h + 3] << 16) | (buf[h + 4] << 8) | buf[h + 5]
            type_id = buf[h + 6]
            if length > self.max_message_size:
                raise ProtocolError(
                    f"RTMP: message of {length} bytes exceeds the {self.max_message_size} cap")
        if fmt == 0:
            stream_id = struct.unpack_from("<I", buf, h + 7)[0]
        have = len(cs.buffer)
        take = min(self.chunk_size, length - have)
        start = pos + hlen + mlen + ext_len
        if len(buf) - start < take:
            return _NEED_MORE
        # Commit.
        self._streams[csid] = cs
        cs.started = True
        cs.length, cs.type_id, cs.stream_id = length, type_id, stream_id
        if new_message:
            if fmt == 0:
                # A later type-3 message header repeats this field as its delta (ffmpeg's
                # encoder relies on this reading).
                cs.timestamp = ts_value
                cs.delta = ts_value
            elif fmt in (1, 2):
                cs.delta = ts_value
                cs.timestamp = (cs.timestamp + ts_value) & 0xFFFFFFFF
            else:
                cs.timestamp = (cs.timestamp + cs.delta) & 0xFFFFFFFF
            if fmt != 3:
                cs.extended = extended
        self._pos = start + take
        if take == length and not have:
            return Message(type_id, stream_id, cs.timestamp, bytes(buf[start:start + take]), csid)
        cs.buffer += buf[start:start + take]
        self._buffered += take
        if self._buffered > self.max_buffered:
            raise ProtocolError(f"RTMP: more than {self.max_buffered} bytes in partial messages")
        if len(cs.buffer) < length:
            return None
        payload = bytes(cs.buffer)
        cs.buffer = bytearray()
        self._buffered -= length
        return Message(type_id, stream_id, cs.timestamp, payload, csid)


_NEED_MORE = object()


def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 2 or csid > 65599:
        raise ValueError(f"chunk stream id {csid} out of range")
    if csid < 64:
        return bytes([(fmt << 6) | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    return bytes([(fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])


def encode_message(csid: int, type_id: int, stream_id: int, timestamp: int, payload: bytes,
                   chunk_size: int) -> bytes:
    """Chunk one message: a type-0 header, then type-3 continuation headers every
    ``chunk_size`` bytes (each repeating the extended timestamp when there is one)."""
    ts = timestamp & 0xFFFFFFFF
    extended = ts >= EXTENDED
    length = len(payload)
    if length > 0xFFFFFF:
        raise ValueError(f"RTMP message of {length} bytes exceeds 16 MiB")
    ext = struct.pack(">I", ts) if extended else b""
    header = (_basic_header(0, csid)
              + (EXTENDED if extended else ts).to_bytes(3, "big")
              + length.to_bytes(3, "big") + bytes([type_id])
              + struct.pack("<I", stream_id) + ext)
    if length <= chunk_size:
        return header + payload
    cont = _basic_header(3, csid) + ext
    view = memoryview(payload)
    parts: list[bytes | memoryview] = [header, view[:chunk_size]]
    for offset in range(chunk_size, length, chunk_size):
        parts.append(cont)
        parts.append(view[offset:offset + chunk_size])
    return b"".join(parts)
