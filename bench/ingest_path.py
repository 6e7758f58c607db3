"""The RTMP ingest path's CPU per frame, without sockets: the benchmark source's tags as a
publisher chunks them (``loadclient.encode_chunks``, 4096-byte chunks), fed to ``RtmpConnection``
and published into the kernel the way the server's read callback does, for N streams
round-robin. Prints the best of ``--rounds`` (process CPU time per frame): a steadier figure
than a whole node's CPU for comparing changes to the decoder or the publish path.

    .venv/bin/python bench/ingest_path.py                  # 100 streams, one read per frame
    .venv/bin/python bench/ingest_path.py --batch 7        # merged reads: 7 frames per read
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadclient import encode_chunks
from streaming import source

from arcly.engine import Engine, StreamKey
from arcly.media import flv
from arcly.media.flv import make_frame
from arcly.protocols.rtmp.connection import RtmpConnection, State
from arcly.protocols.rtmp.events import MediaReceived


def wire(frames: int, batch: int) -> list[bytes]:
    data = source().read_bytes()
    tags, _ = flv.parse_tags(data, flv.parse_header(data))
    chunks = [encode_chunks(4 if t.tag_type == 8 else 6 if t.tag_type == 9 else 5, t.tag_type,
                            1, t.timestamp, t.body, 4096) for t in tags[:frames]]
    return [b"".join(chunks[i:i + batch]) for i in range(0, len(chunks), batch)]


async def one_round(reads: list[bytes], streams: int) -> float:
    engine = Engine()
    publishers = []
    for index in range(streams):
        handle = await engine.start_publish(StreamKey("in", f"k{index}"), protocol="rtmp")
        conn = RtmpConnection()
        conn.state = State.OPEN  # past the handshake and the publish command
        conn.publishing.add(1)
        conn.receive_data(encode_chunks(2, 1, 0, 0, struct.pack(">I", 4096), 128))
        publishers.append((conn, handle))
    started = time.process_time()
    for read in reads:
        for conn, handle in publishers:
            for event in conn.receive_data(read, 0.0):
                if type(event) is MediaReceived:
                    handle.publish_frame(make_frame(event.kind, event.timestamp, event.payload))
            conn.data_to_send()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--frames", type=int, default=400, help="tags of the source per stream")
    parser.add_argument("--batch", type=int, default=1, help="frames per read")
    parser.add_argument("--rounds", type=int, default=4)
    opts = parser.parse_args()
    reads = wire(opts.frames, opts.batch)
    best = min(asyncio.run(one_round(reads, opts.streams)) for _ in range(opts.rounds))
    print(f"{opts.streams} streams x {opts.frames} frames, {opts.batch} per read: "
          f"{best * 1e6 / opts.frames / opts.streams:.2f} us per frame (best of {opts.rounds})")


if __name__ == "__main__":
    main()
