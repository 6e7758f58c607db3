"""The paced writer: start burst at once, then one shared buffer per viewer per tick; drains
a blocked viewer and cuts a stalled one; nothing published before the end is lost."""

from __future__ import annotations

import asyncio

import pytest

from arcly.engine import Engine, Frame, FrameKind, StreamKey
from arcly.media import flv
from arcly.protocols import egress

KEY = StreamKey("live", "egress")
TICK = 0.02


def video(ts: int, key: bool = False) -> Frame:
    return Frame(FrameKind.VIDEO, ts, (b"\x17" if key else b"\x27") + b"\x01" + bytes(100),
                 keyframe=key)


class FakeTransport:
    def __init__(self, high: int = 1 << 20) -> None:
        self.writes: list[bytes] = []
        self.high = high
        self.buffered = 0
        self.closing = False

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return 0, self.high

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.writes.append(b"".join(parts))


class FakeWriter:
    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.unblock = asyncio.Event()

    async def drain(self) -> None:
        await self.unblock.wait()
        self.transport.buffered = 0


def received(transport: FakeTransport) -> bytes:
    return b"".join(transport.writes)


async def test_burst_is_immediate_then_viewers_in_step_share_one_buffer_per_tick() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    handle.publish_frame(video(0, key=True))
    transports = [FakeTransport() for _ in range(3)]
    tasks = []
    for transport in transports:
        sub = await engine.subscribe(KEY)
        tasks.append(asyncio.create_task(egress.deliver(
            sub, FakeWriter(transport), flv.frame_tag, stall_timeout=5, coalesce=TICK)))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert all(t.writes == [flv.frame_tag(video(0, key=True))] for t in transports), \
        "the start burst is written before any tick"
    for ts in (40, 80, 120):
        handle.publish_frame(video(ts))
    await asyncio.sleep(TICK * 2.5)
    tick_writes = [t.writes[1] for t in transports]
    assert tick_writes[0] is tick_writes[1] is tick_writes[2], "one shared buffer per tick"
    assert tick_writes[0] == b"".join(flv.frame_tag(video(ts)) for ts in (40, 80, 120))
    handle.publish_frame(video(160))
    await engine.end_publish(KEY, "publisher disconnected")
    reasons = await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert reasons == ["stream ended: publisher disconnected"] * 3
    for transport in transports:
        assert received(transport).endswith(flv.frame_tag(video(160))), "no frame lost"
    assert len(egress.pacer(TICK)) == 0, "finished viewers leave the pacer"


async def test_blocked_viewer_drains_and_a_stalled_one_is_cut() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    handle.publish_frame(video(0, key=True))
    blocked, stalled = FakeTransport(high=10), FakeTransport(high=10)
    blocked_writer, stalled_writer = FakeWriter(blocked), FakeWriter(stalled)
    blocked.buffered = stalled.buffered = 1000  # the kernel buffer is full
    t1 = asyncio.create_task(egress.deliver(await engine.subscribe(KEY), blocked_writer,  # type: ignore[arg-type]
                                            flv.frame_tag, stall_timeout=5, coalesce=TICK))
    t2 = asyncio.create_task(egress.deliver(await engine.subscribe(KEY), stalled_writer,  # type: ignore[arg-type]
                                            flv.frame_tag, stall_timeout=0.1, coalesce=TICK))
    await asyncio.sleep(TICK)
    handle.publish_frame(video(40))
    blocked_writer.unblock.set()
    await asyncio.sleep(TICK * 3)
    assert received(blocked).endswith(flv.frame_tag(video(40))), "drained, then paced again"
    assert await asyncio.wait_for(t2, 2) == "slow viewer"
    assert not t1.done()
    blocked.closing = True
    assert await asyncio.wait_for(t1, 2) == "client closed"


async def test_coalesce_zero_writes_each_frame_as_it_is_published() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    handle.publish_frame(video(0, key=True))
    transport = FakeTransport()
    task = asyncio.create_task(egress.deliver(await engine.subscribe(KEY), FakeWriter(transport),  # type: ignore[arg-type]
                                              flv.frame_tag, stall_timeout=5, coalesce=0))
    await asyncio.sleep(0)
    for ts in (40, 80):
        handle.publish_frame(video(ts))
        await asyncio.sleep(0)
        assert transport.writes[-1] == flv.frame_tag(video(ts)), "written without waiting"
    assert len(transport.writes) == 3
    await engine.end_publish(KEY, "publisher disconnected")
    assert await asyncio.wait_for(task, 2) == "stream ended: publisher disconnected"


async def test_the_interval_grows_with_paced_viewers_up_to_its_ceiling() -> None:
    assert egress.interval_for(0.1, 0.3, egress.GROW_FROM) == 0.1
    assert egress.interval_for(0.1, 0.3, egress.GROW_TO) == pytest.approx(0.3)
    assert egress.interval_for(0.1, 0.05, 5000) == 0.1  # a ceiling under the base: fixed
    engine = Engine()
    handle = await engine.start_publish(KEY)
    handle.publish_frame(video(0, key=True))
    timer = egress.pacer(TICK, TICK * 3)
    tasks = []
    for count in range(egress.GROW_TO):
        sub = await engine.subscribe(KEY)
        tasks.append(asyncio.create_task(egress.deliver(
            sub, FakeWriter(FakeTransport()), flv.frame_tag, stall_timeout=5,  # type: ignore[arg-type]
            coalesce=TICK, coalesce_max=TICK * 3)))
        if count == 0:
            await asyncio.sleep(0)
            assert timer.current_interval == TICK, "one viewer: the base interval"
    await asyncio.sleep(0)
    assert len(timer) == egress.GROW_TO
    assert timer.current_interval == pytest.approx(TICK * 3), "a thousand: the ceiling"
    await engine.end_publish(KEY, "publisher disconnected")
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(timer) == 0
