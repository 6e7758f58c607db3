"""The kernel's contracts: publish registry, fan-out, serve's teardown, pump_source, reaper."""

from __future__ import annotations

import asyncio

import pytest

from arcly.engine import (
    ArclyError,
    CloseReason,
    Engine,
    EngineConfig,
    Frame,
    FrameKind,
    HandlerCrashed,
    NullObserver,
    PublishRegistry,
    ShutdownToken,
    StreamBusy,
    StreamKey,
    StreamNotFound,
)

KEY = StreamKey("live", "cam")


def video(ts: int, key: bool = False, size: int = 100) -> Frame:
    return Frame(FrameKind.VIDEO, ts, (b"\x17" if key else b"\x27") + b"\x01" + bytes(size),
                 keyframe=key)


def avc_config() -> Frame:
    return Frame(FrameKind.VIDEO, 0, b"\x17\x00" + bytes(20), keyframe=True, config=True)


class Recorder(NullObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def on_publish_start(self, key: StreamKey, protocol: str, peer: str) -> None:
        self.events.append(("publish_start", str(key)))

    def on_publish_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        self.events.append(("publish_end", str(key), reason))

    def on_stream_reaped(self, key: StreamKey) -> None:
        self.events.append(("reaped", str(key)))

    def on_viewer_skipped(self, key: StreamKey, protocol: str, peer: str, dropped: int) -> None:
        self.events.append(("skipped", str(key)))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_second_publish_on_a_live_key_is_refused_and_freed_after_end() -> None:
    engine = Engine()
    first = await engine.start_publish(KEY)
    with pytest.raises(StreamBusy):
        await engine.start_publish(KEY)
    assert await engine.end_publish(KEY)
    assert first.ended.cancelled and not first.publish_frame(video(0, key=True))
    second = await engine.start_publish(KEY)
    assert second.token > first.token, "fencing token grows per claim"


async def test_subscribe_to_unknown_key_raises_not_found() -> None:
    with pytest.raises(StreamNotFound):
        await Engine().subscribe(KEY)


async def test_late_viewer_gets_configuration_then_the_cached_gop() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    handle.publish_frame(avc_config())
    for ts in range(0, 200, 40):
        handle.publish_frame(video(ts, key=ts == 0))
    handle.publish_frame(video(200, key=True))  # a new GOP replaces the old one
    handle.publish_frame(video(240))
    viewer = await engine.subscribe(KEY)
    batch = await viewer.next_batch()
    assert batch[0].config
    assert [f.timestamp for f in batch[1:]] == [200, 240]
    assert batch[1].keyframe


async def test_fan_out_shares_the_same_frame_object_with_every_viewer() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    viewers = [await engine.subscribe(KEY) for _ in range(5)]
    frame = video(0, key=True)
    handle.publish_frame(frame)
    batches = [await v.next_batch() for v in viewers]
    assert all(b[0] is frame and b[0].payload is frame.payload for b in batches)


async def test_gop_cache_is_capped_and_restarts_at_the_next_keyframe() -> None:
    engine = Engine(EngineConfig(gop_max_frames=4))
    handle = await engine.start_publish(KEY)
    handle.publish_frame(video(0, key=True))
    for ts in range(1, 10):
        handle.publish_frame(video(ts))
    stream = engine.stream(KEY)
    assert stream is not None and stream.gop.frames == [] and stream.gop.overflowed
    handle.publish_frame(video(10, key=True))
    assert [f.timestamp for f in stream.gop.frames] == [10]


async def test_slow_viewer_skips_to_next_keyframe_without_touching_others() -> None:
    observer = Recorder()
    engine = Engine(EngineConfig(viewer_backlog_frames=10, viewer_max_skips=100),
                    observer=observer)
    handle = await engine.start_publish(KEY)
    slow = await engine.subscribe(KEY, protocol="rtmp", peer="slow")
    fast = await engine.subscribe(KEY, protocol="rtmp", peer="fast")
    handle.publish_frame(video(0, key=True))
    fast_seen = []
    for ts in range(1, 30):
        handle.publish_frame(video(ts))
        fast_seen += [f.timestamp for f in await fast.next_batch()]
        assert slow.pending_bytes <= 11 * 102, "backlog never grows past its cap"
    assert fast_seen == list(range(0, 30))
    handle.publish_frame(video(30, key=True))
    handle.publish_frame(video(31))
    resumed = await slow.next_batch()
    assert resumed[0].timestamp == 30 and resumed[0].keyframe
    assert slow.dropped > 0
    assert ("skipped", "live/cam") in observer.events


async def test_viewer_that_keeps_falling_behind_is_disconnected() -> None:
    engine = Engine(EngineConfig(viewer_backlog_frames=5, viewer_max_skips=2))
    handle = await engine.start_publish(KEY)
    slow = await engine.subscribe(KEY)
    for ts in range(100):
        handle.publish_frame(video(ts, key=ts % 10 == 0))
    assert slow.finished and slow.close_reason == "slow viewer"
    assert await slow.next_batch() == []
    stream = engine.stream(KEY)
    assert stream is not None and slow not in stream.subscribers


async def test_publish_frame_never_awaits_and_end_publish_finishes_viewers() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    viewer = await engine.subscribe(KEY)
    waiting = asyncio.create_task(viewer.next_batch())
    await asyncio.sleep(0)
    assert handle.publish_frame(video(0, key=True)) is True  # a plain call, no coroutine
    assert len(await waiting) == 1
    await engine.end_publish(KEY, "publisher disconnected")
    assert await viewer.next_batch() == []
    assert viewer.close_reason == "stream ended: publisher disconnected"


# -- serve ------------------------------------------------------------------------------------

class Waiter:
    """A handler that runs until shutdown, then records that it saw it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.saw_shutdown = False

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
        await shutdown.wait()
        self.saw_shutdown = True


class Returns:
    name = "returns"

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
        await asyncio.sleep(0.01)


class Raises:
    name = "raises"

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
        await asyncio.sleep(0.01)
        raise ArclyError("listener failed")


class Crashes:
    name = "crashes"

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
        await asyncio.sleep(0.01)
        raise ZeroDivisionError("bug")


async def test_serve_handler_that_returns_winds_down_the_others() -> None:
    others = [Waiter("a"), Waiter("b")]
    token = ShutdownToken()
    await asyncio.wait_for(Engine().serve([Returns(), *others], token), 5)
    assert token.cancelled and all(h.saw_shutdown for h in others)


async def test_serve_handler_that_raises_winds_down_the_others_and_propagates() -> None:
    other = Waiter("a")
    with pytest.raises(ArclyError, match="listener failed"):
        await asyncio.wait_for(Engine().serve([Raises(), other], ShutdownToken()), 5)
    assert other.saw_shutdown


async def test_serve_handler_that_crashes_winds_down_the_others_and_propagates() -> None:
    other = Waiter("a")
    with pytest.raises(HandlerCrashed) as info:
        await asyncio.wait_for(Engine().serve([other, Crashes()], ShutdownToken()), 5)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert other.saw_shutdown


async def test_serve_propagates_the_first_error_only() -> None:
    class RaisesLater(Raises):
        name = "later"

        async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
            await shutdown.wait()
            raise ArclyError("second")

    with pytest.raises(ArclyError, match="listener failed"):
        await asyncio.wait_for(Engine().serve([RaisesLater(), Raises()], ShutdownToken()), 5)


async def test_serve_cancels_a_handler_that_ignores_shutdown_after_the_grace() -> None:
    class Stubborn:
        name = "stubborn"

        async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
            await asyncio.sleep(3600)

    token = ShutdownToken()
    asyncio.get_running_loop().call_later(0.01, token.cancel)
    await asyncio.wait_for(Engine(EngineConfig(shutdown_grace=0.05)).serve([Stubborn()], token), 5)


async def test_serve_ends_streams_left_open_at_shutdown() -> None:
    observer = Recorder()
    engine = Engine(observer=observer)
    await engine.start_publish(KEY)
    token = ShutdownToken()
    token.cancel()
    await engine.serve([Waiter("a")], token)
    assert ("publish_end", "live/cam", "shutdown") in observer.events


# -- pump_source --------------------------------------------------------------------------------

class ListSource:
    def __init__(self, frames: list[Frame], error: Exception | None = None,
                 then_block: bool = False) -> None:
        self.frames = list(frames)
        self.error = error
        self.then_block = then_block
        self.closed = False

    async def next_frame(self) -> Frame | None:
        if self.frames:
            return self.frames.pop(0)
        if self.error:
            raise self.error
        if self.then_block:
            await asyncio.Event().wait()
        return None

    async def aclose(self) -> None:
        self.closed = True


async def test_pump_source_publishes_everything_and_releases_on_exhaustion() -> None:
    observer = Recorder()
    engine = Engine(observer=observer)
    await engine.pump_source(KEY, ListSource([video(0, True), video(1)]), ShutdownToken())
    assert engine.stream(KEY) is None
    assert ("publish_end", "live/cam", "source ended") in observer.events


async def test_pump_source_releases_the_slot_when_the_source_fails() -> None:
    engine = Engine()
    source = ListSource([video(0, True)], error=OSError("disk gone"))
    with pytest.raises(OSError, match="disk gone"):
        await engine.pump_source(KEY, source, ShutdownToken())
    assert engine.stream(KEY) is None and source.closed
    await engine.start_publish(KEY)  # the key is free again


async def test_pump_source_releases_the_slot_on_shutdown() -> None:
    engine = Engine()
    token = ShutdownToken()
    task = asyncio.create_task(engine.pump_source(KEY, ListSource([], then_block=True), token))
    await asyncio.sleep(0.01)
    assert engine.stream(KEY) is not None
    token.cancel()
    await asyncio.wait_for(task, 5)
    assert engine.stream(KEY) is None


async def test_ending_a_publish_by_token_spares_a_newer_publish_of_the_key() -> None:
    engine = Engine()
    old = await engine.start_publish(KEY)
    old_token = old.token
    await engine.end_publish(KEY, "unpublished")
    new = await engine.start_publish(KEY)
    # A late "that claim is lost" for the old token must not end the new publish.
    assert not await engine.end_publish(KEY, CloseReason.OWNERSHIP_LOST, token=old_token)
    assert not new.ended.cancelled and engine.stream(KEY) is not None
    assert await engine.end_publish(KEY, CloseReason.OWNERSHIP_LOST, token=new.token)


async def test_a_silent_publisher_is_replaced_by_a_reconnecting_one_a_live_one_is_not() -> None:
    clock = FakeClock()
    engine = Engine(EngineConfig(stale_publisher=2.0), clock=clock)
    first = await engine.start_publish(KEY, peer="a")
    clock.now += 1.5
    first.publish_frame(video(0, key=True))
    clock.now += 1.9  # 1.9 s since its last frame: still live
    with pytest.raises(StreamBusy):
        await engine.start_publish(KEY, peer="b")
    clock.now += 0.2  # 2.1 s: the old connection is dead, it just has not noticed
    second = await engine.start_publish(KEY, peer="b")
    assert first.ended.cancelled and first.end_reason == "replaced: the publisher reconnected"
    assert second.token > first.token and engine.stream(KEY).peer == "b"  # type: ignore[union-attr]
    never = Engine(EngineConfig(stale_publisher=None), clock=clock)
    await never.start_publish(KEY)
    clock.now += 3600
    with pytest.raises(StreamBusy):
        await never.start_publish(KEY)


async def test_pump_source_refuses_a_busy_key() -> None:
    engine = Engine()
    await engine.start_publish(KEY)
    with pytest.raises(StreamBusy):
        await engine.pump_source(KEY, ListSource([]), ShutdownToken())


# -- reaper -------------------------------------------------------------------------------------

async def test_reap_idle_ends_only_streams_without_recent_frames() -> None:
    clock, observer = FakeClock(), Recorder()
    engine = Engine(EngineConfig(idle_timeout=10), observer=observer, clock=clock)
    idle = await engine.start_publish(KEY)
    busy = await engine.start_publish(StreamKey("live", "busy"))
    viewer = await engine.subscribe(KEY)
    clock.now += 6
    busy.publish_frame(video(0, True))
    clock.now += 5
    assert await engine.reap_idle() == 1
    assert idle.ended.cancelled and not busy.ended.cancelled
    assert ("reaped", "live/cam") in observer.events
    assert ("publish_end", "live/cam", "idle") in observer.events
    assert await viewer.next_batch() == []


async def test_reap_idle_is_a_no_op_without_timeout() -> None:
    clock = FakeClock()
    engine = Engine(EngineConfig(idle_timeout=None), clock=clock)
    await engine.start_publish(KEY)
    clock.now += 1e6
    assert await engine.reap_idle() == 0
    assert engine.spawn_idle_reaper(0.01, ShutdownToken()) is None


async def test_idle_reaper_task_sweeps_and_stops_on_shutdown() -> None:
    clock = FakeClock()
    engine = Engine(EngineConfig(idle_timeout=1), clock=clock)
    handle = await engine.start_publish(KEY)
    token = ShutdownToken()
    task = engine.spawn_idle_reaper(0.01, token)
    assert task is not None
    clock.now += 2
    await asyncio.wait_for(handle.ended.wait(), 5)
    token.cancel()
    await asyncio.wait_for(task, 5)
    assert task.done() and engine.stream(KEY) is None


async def test_frames_and_bytes_out_count_what_subscribers_took() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    handle.publish_frame(video(0, key=True))  # cached: the next viewer's start burst
    viewers = [await engine.subscribe(KEY) for _ in range(3)]
    handle.publish_frame(video(40))
    for viewer in viewers:
        await viewer.next_batch()
    stream = engine.stream(KEY)
    assert stream is not None
    assert stream.frames_out == 6 and stream.bytes_out == 6 * 102
