"""Merged reads: a busy node reads each publisher at most once per interval, and nothing is lost
or reordered on the way (real sockets, an in-process RTMP server)."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable

import pytest

from arcly.engine import Engine, ShutdownToken
from arcly.protocols import readmerge
from arcly.protocols.readmerge import merge_interval
from arcly.protocols.rtmp import chunk
from arcly.protocols.rtmp import server as rtmp_server
from arcly.protocols.rtmp.server import RtmpServer, RtmpSettings
from tests.support.rtmp_client import RtmpClient

AVC_HEADER = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00\x04abcd\x01\x00\x02ef"


def test_the_interval_grows_with_publishers_up_to_its_ceiling() -> None:
    assert merge_interval(0.1, readmerge.MERGE_FROM - 1) == 0.0
    assert merge_interval(0.1, readmerge.MERGE_FROM) == readmerge.MERGE_MIN
    assert merge_interval(0.1, 60) == pytest.approx(0.05)
    assert merge_interval(0.1, readmerge.MERGE_TO) == 0.1
    assert merge_interval(0.1, 10 * readmerge.MERGE_TO) == 0.1
    assert merge_interval(0.0, 500) == 0.0  # --read-merge-max-ms 0: off
    assert merge_interval(0.01, 500) == 0.01  # a ceiling below the minimum is the ceiling


Server = tuple[int, list[int]]  # the RTMP port, data_received calls per publishing connection


@pytest.fixture
async def serve(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[[float],
                                                                        asyncio.Future[Server]]]:
    """Start an RTMP server with ``--read-merge-max-ms`` as given (merging from the first
    publisher on), counting the reads of publishing connections."""
    monkeypatch.setattr(readmerge, "MERGE_FROM", 0)  # the full interval from one publisher on
    monkeypatch.setattr(readmerge, "MERGE_TO", 1)
    reads: list[int] = []
    original = rtmp_server._PublishPath.data_received

    def counted(self: rtmp_server._PublishPath, data: bytes) -> None:
        reads.append(len(data))
        original(self, data)

    monkeypatch.setattr(rtmp_server._PublishPath, "data_received", counted)
    shutdown = ShutdownToken()
    tasks: list[asyncio.Task[None]] = []

    async def start(ceiling: float) -> Server:
        handler = RtmpServer("127.0.0.1", 0, RtmpSettings(read_merge_max=ceiling))
        tasks.append(asyncio.create_task(Engine().serve([handler], shutdown)))
        await asyncio.wait_for(handler.listener.ready.wait(), 10)
        return handler.listener.addresses[0][1], reads

    yield start  # type: ignore[misc]
    shutdown.cancel()
    await asyncio.gather(*tasks)


async def _publish_and_watch(port: int, frames: int, spacing: float) -> list[tuple[int, bytes]]:
    publisher = await RtmpClient.connect("127.0.0.1", port, "live")
    await publisher.publish("merged")
    publisher.send_media(chunk.VIDEO, 0, AVC_HEADER)
    viewer = await RtmpClient.connect("127.0.0.1", port, "live")
    await viewer.play("merged")
    for index in range(frames):
        body = (b"\x17\x01" if index == 0 else b"\x27\x01") + b"\x00\x00\x00" + \
            struct.pack(">I", index) * 50
        publisher.send_media(chunk.VIDEO, 10 + index * 33, body)
        await publisher.writer.drain()
        await asyncio.sleep(spacing)
    got: list[tuple[int, bytes]] = []
    while len(got) < frames:
        msg = await viewer.read_message(timeout=10)
        if msg.type_id == chunk.VIDEO and msg.payload != AVC_HEADER:
            got.append((msg.timestamp, msg.payload))
    await publisher.close()
    await viewer.close()
    return got


async def test_reads_are_merged_and_every_frame_arrives_in_order(
        serve: Callable[[float], asyncio.Future[Server]]) -> None:
    port, reads = await serve(0.1)
    started = time.monotonic()
    got = await _publish_and_watch(port, frames=40, spacing=0.01)
    elapsed = time.monotonic() - started
    assert [ts for ts, _ in got] == [10 + i * 33 for i in range(40)]
    assert [struct.unpack(">I", body[5:9])[0] for _, body in got] == list(range(40))
    # 40 frames over ~0.45 s (longer on a loaded machine), read at most once per 100 ms once
    # publishing (+ the handshake's and commands' reads): a handful of reads, not 40.
    assert len(reads) <= max(12, elapsed / 0.1 + 4), (reads, elapsed)


async def test_without_merging_each_frame_is_its_own_read(
        serve: Callable[[float], asyncio.Future[Server]]) -> None:
    port, reads = await serve(0.0)
    got = await _publish_and_watch(port, frames=40, spacing=0.01)
    assert len(got) == 40
    assert len(reads) >= 30, reads  # what the merged test's bound is measured against
