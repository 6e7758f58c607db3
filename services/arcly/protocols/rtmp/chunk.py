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


class Message:
    """One reassembled message. (A plain class: one is built per media frame, and a frozen
    dataclass costs three times as much to construct.)"""

    __slots__ = ("csid", "payload", "stream_id", "timestamp", "type_id")

    def __init__(self, type_id: int, stream_id: int, timestamp: int, payload: bytes,
                 csid: int = 0) -> None:
        self.type_id = type_id
        self.stream_id = stream_id
        self.timestamp = timestamp
        self.payload = payload
        self.csid = csid

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.type_id, self.stream_id, self.timestamp, self.payload, self.csid) == (
            other.type_id, other.stream_id, other.timestamp, other.payload, other.csid)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Message(type_id={self.type_id}, stream_id={self.stream_id}, "
                f"timestamp={self.timestamp}, payload=<{len(self.payload)} bytes>, "
                f"csid={self.csid})")


class _ChunkStream:
    __slots__ = (
        "buffer",
        "delta",
        "extended",
        "length",
        "next_header",
        "started",
        "stream_id",
        "timestamp",
        "type_id",
    )

    def __init__(self, csid: int) -> None:
        self.timestamp = 0
        self.delta = 0
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.extended = False
        self.buffer = bytearray()
        self.started = False  # a header has been seen on this chunk stream
        self.next_header = _basic_header(3, csid)  # what a continuation chunk starts with


_MESSAGE_HEADER = (11, 7, 3, 0)  # bytes of message header per chunk type (fmt)
# Type 0/1 message headers: timestamp (3 bytes), length (3), type id; type 0 then the message
# stream id, little-endian (spec §5.3.1.2).
_HEAD = struct.Struct(">HBHBB").unpack_from
_STREAM_ID = struct.Struct("<I").unpack_from


class ChunkDecoder:
    """Reassemble messages from chunks. Feed with ``feed``; raises ``ProtocolError``.

    ``feed`` parses the bytes it is given in place (no copy into a buffer first); only an
    incomplete chunk at the end is kept for the next call. A message whose chunks all arrived
    together is cut straight out of the input with its continuation headers skipped — the
    usual case for a publisher, which sends each frame's chunks back to back — and one that
    did not is assembled chunk by chunk."""

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 max_chunk_streams: int = 64, max_buffered: int | None = None) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self.max_message_size = max_message_size
        self.max_chunk_streams = max_chunk_streams
        self.max_buffered = max_buffered if max_buffered is not None else 2 * max_message_size
        self._streams: dict[int, _ChunkStream] = {}
        self._rest = bytearray()  # an incomplete chunk from the previous feed
        self._need = 0
        self._buffered = 0  # bytes held in partial messages

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        rest = self._rest
        if rest:
            rest += data
            if len(rest) < self._need:  # a large chunk still arriving: no re-parse per read
                return []
            buf = bytes(rest)
            self._rest = bytearray()
        else:
            buf = bytes(data)
        end = len(buf)
        pos = 0
        need = 0  # at a stop: the bytes from ``pos`` the pending chunk needs, when known
        messages: list[Message] = []
        streams = self._streams
        chunk_size = self.chunk_size
        while pos < end:
            first = buf[pos]
            fmt = first >> 6
            csid = first & 0x3F
            h = pos + 1
            if csid == 0:
                if end - pos < 2:
                    break
                csid = 64 + buf[pos + 1]
                h = pos + 2
            elif csid == 1:
                if end - pos < 3:
                    break
                csid = 64 + buf[pos + 1] + (buf[pos + 2] << 8)
                h = pos + 3
            mlen = _MESSAGE_HEADER[fmt]
            if end - h < mlen:
                break
            cs = streams.get(csid)
            if cs is None:
                if len(streams) >= self.max_chunk_streams:
                    raise ProtocolError(f"RTMP: more than {self.max_chunk_streams} chunk streams")
                if fmt != 0:
                    raise ProtocolError(
                        f"RTMP: chunk stream {csid} starts with a type-{fmt} header")
                cs = _ChunkStream(csid)
            have = len(cs.buffer)
            if fmt == 3:
                if not cs.started:
                    raise ProtocolError(f"RTMP: type-3 chunk on unknown chunk stream {csid}")
                extended = cs.extended
                ts_field = 0
                length, type_id, stream_id = cs.length, cs.type_id, cs.stream_id
            else:
                if have:
                    raise ProtocolError(
                        f"RTMP: new type-{fmt} header on chunk stream {csid} mid-message")
                if fmt == 2:
                    ts_field = (buf[h] << 16) | (buf[h + 1] << 8) | buf[h + 2]
                    length, type_id, stream_id = cs.length, cs.type_id, cs.stream_id
                else:
                    ts_high, ts_low, length_high, length_low, type_id = _HEAD(buf, h)
                    ts_field = (ts_high << 8) | ts_low
                    length = (length_high << 8) | length_low
                    if length > self.max_message_size:
                        raise ProtocolError(f"RTMP: message of {length} bytes exceeds the "
                                            f"{self.max_message_size} cap")
                    stream_id = _STREAM_ID(buf, h + 7)[0] if fmt == 0 else cs.stream_id
                extended = ts_field == EXTENDED
            start = h + mlen
            if extended:
                start += 4
                if end < start:
                    break
                ts_value = int.from_bytes(buf[start - 4:start], "big")
            else:
                ts_value = ts_field
            take = min(chunk_size, length - have)
            if end - start < take:
                need = start + take - pos
                break
            streams[csid] = cs
            cs.started = True
            cs.length, cs.type_id, cs.stream_id = length, type_id, stream_id
            if not have:  # this chunk starts a message: its timestamp
                if fmt == 0:
                    # A later type-3 message header repeats this field as its delta (ffmpeg's
                    # encoder relies on this reading).
                    cs.timestamp = ts_value
                    cs.delta = ts_value
                elif fmt != 3:
                    cs.delta = ts_value
                    cs.timestamp = (cs.timestamp + ts_value) & 0xFFFFFFFF
                else:
                    cs.timestamp = (cs.timestamp + cs.delta) & 0xFFFFFFFF
                if fmt != 3:
                    cs.extended = extended
            pos = start + take
            if not have:
                if take == length:
                    message = Message(type_id, stream_id, cs.timestamp, buf[start:pos], csid)
                else:
                    # Are the rest of its chunks here, back to back? Then cut it out whole.
                    cont = cs.next_header
                    step = len(cont) + (4 if extended else 0)
                    parts = [buf[start:pos]]
                    got = take
                    at = pos
                    while got < length:
                        n = min(chunk_size, length - got)
                        if end - at - step < n or not buf.startswith(cont, at):
                            break
                        at += step
                        parts.append(buf[at:at + n])
                        at += n
                        got += n
                    if got < length:
                        cs.buffer += parts[0]
                        self._grew(take)
                        continue
                    message = Message(type_id, stream_id, cs.timestamp, b"".join(parts), csid)
                    pos = at
            else:
                cs.buffer += buf[start:pos]
                if have + take < length:
                    self._grew(take)
                    continue
                message = Message(type_id, stream_id, cs.timestamp, bytes(cs.buffer), csid)
                cs.buffer = bytearray()
                self._buffered -= have
            messages.append(message)
            if type_id <= ABORT:
                if type_id == SET_CHUNK_SIZE:
                    self._apply_chunk_size(message.payload)
                    chunk_size = self.chunk_size
                elif type_id == ABORT and len(message.payload) >= 4:
                    self._abort(struct.unpack(">I", message.payload[:4])[0])
        if pos < end:
            self._rest = bytearray(memoryview(buf)[pos:])
            self._need = need
        return messages

    def _grew(self, taken: int) -> None:
        self._buffered += taken
        if self._buffered > self.max_buffered:
            raise ProtocolError(f"RTMP: more than {self.max_buffered} bytes in partial messages")

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
