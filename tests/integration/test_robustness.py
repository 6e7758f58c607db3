"""A node under bad peers: stalled viewers and malformed RTMP input harm nobody else."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from arcly.media import amf0, flv
from arcly.protocols.rtmp import chunk
from arcly.protocols.rtmp.chunk import encode_message
from tests.support.flv_reader import HttpFlvReader
from tests.support.media import load_tags
from tests.support.processes import FfmpegPublisher, Node
from tests.support.rtmp_client import RtmpClient
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

BACKLOG = 256 * 1024


def test_viewer_that_stops_reading_is_bounded_and_does_not_delay_others(
        node_factory: Callable[..., Node],
        publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    node = node_factory("--viewer-backlog-bytes", str(BACKLOG))
    publish(node, "live/slow")

    async def scenario() -> tuple[list[float], int, int]:
        # A viewer that asks for the stream and then never reads a byte.
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", node.http))
        stalled.sendall(b"GET /live/slow.flv HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(lambda: asyncio.to_thread(
            lambda: node.stream("live/slow")["viewers"]["flv"] == 1),
            message="the stalled viewer never joined")
        rss_start = node.rss_kib()

        healthy = await HttpFlvReader.open(node.http, "/live/slow.flv")
        await healthy.read_header()
        lags: list[float] = []
        base: tuple[float, int] | None = None
        rss_peak = rss_start
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            tag = await healthy.next_tag(5)
            if tag.tag_type != flv.TAG_VIDEO:
                continue
            now = time.monotonic()
            if base is None:
                base = (now, tag.timestamp)
            # How late this frame is against the stream's own clock (after the GOP burst).
            lags.append((now - base[0]) - (tag.timestamp - base[1]) / 1000)
            rss_peak = max(rss_peak, node.rss_kib())
        await healthy.close()
        stalled.close()
        return lags, rss_start, rss_peak

    lags, rss_start, rss_peak = asyncio.run(scenario())
    growth = rss_peak - rss_start
    late = max(lags[-100:]) - min(lags)
    print(f"\nhealthy viewer lateness spread {late * 1000:.0f} ms; node RSS "
          f"{rss_start} -> {rss_peak} KiB (+{growth} KiB, backlog cap {BACKLOG // 1024} KiB)")
    # The stalled viewer hit its cap and skipped, or was cut as a slow viewer.
    node.wait_for_log(r"viewer behind, skipping to next keyframe stream=live/slow"
                      r"|play end stream=live/slow .*reason='slow viewer'", timeout=20)
    # Bounded memory: backlog cap + socket buffers + allocator slack, not the stream's 10 s.
    assert growth < 12 * 1024
    # The healthy viewer is not held back by the stalled one.
    assert late < 1.0


def _handshake(sock: socket.socket) -> None:
    sock.sendall(b"\x03" + b"\x00" * 1536)
    need = 1 + 1536 * 2
    got = b""
    while len(got) < need:
        part = sock.recv(need - len(got))
        assert part, "server closed during handshake"
        got += part
    sock.sendall(got[1:1537])


def _connect_cmd() -> bytes:
    return encode_message(3, chunk.COMMAND_AMF0, 0, 0,
                          amf0.encode("connect", 1.0, {"app": "live"}), 128)


def _expect_closed(sock: socket.socket, timeout: float = 10.0) -> None:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


MALFORMED: dict[str, Callable[[socket.socket], None]] = {
    "garbage": lambda s: s.sendall(b"GET / HTTP/1.1\r\n\r\n" + os.urandom(3000)),
    "truncated handshake": lambda s: (s.sendall(b"\x03" + b"\x00" * 700),
                                      s.shutdown(socket.SHUT_WR)),
    "oversized chunk size": lambda s: (_handshake(s), s.sendall(
        encode_message(2, chunk.SET_CHUNK_SIZE, 0, 0, struct.pack(">I", 0x7FFFFFFF), 128))),
    "message over the cap": lambda s: (_handshake(s), s.sendall(
        b"\x03" + b"\x00\x00\x00" + (0xFFFFFF).to_bytes(3, "big") + b"\x09" + b"\x01\x00\x00\x00"
        + os.urandom(128))),
    "bad amf": lambda s: (_handshake(s), s.sendall(
        encode_message(3, chunk.COMMAND_AMF0, 0, 0, b"\x02\x00\x07conn" + b"\x11\xff", 128))),
    "chunk on unknown stream": lambda s: (_handshake(s), s.sendall(b"\xc7" + os.urandom(64))),
    "media before connect": lambda s: (_handshake(s), s.sendall(
        encode_message(3, chunk.COMMAND_AMF0, 0, 0, amf0.encode("createStream", 2.0, None), 128))),
}


def test_malformed_rtmp_input_closes_only_that_connection(
        node: Node, publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    publisher = publish(node, "live/steady")

    async def scenario() -> int:
        viewer = await HttpFlvReader.open(node.http, "/live/steady.flv")
        await viewer.read_header()
        for name, attack in MALFORMED.items():
            sock = socket.create_connection(("127.0.0.1", node.rtmp))
            try:
                await asyncio.to_thread(attack, sock)
                await asyncio.to_thread(_expect_closed, sock)
            finally:
                sock.close()
            # The healthy viewer keeps receiving between attacks.
            await viewer.next_tag(5)
            assert publisher.alive(), f"publisher hurt by {name}"
        received = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            await viewer.next_tag(5)
            received += 1
        await viewer.close()
        return received

    assert asyncio.run(scenario()) > 20
    text = node.log_text()
    assert text.count("rtmp protocol error") >= len(MALFORMED)
    assert "invalid chunk size" in text
    assert "exceeds the" in text and "cap" in text
    assert "AMF0" in text
    assert "Traceback" not in text
    assert node.proc.poll() is None


def test_publishing_connection_handles_errors_and_unpublish_and_spares_others(
        node: Node, publish: Callable[[Node, str], FfmpegPublisher], source_flv: Path) -> None:
    """A publishing connection reads on the fast path (socket callback → kernel): a protocol
    error there still closes only that connection, and an unpublish in the middle of the
    media still ends the stream in order."""
    steady = publish(node, "live/steady")
    tags = load_tags(source_flv)[:40]

    async def publisher(name: str) -> tuple[RtmpClient, HttpFlvReader]:
        pub = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
        assert (await pub.publish(name)).code == "NetStream.Publish.Start"
        for tag in tags[:20]:
            pub.send_media(tag.tag_type, tag.timestamp, tag.body)
        viewer = await HttpFlvReader.open(node.http, f"/live/{name}.flv")
        await viewer.read_header()
        await viewer.next_tag(5)
        return pub, viewer

    async def drained(viewer: HttpFlvReader) -> None:
        with pytest.raises(EOFError):
            while True:
                await viewer.next_tag(10)
        await viewer.close()

    async def scenario() -> None:
        bystander = await HttpFlvReader.open(node.http, "/live/steady.flv")
        await bystander.read_header()
        # 1. garbage after media: a chunk size of 0 is a protocol error
        pub, viewer = await publisher("broken")
        pub.send(2, chunk.SET_CHUNK_SIZE, 0, struct.pack(">I", 0))
        with pytest.raises(EOFError):
            while True:
                await pub.read_message(10)
        await drained(viewer)
        # 2. media, then deleteStream in the same write, then more media: ends in order
        pub, viewer = await publisher("leaving")
        pub.send_media(tags[20].tag_type, tags[20].timestamp, tags[20].body)
        pub.command("deleteStream", None, float(pub.stream_id))
        await drained(viewer)
        await pub.close()
        for _ in range(10):
            await bystander.next_tag(5)
        await bystander.close()

    asyncio.run(scenario())
    assert steady.alive()
    node.wait_for_log(r"publish end stream=live/leaving protocol=rtmp .*reason='unpublished'")
    text = node.log_text()
    assert "invalid chunk size" in text and "Traceback" not in text
    assert node.proc.poll() is None
