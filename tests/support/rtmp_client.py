"""A small asyncio RTMP client for tests: handshake, connect, publish or play, read messages.

Built on the project's chunk codec so it speaks full chunking (all header types, extended
timestamps, chunk size changes) and answers acknowledgement windows and pings.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

from arcly.media import amf0
from arcly.protocols.rtmp import chunk
from arcly.protocols.rtmp.chunk import ChunkDecoder, Message, encode_message


@dataclass
class Status:
    code: str
    level: str
    description: str


class RtmpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = ChunkDecoder(max_message_size=64 * 1024 * 1024)
        self.out_chunk_size = 4096
        self.window = 0
        self.received = 0
        self.acked = 0
        self.txid = 0
        self.stream_id = 0
        self.inbox: list[Message] = []
        self.closed = False

    @classmethod
    async def connect(cls, host: str, port: int, app: str, *, timeout: float = 10.0) -> RtmpClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        client = cls(reader, writer)
        await asyncio.wait_for(client._handshake(), timeout)
        client.send(2, chunk.SET_CHUNK_SIZE, 0, struct.pack(">I", client.out_chunk_size))
        result = await client.call("connect", {"app": app, "tcUrl": f"rtmp://{host}:{port}/{app}",
                                               "flashVer": "LNX 9,0,124,2", "fpad": False,
                                               "capabilities": 15.0, "audioCodecs": 4071.0,
                                               "videoCodecs": 252.0, "objectEncoding": 0.0},
                                   timeout=timeout)
        if result[0] != "_result":
            raise RuntimeError(f"connect refused: {result}")
        return client

    async def _handshake(self) -> None:
        c1 = struct.pack(">I", 0) + b"\x00\x00\x00\x00" + os.urandom(1528)
        self.writer.write(b"\x03" + c1)
        s = await self.reader.readexactly(1 + 1536 + 1536)
        self.writer.write(s[1:1537])  # C2 echoes S1

    def send(self, csid: int, type_id: int, stream_id: int, payload: bytes,
             timestamp: int = 0) -> None:
        self.writer.write(encode_message(csid, type_id, stream_id, timestamp, payload,
                                         self.out_chunk_size))

    def command(self, name: str, *args: Any, stream_id: int = 0) -> int:
        self.txid += 1
        txid = 0 if name in ("publish", "play") else self.txid
        self.send(3 if stream_id == 0 else 8, chunk.COMMAND_AMF0, stream_id,
                  amf0.encode(name, float(txid), *args))
        return txid

    async def call(self, name: str, *args: Any, timeout: float = 10.0) -> list[Any]:
        txid = self.command(name, *args)
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.read_message(deadline - time.monotonic())
            if msg.type_id == chunk.COMMAND_AMF0:
                values = amf0.decode(msg.payload)
                if values[0] in ("_result", "_error") and values[1] == txid:
                    return values

    async def create_stream(self) -> int:
        result = await self.call("createStream", None)
        self.stream_id = int(result[3])
        return self.stream_id

    async def publish(self, name: str, *, timeout: float = 10.0) -> Status:
        await self.create_stream()
        self.command("publish", None, name, "live", stream_id=self.stream_id)
        return await self.wait_status(timeout)

    async def play(self, name: str, *, timeout: float = 10.0) -> Status:
        await self.create_stream()
        self.command("play", None, name, -2.0, stream_id=self.stream_id)
        return await self.wait_status(timeout, skip=("NetStream.Play.Reset",))

    async def wait_status(self, timeout: float = 10.0, skip: tuple[str, ...] = ()) -> Status:
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.read_message(deadline - time.monotonic())
            status = self.as_status(msg)
            if status is not None and status.code not in skip:
                return status

    @staticmethod
    def as_status(msg: Message) -> Status | None:
        if msg.type_id != chunk.COMMAND_AMF0:
            return None
        values = amf0.decode(msg.payload)
        if values and values[0] == "onStatus" and len(values) > 3 and isinstance(values[3], dict):
            info = values[3]
            return Status(info.get("code", ""), info.get("level", ""), info.get("description", ""))
        return None

    async def read_message(self, timeout: float | None = 10.0) -> Message:
        """The next message that is not protocol housekeeping. EOFError when the server closes."""
        while not self.inbox:
            try:
                data = await asyncio.wait_for(self.reader.read(256 * 1024),
                                              None if timeout is None else max(timeout, 0.001))
            except ConnectionError:
                data = b""
            if not data:
                self.closed = True
                raise EOFError("server closed the connection")
            self.received += len(data)
            for msg in self.decoder.feed(data):
                if msg.type_id == chunk.WINDOW_ACK_SIZE:
                    self.window = struct.unpack(">I", msg.payload[:4])[0]
                elif msg.type_id == chunk.USER_CONTROL and msg.payload[:2] == b"\x00\x06":
                    self.send(2, chunk.USER_CONTROL, 0, b"\x00\x07" + msg.payload[2:6])
                if msg.type_id not in (chunk.SET_CHUNK_SIZE, chunk.WINDOW_ACK_SIZE,
                                       chunk.SET_PEER_BANDWIDTH, chunk.ACK):
                    self.inbox.append(msg)
            if self.window and self.received - self.acked >= self.window // 2:
                self.acked = self.received
                self.send(2, chunk.ACK, 0, struct.pack(">I", self.received & 0xFFFFFFFF))
        return self.inbox.pop(0)

    def send_media(self, type_id: int, timestamp: int, payload: bytes) -> None:
        csid = {chunk.AUDIO: 4, chunk.VIDEO: 6}.get(type_id, 5)
        self.send(csid, type_id, self.stream_id, payload, timestamp)

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (TimeoutError, ConnectionError, OSError):
            pass
