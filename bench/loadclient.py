"""The benchmark's load client: many RTMP or HTTP-FLV viewers of one stream, or many publishers.

Self-contained (standard library + uvloop when installed) so that it measures every server the
same way: it does not share a line of code with arcly's own RTMP stack.

    loadclient.py play    --url rtmp://127.0.0.1:1935/app/stream   --count 200
    loadclient.py play    --url http://127.0.0.1:8080/app/stream.flv --count 200
    loadclient.py publish --url rtmp://127.0.0.1:1935/app/stream   --count 1 --source x.flv

Viewers speak the full RTMP chunk protocol for their whole life (every header type, extended
timestamps, chunk size changes, acknowledgement windows, ping requests). Until a viewer's first
video frame they assemble every message, to time it and check that it starts with the sequence
header and a keyframe; from then on they only parse chunk headers and count media bytes, so the
client stays cheap enough to load a server with a thousand viewers on the same machine.

Timeline (all on stdout, one JSON object per line): viewers connect at ``--rate`` per second,
``{"event": "started"}`` when every one got its first frame (or ``--start-timeout`` passed),
then after ``--settle`` seconds ``window_start`` and, ``--window`` seconds later, ``window_end``
(each with the bytes received or sent so far and this process's own CPU seconds), and last a
``summary`` (time to first frame of each viewer, starts with sequence header + keyframe,
failures). The harness samples the server's /proc figures when it reads each window line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import struct
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

SET_CHUNK_SIZE, ABORT, ACK, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BW = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO, DATA_AMF0, COMMAND_AMF0 = 8, 9, 18, 20
_MEDIA = (AUDIO, VIDEO)
_HEADER_SIZES = (11, 7, 3, 0)


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- AMF0, just enough for commands -----------------------------------------------------------

def amf_string(text: str) -> bytes:
    raw = text.encode()
    return b"\x02" + struct.pack(">H", len(raw)) + raw


def amf_number(value: float) -> bytes:
    return b"\x00" + struct.pack(">d", value)


def amf_object(fields: dict[str, object]) -> bytes:
    out = bytearray(b"\x03")
    for name, value in fields.items():
        raw = name.encode()
        out += struct.pack(">H", len(raw)) + raw
        if isinstance(value, bool):
            out += b"\x01" + (b"\x01" if value else b"\x00")
        elif isinstance(value, (int, float)):
            out += amf_number(float(value))
        else:
            out += amf_string(str(value))
    return bytes(out + b"\x00\x00\x09")


def command_head(payload: bytes) -> tuple[str, float]:
    """The name and transaction id of an AMF0 command."""
    if len(payload) < 3 or payload[0] != 2:
        return "", -1.0
    size = struct.unpack_from(">H", payload, 1)[0]
    name = payload[3:3 + size].decode(errors="replace")
    rest = 3 + size
    txid = -1.0
    if len(payload) >= rest + 9 and payload[rest] == 0:
        txid = struct.unpack_from(">d", payload, rest + 1)[0]
    return name, txid


# --- RTMP chunking ----------------------------------------------------------------------------

def encode_chunks(csid: int, type_id: int, stream_id: int, timestamp: int, payload: bytes,
                  chunk_size: int) -> bytes:
    """One message as chunks: a type-0 header, then type-3 continuations."""
    ext = timestamp >= 0xFFFFFF
    ts_field = 0xFFFFFF if ext else timestamp
    head = bytes([csid & 0x3F]) + struct.pack(">I", ts_field)[1:] + \
        struct.pack(">I", len(payload))[1:] + bytes([type_id]) + struct.pack("<I", stream_id)
    ext_bytes = struct.pack(">I", timestamp & 0xFFFFFFFF) if ext else b""
    parts = [head, ext_bytes, payload[:chunk_size]]
    cont = bytes([0xC0 | (csid & 0x3F)]) + ext_bytes
    for offset in range(chunk_size, len(payload), chunk_size):
        parts.append(cont)
        parts.append(payload[offset:offset + chunk_size])
    return b"".join(parts)


class ChunkState:
    __slots__ = ("ext", "length", "parts", "remaining", "stream_id", "type_id")

    def __init__(self) -> None:
        self.ext = False
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.remaining = 0
        self.parts: list[bytes] | None = None


class RtmpSession(asyncio.Protocol):
    """The client side of one RTMP connection: handshake, commands and the chunk stream."""

    def __init__(self, app: str, tc_url: str, on_ready: asyncio.Future[None]) -> None:
        self.app = app
        self.tc_url = tc_url
        self.on_ready = on_ready
        self.transport: asyncio.Transport | None = None
        self.handshaking = True
        self.pending = b""
        self.in_chunk_size = 128
        self.out_chunk_size = 4096
        self.chunks: dict[int, ChunkState] = {}
        self.current: ChunkState | None = None
        self.body_left = 0
        self.received = 0
        self.acked = 0
        self.window = 0
        self.collect_media = True
        self.results: dict[float, asyncio.Future[bytes]] = {}
        self.status: asyncio.Queue[str] = asyncio.Queue()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.txid = 1.0
        self.error = ""

    # transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        transport.write(b"\x03" + bytes(8) + os.urandom(1528))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.error or (f"connection lost: {exc}" if exc else "server closed")
        self.status.put_nowait("")  # wakes a stream command waiting for its status
        for fut in [*self.results.values(), self.on_ready, self.closed]:
            if not fut.done():
                if fut is self.closed:
                    fut.set_result(reason)
                else:
                    fut.set_exception(ConnectionError(reason))

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.pending:
            data = self.pending + data
            self.pending = b""
        if self.handshaking:
            if len(data) < 3073:
                self.pending = data
                return
            assert self.transport is not None
            self.transport.write(data[1:1537])  # C2 echoes S1
            self.handshaking = False
            data = data[3073:]
            self.send(2, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", self.out_chunk_size))
            if not self.on_ready.done():
                self.on_ready.set_result(None)
        try:
            self._parse(data)
        except ValueError as exc:
            self.error = f"protocol error: {exc}"
            assert self.transport is not None
            self.transport.close()
            return
        if self.window and self.received - self.acked >= self.window // 2:
            self.acked = self.received
            self.send(2, ACK, 0, 0, struct.pack(">I", self.received & 0xFFFFFFFF))

    def _parse(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        chunks = self.chunks
        while pos < end:
            if self.body_left:
                cur = self.current
                assert cur is not None
                take = min(self.body_left, end - pos)
                if cur.parts is not None:
                    cur.parts.append(data[pos:pos + take])
                pos += take
                self.body_left -= take
                cur.remaining -= take
                if not cur.remaining:
                    self._message(cur)
                continue
            start = pos
            b0 = data[pos]
            fmt = b0 >> 6
            csid = b0 & 0x3F
            pos += 1
            if csid == 0:
                if pos + 1 > end:
                    self.pending = data[start:]
                    return
                csid = data[pos] + 64
                pos += 1
            elif csid == 1:
                if pos + 2 > end:
                    self.pending = data[start:]
                    return
                csid = data[pos] + data[pos + 1] * 256 + 64
                pos += 2
            size = _HEADER_SIZES[fmt]
            if pos + size > end:
                self.pending = data[start:]
                return
            st = chunks.get(csid)
            if st is None:
                if fmt != 0:
                    raise ValueError(f"chunk stream {csid} starts with a type-{fmt} header")
                st = chunks[csid] = ChunkState()
            if fmt < 3:
                ts_field = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
                ext = ts_field == 0xFFFFFF
                if fmt < 2:
                    length = (data[pos + 3] << 16) | (data[pos + 4] << 8) | data[pos + 5]
                    type_id = data[pos + 6]
                    if fmt == 0:
                        stream_id = int.from_bytes(data[pos + 7:pos + 11], "little")
                    else:
                        stream_id = st.stream_id
                else:
                    length, type_id, stream_id = st.length, st.type_id, st.stream_id
            else:
                ext = st.ext
                length, type_id, stream_id = st.length, st.type_id, st.stream_id
            pos += size
            if ext:
                if pos + 4 > end:
                    self.pending = data[start:]
                    return
                pos += 4
            if fmt < 3 and st.remaining:
                raise ValueError(f"new header on chunk stream {csid} mid-message")
            st.ext = ext
            if not st.remaining:  # a new message
                st.length, st.type_id, st.stream_id = length, type_id, stream_id
                st.remaining = length
                collect = self.collect_media or type_id not in _MEDIA
                st.parts = [] if collect else None
                if not length:
                    self._message(st)
                    continue
            self.current = st
            self.body_left = min(self.in_chunk_size, st.remaining)

    def _message(self, st: ChunkState) -> None:
        if st.parts is None:
            return
        payload = b"".join(st.parts)
        st.parts = None
        self.on_message(st.type_id, payload)

    def on_message(self, type_id: int, payload: bytes) -> None:
        if type_id == SET_CHUNK_SIZE:
            size = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
            if not size:
                raise ValueError("chunk size 0")
            self.in_chunk_size = size
        elif type_id == WINDOW_ACK_SIZE:
            self.window = struct.unpack(">I", payload[:4])[0]
        elif type_id == USER_CONTROL and payload[:2] == b"\x00\x06":
            self.send(2, USER_CONTROL, 0, 0, b"\x00\x07" + payload[2:6])
        elif type_id == COMMAND_AMF0:
            name, txid = command_head(payload)
            if name in ("_result", "_error"):
                fut = self.results.pop(txid, None)
                if fut is not None and not fut.done():
                    if name == "_error":
                        fut.set_exception(ConnectionError(f"{payload[:200]!r}"))
                    else:
                        fut.set_result(payload)
            elif name == "onStatus":
                self.status.put_nowait(payload.decode("latin-1"))
        elif type_id in _MEDIA:
            self.on_media(type_id, payload)

    def on_media(self, type_id: int, payload: bytes) -> None:
        pass

    def send(self, csid: int, type_id: int, stream_id: int, timestamp: int,
             payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(encode_chunks(csid, type_id, stream_id, timestamp, payload,
                                           self.out_chunk_size))

    async def call(self, name: str, *args: bytes) -> bytes:
        self.txid += 1
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.results[self.txid] = fut
        self.send(3, COMMAND_AMF0, 0, 0, amf_string(name) + amf_number(self.txid) + b"".join(args))
        return await fut

    async def open_stream(self) -> int:
        await self.call("connect", amf_object({
            "app": self.app, "tcUrl": self.tc_url, "flashVer": "LNX 9,0,124,2", "fpad": False,
            "capabilities": 15, "audioCodecs": 4071, "videoCodecs": 252,
            "objectEncoding": 0}))
        result = await self.call("createStream", b"\x05")
        # _result, txid, null, stream id
        name, _ = command_head(result)
        offset = 3 + len(name) + 9
        offset += 1 if result[offset] == 5 else 0
        if result[offset] != 0:
            raise ConnectionError("createStream returned no stream id")
        return int(struct.unpack_from(">d", result, offset + 1)[0])

    async def stream_command(self, stream_id: int, name: str, *args: bytes) -> str:
        self.send(8, COMMAND_AMF0, stream_id, 0,
                  amf_string(name) + amf_number(0) + b"\x05" + b"".join(args))
        while True:
            text = await self.status.get()
            if not text:
                raise ConnectionError(self.error or "closed before a status arrived")
            if "NetStream.Play.Reset" not in text:
                return text


def video_is_config(payload: bytes) -> bool:
    codec = payload[0] & 0x0F
    if payload[0] & 0x80:  # enhanced RTMP: packet type in the low nibble
        return codec == 0
    return codec in (7, 12) and len(payload) > 1 and payload[1] == 0


def video_is_keyframe(payload: bytes) -> bool:
    return (payload[0] >> 4) & 0x07 == 1


class Viewer:
    """What one viewer measured."""

    __slots__ = ("error", "first_frame", "requested", "rx", "saw_config", "valid_start")

    def __init__(self) -> None:
        self.requested = 0.0
        self.first_frame = 0.0
        self.saw_config = False
        self.valid_start = False
        self.error = ""
        self.rx = None  # type: ignore[var-annotated]

    def first_video(self, payload: bytes) -> bool:
        """Feed a video message; True once the first decodable video frame arrived."""
        if not payload:
            return False
        if video_is_config(payload):
            self.saw_config = True
            return False
        self.first_frame = time.monotonic()
        self.valid_start = self.saw_config and video_is_keyframe(payload)
        return True


class RtmpViewer(RtmpSession):
    def __init__(self, app: str, tc_url: str, on_ready: asyncio.Future[None],
                 viewer: Viewer, started: asyncio.Future[None]) -> None:
        super().__init__(app, tc_url, on_ready)
        self.viewer = viewer
        self.started = started

    def on_media(self, type_id: int, payload: bytes) -> None:
        if type_id == VIDEO and self.collect_media and self.viewer.first_video(payload):
            self.collect_media = False
            if not self.started.done():
                self.started.set_result(None)


async def rtmp_play(url: str, viewer: Viewer, started: asyncio.Future[None]) -> None:
    parts = urlsplit(url)
    app, _, name = parts.path.lstrip("/").partition("/")
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    _, proto = await loop.create_connection(
        lambda: RtmpViewer(app, f"rtmp://{parts.netloc}/{app}", ready, viewer, started),
        parts.hostname, parts.port or 1935)
    viewer.rx = proto
    await ready
    stream_id = await proto.open_stream()
    proto.send(2, USER_CONTROL, 0, 0, struct.pack(">HII", 3, stream_id, 1000))  # buffer length
    viewer.requested = time.monotonic()
    status = await proto.stream_command(stream_id, "play", amf_string(name), amf_number(-2))
    if "Play.Start" not in status and "Play.Reset" not in status:
        raise ConnectionError(f"play refused: {status[:200]}")


class FlvViewer(asyncio.Protocol):
    """An HTTP-FLV viewer: parses the response (chunked or not) until the first video frame,
    then only counts bytes."""

    def __init__(self, viewer: Viewer, started: asyncio.Future[None]) -> None:
        self.viewer = viewer
        self.started = started
        self.received = 0
        self.buf = b""
        self.head_done = False
        self.chunked = False
        self.chunk_left = 0
        self.body = b""
        self.flv_pos = 13
        self.counting = False
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.started.done():
            self.started.set_exception(ConnectionError(f"closed before the first frame: {exc}"))
        if not self.closed.done():
            self.closed.set_result(str(exc) if exc else "server closed")

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.counting:
            return
        self.buf += data
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").lower()
            if not head.startswith("http/1.1 200") and not head.startswith("http/1.0 200"):
                self.started.set_exception(ConnectionError(head.splitlines()[0]))
                assert self.transport is not None
                self.transport.close()
                return
            self.chunked = "transfer-encoding: chunked" in head
            self.head_done = True
            self.buf = self.buf[end + 4:]
        if self.chunked:
            self._dechunk()
        else:
            self.body += self.buf
            self.buf = b""
        self._tags()

    def _dechunk(self) -> None:
        buf = self.buf
        pos = 0
        while pos < len(buf):
            if self.chunk_left:
                take = min(self.chunk_left, len(buf) - pos)
                self.body += buf[pos:pos + take]
                pos += take
                self.chunk_left -= take
                continue
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                break
            line = buf[pos:line_end].split(b";")[0].strip()
            pos = line_end + 2
            if not line:  # the CRLF after a chunk's data
                continue
            self.chunk_left = int(line, 16)
        self.buf = buf[pos:]

    def _tags(self) -> None:
        body = self.body
        pos = self.flv_pos
        while pos + 11 <= len(body):
            size = int.from_bytes(body[pos + 1:pos + 4], "big")
            if pos + 11 + size + 4 > len(body):
                break
            if body[pos] & 0x1F == VIDEO and self.viewer.first_video(
                    body[pos + 11:pos + 11 + size]):
                self.counting = True
                self.body = b""
                self.buf = b""
                if not self.started.done():
                    self.started.set_result(None)
                return
            pos += 11 + size + 4
        self.flv_pos = pos


async def flv_play(url: str, viewer: Viewer, started: asyncio.Future[None]) -> None:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: FlvViewer(viewer, started),
                                            parts.hostname, parts.port or 80)
    viewer.rx = proto
    viewer.requested = time.monotonic()
    assert proto.transport is not None
    proto.transport.write(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                          "User-Agent: arcly-bench\r\nAccept: */*\r\n\r\n".encode())


async def play(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    viewers = [Viewer() for _ in range(args.count)]
    starts: list[asyncio.Future[None]] = [loop.create_future() for _ in viewers]
    opener = flv_play if args.url.startswith("http") else rtmp_play

    async def one(viewer: Viewer, started: asyncio.Future[None]) -> None:
        try:
            await asyncio.wait_for(opener(args.url, viewer, started), args.start_timeout)
        except Exception as exc:
            viewer.error = f"{type(exc).__name__}: {exc}"[:200]
            if not started.done():
                started.set_exception(ConnectionError(viewer.error))

    tasks = []
    began = time.monotonic()
    for index, (viewer, started) in enumerate(zip(viewers, starts, strict=True)):
        due = began + index / args.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(viewer, started)))
    await asyncio.gather(*tasks)
    await asyncio.wait(starts, timeout=args.start_timeout)
    for viewer, started in zip(viewers, starts, strict=True):
        if started.done() and started.exception() is not None and not viewer.error:
            viewer.error = str(started.exception())[:200]
        elif not started.done() and not viewer.error:
            viewer.error = "no video frame within the start timeout"
    ok = sum(1 for s in starts if s.done() and s.exception() is None)
    emit("started", viewers=args.count, ok=ok, seconds=round(time.monotonic() - began, 2))

    def received() -> int:
        return sum(v.rx.received for v in viewers if v.rx is not None)

    def connected() -> int:
        return sum(1 for v in viewers if v.rx is not None and not v.rx.closed.done())

    await asyncio.sleep(args.settle)
    emit("window_start", bytes=received(), cpu=own_cpu(), connected=connected())
    await asyncio.sleep(args.window)
    emit("window_end", bytes=received(), cpu=own_cpu(), connected=connected())
    ttff = [round((v.first_frame - v.requested) * 1000, 2) for v in viewers if v.first_frame]
    errors: dict[str, int] = {}
    for v in viewers:
        if v.error:
            errors[v.error] = errors.get(v.error, 0) + 1
    emit("summary", ttff_ms=ttff, valid_starts=sum(1 for v in viewers if v.valid_start),
         viewers=args.count, errors=errors)
    for v in viewers:
        if v.rx is not None and v.rx.transport is not None:
            v.rx.transport.close()


# --- publishing -------------------------------------------------------------------------------

def read_flv(path: Path) -> list[tuple[int, int, bytes]]:
    """(tag type, timestamp ms, body) of every tag of an FLV file."""
    data = path.read_bytes()
    if data[:3] != b"FLV":
        raise SystemExit(f"{path}: not an FLV file")
    pos = int.from_bytes(data[5:9], "big") + 4
    tags = []
    while pos + 11 <= len(data):
        kind = data[pos] & 0x1F
        size = int.from_bytes(data[pos + 1:pos + 4], "big")
        ts = int.from_bytes(data[pos + 4:pos + 7], "big") | (data[pos + 7] << 24)
        body = data[pos + 11:pos + 11 + size]
        if len(body) < size:
            break
        tags.append((kind, ts, body))
        pos += 11 + size + 4
    return tags


def is_config(kind: int, body: bytes) -> bool:
    if kind == VIDEO:
        return bool(body) and video_is_config(body)
    if kind == AUDIO:
        return len(body) > 1 and body[0] >> 4 == 10 and body[1] == 0
    return kind == DATA_AMF0


class Publisher:
    __slots__ = ("error", "sent", "session")

    def __init__(self) -> None:
        self.sent = 0
        self.error = ""
        self.session: RtmpSession | None = None


async def publish_one(url: str, tags: list[tuple[int, int, bytes]], pub: Publisher,
                      stop: asyncio.Event) -> None:
    parts = urlsplit(url)
    app, _, name = parts.path.lstrip("/").partition("/")
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    _, session = await loop.create_connection(
        lambda: RtmpSession(app, f"rtmp://{parts.netloc}/{app}", ready),
        parts.hostname, parts.port or 1935)
    pub.session = session
    await ready
    stream_id = await session.open_stream()
    status = await session.stream_command(stream_id, "publish", amf_string(name),
                                          amf_string("live"))
    if "Publish.Start" not in status:
        raise ConnectionError(f"publish refused: {status[:200]}")
    transport = session.transport
    assert transport is not None
    span = tags[-1][1] + 33
    offset = 0
    began = time.monotonic()
    while not stop.is_set() and not session.closed.done():
        for kind, ts, body in tags:
            if offset and is_config(kind, body):
                continue  # configuration once, as an encoder sends it
            due = began + (offset + ts) / 1000
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set() or session.closed.done():
                break
            payload = amf_string("@setDataFrame") + body if kind == DATA_AMF0 else body
            wire = encode_chunks(4 if kind == AUDIO else 6 if kind == VIDEO else 5, kind,
                                 stream_id, offset + ts, payload, session.out_chunk_size)
            transport.write(wire)
            pub.sent += len(wire)
        offset += span
    if session.closed.done():
        raise ConnectionError(f"publish ended by the server: {session.closed.result()}")


async def publish(args: argparse.Namespace) -> None:
    tags = read_flv(args.source)
    stop = asyncio.Event()
    pubs = [Publisher() for _ in range(args.count)]

    async def one(index: int, pub: Publisher) -> None:
        url = args.url if args.count == 1 else f"{args.url}{index}"
        try:
            await publish_one(url, tags, pub, stop)
        except Exception as exc:
            pub.error = f"{type(exc).__name__}: {exc}"[:200]

    began = time.monotonic()
    tasks = []
    for index, pub in enumerate(pubs):
        tasks.append(asyncio.create_task(one(index, pub)))
        await asyncio.sleep(1 / args.rate)
    emit("started", publishers=args.count, seconds=round(time.monotonic() - began, 2))
    if args.window <= 0:  # a feed for viewers: run until terminated
        await asyncio.gather(*tasks)
        return
    await asyncio.sleep(args.settle)
    emit("window_start", bytes=sum(p.sent for p in pubs), cpu=own_cpu(),
         connected=sum(1 for p in pubs if p.session and not p.session.closed.done()))
    await asyncio.sleep(args.window)
    emit("window_end", bytes=sum(p.sent for p in pubs), cpu=own_cpu(),
         connected=sum(1 for p in pubs if p.session and not p.session.closed.done()))
    stop.set()
    await asyncio.gather(*tasks)
    errors: dict[str, int] = {}
    for p in pubs:
        if p.error:
            errors[p.error] = errors.get(p.error, 0) + 1
    emit("summary", publishers=args.count, errors=errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("play", "publish"))
    parser.add_argument("--url", required=True,
                        help="rtmp://host:port/app/stream or http://host:port/app/stream.flv; "
                             "publish with --count > 1 appends the index to the stream name")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--rate", type=float, default=200.0, help="connections per second")
    parser.add_argument("--source", type=Path, help="publish: the FLV file to replay")
    parser.add_argument("--start-timeout", type=float, default=15.0)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=10.0,
                        help="measured seconds (publish: 0 = a feed that runs until killed)")
    args = parser.parse_args()
    if args.mode == "publish" and args.source is None:
        parser.error("publish needs --source")
    runner = play if args.mode == "play" else publish
    try:
        import uvloop
    except ImportError:
        asyncio.run(runner(args))
    else:
        uvloop.run(runner(args))


if __name__ == "__main__":
    main()
