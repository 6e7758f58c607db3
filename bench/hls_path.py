"""The HLS serving path's CPU per request, without sockets: a stream of the benchmark source is
published into a kernel and cut into MPEG-TS segments, then kept-alive requests the way
``hls_delivery.py``'s players make them (playlist, newest segment, playlist, ...) are fed to the
node's HTTP listener (its shortcut, else its handler: head parsing, routing, auth, HLS) on one
connection whose transport only counts what it is given. Prints the best of ``--rounds``
(process CPU time per request): a steadier figure than a whole node's CPU for comparing changes
to the HTTP path. The kernel's send, which a real socket adds, is not in it.

    .venv/bin/python bench/hls_path.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streaming import source

from arcly.engine import Engine, FrameKind, StreamKey
from arcly.hls.service import HlsService, HlsSettings, HlsVariant
from arcly.media import flv
from arcly.media.flv import make_frame
from arcly.protocols.http.request import MAX_HEAD
from arcly.protocols.http.server import HttpServer
from arcly.protocols.http.settings import HttpSettings
from arcly.protocols.listener import _ShortcutProtocol

KEY = StreamKey("live", "bench")


class _Transport(asyncio.Transport):
    """Takes every write at once (an empty socket buffer) and counts the bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self.closing = False

    def write(self, data: Any) -> None:
        self.sent += len(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.sent += len(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16384, 65536)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


async def _published(engine: Engine, hls: HlsService) -> list[str]:
    """Publish the source's first ~9 s and let the segmenter cut it; the segment URIs."""
    data = source().read_bytes()
    tags, _ = flv.parse_tags(data, flv.parse_header(data))
    handle = await engine.start_publish(KEY, protocol="rtmp")
    await hls.start(KEY, sticky=True)
    for tag in tags:
        if tag.timestamp > 9000:
            break
        handle.publish_frame(make_frame(FrameKind(tag.tag_type), tag.timestamp, tag.body))
        await asyncio.sleep(0)
    for _ in range(100):
        await asyncio.sleep(0)
    playlist = await hls.playlist(KEY)
    assert playlist is not None, "no playlist"
    return [line for line in playlist.splitlines() if line and not line.startswith("#")]


async def one_round(requests: int) -> tuple[float, int]:
    engine = Engine()
    hls = HlsService(HlsSettings(variant=HlsVariant.MPEGTS, segment_seconds=2.0))
    hls.registry = engine
    segments = await _published(engine, hls)
    server = HttpServer("127.0.0.1", 0, HttpSettings(keepalive_requests=requests + 1),
                        engine=engine, hls=hls)
    playlist = f"GET /{KEY}/index.m3u8 HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    segment = f"GET /{KEY}/{segments[-1]} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    transport = _Transport()
    handled: list[asyncio.Task[None]] = []

    def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handled.append(asyncio.create_task(server._handle(engine, reader, writer)))

    # The listener's connection: reads go to the shortcut, then to the handler's stream.
    protocol = _ShortcutProtocol(asyncio.StreamReader(MAX_HEAD), handle,  # type: ignore[arg-type]
                                 server._shortcut)
    protocol.connection_made(transport)
    started = time.process_time()
    for index in range(requests):
        protocol.data_received(segment if index % 2 else playlist)
        await asyncio.sleep(0)
    spent = time.process_time() - started
    protocol.eof_received()
    await handled[0]
    return spent, transport.sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    opts = parser.parse_args()
    best, sent = min(uvloop.run(one_round(opts.requests)) for _ in range(opts.rounds))
    print(f"{opts.requests} requests (playlist, segment, ...; {sent / opts.requests / 1e3:.0f} kB "
          f"each on average): {best * 1e6 / opts.requests:.2f} us per request "
          f"(best of {opts.rounds})")


if __name__ == "__main__":
    main()
