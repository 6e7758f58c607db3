"""The RTMP server connection as a sans-I/O state machine.

Feed it bytes with ``receive_data(data, now)``; it returns ``Event``s and queues whatever it
must send, which ``data_to_send()`` hands out. It answers the protocol's housekeeping itself
(handshake, acknowledgements, pings, ``connect``, ``createStream``, ``releaseStream``,
``FCPublish``, ``getStreamLength``) and leaves decisions with consequences (publish, play) to
the adapter, which replies through ``accept_publish``/``reject_publish``/``accept_play``/...
"""

from __future__ import annotations

import enum
import struct
from typing import Any

from arcly.engine.errors import ProtocolError
from arcly.engine.frame import FrameKind
from arcly.media import amf0

from . import chunk
from .chunk import DEFAULT_MAX_MESSAGE_SIZE, ChunkDecoder, Message, encode_message
from .events import (
    Connected,
    Event,
    HandshakeDone,
    MediaReceived,
    PlayRequested,
    PublishRequested,
    StreamClosed,
)
from .handshake import PACKET, VERSION, find_client_digest, server_response

# Chunk stream ids we send on.
CSID_CONTROL = 2
CSID_COMMAND = 3
CSID_AUDIO = 4
CSID_DATA = 5
CSID_VIDEO = 6
CSID_FOR_KIND = {FrameKind.AUDIO: CSID_AUDIO, FrameKind.VIDEO: CSID_VIDEO,
                 FrameKind.DATA: CSID_DATA}

# User control event types (spec §7.1.7).
UC_STREAM_BEGIN = 0
UC_STREAM_EOF = 1
UC_STREAM_DRY = 2
UC_SET_BUFFER_LENGTH = 3
UC_STREAM_IS_RECORDED = 4
UC_PING_REQUEST = 6
UC_PING_RESPONSE = 7

WINDOW_ACK_SIZE = 2_500_000
OUT_CHUNK_SIZE = 4096  # the chunk size we send with (the peer chooses its own)
SET_DATA_FRAME = amf0.encode("@setDataFrame")
MAX_STREAMS = 16


_MEDIA_KIND = {chunk.AUDIO: FrameKind.AUDIO, chunk.VIDEO: FrameKind.VIDEO}


class State(enum.Enum):
    HANDSHAKE = "handshake"
    AWAIT_C2 = "await-c2"
    OPEN = "open"
    CLOSED = "closed"


class RtmpConnection:
    """One server-side RTMP connection, no I/O."""

    def __init__(self, *, chunk_size: int = OUT_CHUNK_SIZE,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 fms_version: str = "FMS/3,5,7,7009") -> None:
        self.state = State.HANDSHAKE
        self.out_chunk_size = chunk_size
        self.fms_version = fms_version
        self.decoder = ChunkDecoder(max_message_size=max_message_size)
        self.app = ""
        self.app_query = ""
        self.tc_url = ""
        self.peer_window = 0
        self.received = 0
        self.last_ack_sent = 0
        self.streams: set[int] = set()
        self.publishing: set[int] = set()
        self._next_stream_id = 1
        self._in = bytearray()
        self._out: list[bytes] = []
        self._epoch: float | None = None

    # -- plumbing ---------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _send(self, csid: int, type_id: int, stream_id: int, payload: bytes,
              timestamp: int = 0) -> None:
        self._out.append(encode_message(csid, type_id, stream_id, timestamp, payload,
                                        self.out_chunk_size))

    def _control(self, type_id: int, payload: bytes) -> None:
        self._send(CSID_CONTROL, type_id, 0, payload)

    def _user_control(self, event: int, value: int) -> None:
        self._control(chunk.USER_CONTROL, struct.pack(">HI", event, value))

    def _command(self, stream_id: int, *values: Any) -> None:
        csid = CSID_COMMAND if stream_id == 0 else CSID_DATA
        self._send(csid, chunk.COMMAND_AMF0, stream_id, amf0.encode(*values))

    def _status(self, stream_id: int, level: str, code: str, description: str,
                **extra: Any) -> None:
        info = {"level": level, "code": code, "description": description, **extra}
        self._command(stream_id, "onStatus", 0, None, info)

    # -- input ------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float = 0.0) -> list[Event]:
        """Feed bytes from the peer. Raises ``ProtocolError`` on anything malformed."""
        if self.state is State.CLOSED:
            return []
        if self._epoch is None:
            self._epoch = now
        if self.state is not State.OPEN:
            return self._handshake(data, now)
        return self._receive_chunks(data)

    def _handshake(self, data: bytes, now: float) -> list[Event]:
        self._in += data
        events: list[Event] = []
        if self.state is State.HANDSHAKE:
            if not self._in:
                return events
            if self._in[0] != VERSION:
                raise ProtocolError(f"RTMP handshake: version {self._in[0]} (expected 3)")
            if len(self._in) < 1 + PACKET:
                return events
            c1 = bytes(self._in[1:1 + PACKET])
            del self._in[:1 + PACKET]
            digest = c1[4:8] != b"\x00\x00\x00\x00" and find_client_digest(c1) is not None
            self._out.append(server_response(c1, int((now - (self._epoch or 0)) * 1000)))
            self.state = State.AWAIT_C2
            events.append(HandshakeDone(digest))
        if self.state is State.AWAIT_C2 and len(self._in) >= PACKET:
            del self._in[:PACKET]  # C2 echoes S1; clients differ in what they put there
            self.state = State.OPEN
            rest = bytes(self._in)
            self._in.clear()
            if rest:
                events.extend(self._receive_chunks(rest))
        return events

    def _receive_chunks(self, data: bytes) -> list[Event]:
        self.received += len(data)
        events: list[Event] = []
        publishing = self.publishing
        for msg in self.decoder.feed(data):
            kind = _MEDIA_KIND.get(msg.type_id)
            if kind is not None and msg.stream_id in publishing:
                # Audio and video of a publish: the bulk of all messages, no call more.
                events.append(MediaReceived(msg.stream_id, kind, msg.timestamp, msg.payload))
            else:
                self._dispatch(msg, events)
        if self.peer_window and self.received - self.last_ack_sent >= self.peer_window:
            self.last_ack_sent = self.received
            self._control(chunk.ACK, struct.pack(">I", self.received & 0xFFFFFFFF))
        return events

    def _dispatch(self, msg: Message, events: list[Event]) -> None:
        t = msg.type_id
        if t in (chunk.AUDIO, chunk.VIDEO):
            pass  # not on a publishing stream (``_receive_chunks`` takes those): ignored
        elif t in (chunk.DATA_AMF0, chunk.DATA_AMF3):
            payload = msg.payload[1:] if t == chunk.DATA_AMF3 else msg.payload
            if msg.stream_id in self.publishing:
                if payload.startswith(SET_DATA_FRAME):
                    payload = payload[len(SET_DATA_FRAME):]
                amf0.decode(payload)  # refuse malformed data before it reaches viewers
                events.append(MediaReceived(msg.stream_id, FrameKind.DATA, msg.timestamp,
                                            payload))
        elif t in (chunk.COMMAND_AMF0, chunk.COMMAND_AMF3):
            payload = msg.payload[1:] if t == chunk.COMMAND_AMF3 else msg.payload
            self._on_command(msg.stream_id, amf0.decode(payload), events)
        elif t == chunk.AGGREGATE:
            if msg.stream_id in self.publishing:
                self._split_aggregate(msg, events)
        elif t == chunk.WINDOW_ACK_SIZE:
            if len(msg.payload) < 4:
                raise ProtocolError("RTMP: Window Acknowledgement Size shorter than 4 bytes")
            self.peer_window = struct.unpack(">I", msg.payload[:4])[0]
        elif t == chunk.USER_CONTROL:
            self._on_user_control(msg.payload)
        elif t in (chunk.SET_CHUNK_SIZE, chunk.ABORT, chunk.ACK, chunk.SET_PEER_BANDWIDTH):
            pass  # chunk size and abort are applied by the decoder; the rest needs no answer
        # Shared objects and unknown types are ignored, as every server does.

    def _on_user_control(self, payload: bytes) -> None:
        if len(payload) < 2:
            raise ProtocolError("RTMP: User Control message shorter than 2 bytes")
        (event,) = struct.unpack(">H", payload[:2])
        if event == UC_PING_REQUEST and len(payload) >= 6:
            self._user_control(UC_PING_RESPONSE, struct.unpack(">I", payload[2:6])[0])

    def _split_aggregate(self, msg: Message, events: list[Event]) -> None:
        """An aggregate message (type 22) is a run of FLV tags; sub-message timestamps are
        rebased so the first one equals the aggregate's own timestamp (spec §7.1.6)."""
        body = msg.payload
        pos = 0
        base: int | None = None
        while pos < len(body):
            if pos + 11 > len(body):
                raise ProtocolError("RTMP: truncated aggregate sub-message header")
            tag_type = body[pos]
            size = int.from_bytes(body[pos + 1:pos + 4], "big")
            ts = int.from_bytes(body[pos + 4:pos + 7], "big") | (body[pos + 7] << 24)
            end = pos + 11 + size
            if end + 4 > len(body):
                raise ProtocolError("RTMP: truncated aggregate sub-message body")
            if base is None:
                base = msg.timestamp - ts
            timestamp = (ts + base) & 0xFFFFFFFF
            payload = body[pos + 11:end]
            if tag_type == chunk.AUDIO:
                events.append(MediaReceived(msg.stream_id, FrameKind.AUDIO, timestamp, payload))
            elif tag_type == chunk.VIDEO:
                events.append(MediaReceived(msg.stream_id, FrameKind.VIDEO, timestamp, payload))
            elif tag_type == chunk.DATA_AMF0:
                events.append(MediaReceived(msg.stream_id, FrameKind.DATA, timestamp, payload))
            pos = end + 4

    # -- commands ---------------------------------------------------------------------------

    def _on_command(self, stream_id: int, values: list[Any], events: list[Event]) -> None:
        if len(values) < 2 or not isinstance(values[0], str):
            raise ProtocolError("RTMP: command without a name and transaction id")
        name, txid = values[0], values[1]
        if not isinstance(txid, float):
            raise ProtocolError(f"RTMP: command {name[:32]!r} with a non-numeric transaction id")
        args = values[2:]
        if name == "connect":
            self._on_connect(txid, args, events)
        elif self.app == "" and name not in ("_result", "_error"):
            raise ProtocolError(f"RTMP: command {name[:32]!r} before connect")
        elif name == "createStream":
            if len(self.streams) >= MAX_STREAMS:
                raise ProtocolError(f"RTMP: more than {MAX_STREAMS} message streams")
            sid = self._next_stream_id
            self._next_stream_id += 1
            self.streams.add(sid)
            self._command(0, "_result", txid, None, float(sid))
        elif name == "releaseStream":
            if txid:
                self._command(0, "_result", txid, None, amf0.UNDEFINED)
        elif name == "getStreamLength":
            # ffmpeg wants a number here; 0 means "live, no known duration".
            self._command(stream_id, "_result", txid, None, 0.0)
        elif name == "FCPublish":
            # ffmpeg and OBS send FCPublish before createStream; librtmp waits for onFCPublish.
            stream = _arg_str(args, 1)
            self._command(0, "onFCPublish", 0.0, None,
                          {"code": "NetStream.Publish.Start", "description": stream})
        elif name == "FCUnpublish":
            sid = next(iter(self.publishing), 0)
            if sid:
                events.append(StreamClosed(sid, name))
        elif name == "publish":
            self._on_publish(stream_id, args, events)
        elif name == "play":
            self._on_play(stream_id, args, events)
        elif name in ("deleteStream", "closeStream"):
            sid = int(args[1]) if name == "deleteStream" and len(args) > 1 and isinstance(
                args[1], float) else stream_id
            self.streams.discard(sid)
            if sid:
                events.append(StreamClosed(sid, name))
        elif name == "pause":
            pass  # a live stream does not pause: a player that stops reading falls behind
        elif txid and name not in ("_result", "_error", "onBWDone", "_checkbw"):
            self._command(0, "_error", txid, None,
                          {"level": "error", "code": "NetConnection.Call.Failed",
                           "description": f"unknown command {name[:64]}"})

    def _on_connect(self, txid: float, args: list[Any], events: list[Event]) -> None:
        if self.app:
            raise ProtocolError("RTMP: second connect on one connection")
        params = args[0] if args and isinstance(args[0], dict) else {}
        app = params.get("app")
        if not isinstance(app, str) or not app.strip("/"):
            raise ProtocolError("RTMP: connect without an app name")
        self.app, _, self.app_query = app.strip("/").partition("?")
        if not self.app:
            raise ProtocolError("RTMP: connect without an app name")
        tc_url = params.get("tcUrl")
        self.tc_url = tc_url if isinstance(tc_url, str) else ""
        if not self.app_query and "?" in self.tc_url:
            self.app_query = self.tc_url.partition("?")[2]
        self._control(chunk.WINDOW_ACK_SIZE, struct.pack(">I", WINDOW_ACK_SIZE))
        self._control(chunk.SET_PEER_BANDWIDTH, struct.pack(">IB", WINDOW_ACK_SIZE, 2))
        self._control(chunk.SET_CHUNK_SIZE, struct.pack(">I", self.out_chunk_size))
        encoding = params.get("objectEncoding", 0.0)
        self._command(0, "_result", txid,
                      {"fmsVer": self.fms_version, "capabilities": 31.0, "mode": 1.0},
                      {"level": "status", "code": "NetConnection.Connect.Success",
                       "description": "Connection succeeded.",
                       "objectEncoding": encoding if isinstance(encoding, float) else 0.0})
        events.append(Connected(self.app, self.tc_url, params))

    def _on_publish(self, stream_id: int, args: list[Any], events: list[Event]) -> None:
        if stream_id not in self.streams:
            raise ProtocolError(f"RTMP: publish on unknown message stream {stream_id}")
        name, query = _split_query(_arg_str(args, 1))
        publish_type = _arg_str(args, 2) or "live"
        events.append(PublishRequested(stream_id, name, query, publish_type))

    def _on_play(self, stream_id: int, args: list[Any], events: list[Event]) -> None:
        if stream_id not in self.streams:
            raise ProtocolError(f"RTMP: play on unknown message stream {stream_id}")
        name, query = _split_query(_arg_str(args, 1))
        start = args[2] if len(args) > 2 and isinstance(args[2], float) else -2.0
        events.append(PlayRequested(stream_id, name, query, start))

    # -- replies the adapter decides on -------------------------------------------------------

    def accept_publish(self, stream_id: int, name: str) -> None:
        self.publishing.add(stream_id)
        self._user_control(UC_STREAM_BEGIN, stream_id)
        self._status(stream_id, "status", "NetStream.Publish.Start", f"{name} is now published.")

    def reject_publish(self, stream_id: int, code: str, description: str) -> None:
        self._status(stream_id, "error", code, description)

    def end_publish(self, stream_id: int, name: str) -> None:
        if stream_id in self.publishing:
            self.publishing.discard(stream_id)
            self._status(stream_id, "status", "NetStream.Unpublish.Success",
                         f"{name} is now unpublished.")

    def accept_play(self, stream_id: int, name: str) -> None:
        self._user_control(UC_STREAM_IS_RECORDED, stream_id)
        self._user_control(UC_STREAM_BEGIN, stream_id)
        self._status(stream_id, "status", "NetStream.Play.Reset", f"Playing and resetting {name}.")
        self._status(stream_id, "status", "NetStream.Play.Start", f"Started playing {name}.")
        self._send(CSID_DATA, chunk.DATA_AMF0, stream_id,
                   amf0.encode("|RtmpSampleAccess", True, True))

    def reject_play(self, stream_id: int, code: str, description: str) -> None:
        self._status(stream_id, "error", code, description)

    def end_play(self, stream_id: int, name: str) -> None:
        """The stream this message stream plays has ended (publisher gone)."""
        self._user_control(UC_STREAM_EOF, stream_id)
        self._status(stream_id, "status", "NetStream.Play.UnpublishNotify",
                     f"{name} is now unpublished.")
        self._status(stream_id, "status", "NetStream.Play.Stop", f"Stopped playing {name}.")

    def close(self) -> None:
        self.state = State.CLOSED


def _arg_str(args: list[Any], index: int) -> str:
    value = args[index] if len(args) > index else None
    return value if isinstance(value, str) else ""


def _split_query(name: str) -> tuple[str, str]:
    stream, _, query = name.partition("?")
    return stream, query


def media_chunks(frame_kind: FrameKind, stream_id: int, timestamp: int, payload: bytes,
                 chunk_size: int) -> bytes:
    """A media message chunked for a player; independent of connection state."""
    return encode_message(CSID_FOR_KIND[frame_kind], int(frame_kind), stream_id, timestamp,
                          payload, chunk_size)
