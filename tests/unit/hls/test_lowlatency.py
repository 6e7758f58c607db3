"""Low-Latency HLS in the service over a real kernel: blocking playlist reload (RFC 8216bis
6.2.5.2) answers when the asked-for part exists, refuses what is too far ahead (400) and gives
up in time (503); the hinted next part is held until it exists; held requests cost no CPU."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator

import m3u8
import pytest

from arcly.engine import Engine, Frame, PublishHandle, ShutdownToken
from arcly.hls import service as service_module
from arcly.hls.service import BlockingReloadError, HlsService, HlsSettings, HlsVariant
from tests.support.wait import eventually
from tests.unit.hls.test_service import KEY, new_engine, segmenting, session


async def feed_until(handle: PublishHandle, frames: Iterator[Frame],
                     done: Callable[[], bool]) -> None:
    """Publish frames one by one, letting the segmenter take each, until ``done()``."""
    for frame in frames:
        handle.publish_frame(frame)
        for _ in range(3):
            await asyncio.sleep(0)
        if done():
            return
    raise AssertionError("ran out of frames")


async def midway(service: HlsService, handle: PublishHandle, until_ms: int
                 ) -> tuple[Iterator[Frame], int, int]:
    """Publish up to ``until_ms`` into the stream; the frames left, and the newest media
    (sequence, parts of it) the playlist lists then."""
    frames = iter(session(gops=3))
    for frame in frames:
        handle.publish_frame(frame)
        if frame.timestamp >= until_ms:
            break
    assert await service.playlist(KEY) is not None
    newest, parts = service._states[KEY].latest()
    return frames, newest, parts


@pytest.fixture
async def live() -> AsyncIterator[tuple[Engine, HlsService, PublishHandle]]:
    """A Low-Latency service segmenting a live publish (nothing published yet)."""
    async with serving(2.0, 0.2) as running:
        yield running


@contextlib.asynccontextmanager
async def serving(segment_seconds: float, part_seconds: float
                  ) -> AsyncIterator[tuple[Engine, HlsService, PublishHandle]]:
    service = HlsService(HlsSettings(segment_seconds=segment_seconds,
                                     part_seconds=part_seconds, variant=HlsVariant.LOWLATENCY))
    engine = new_engine(service)
    shutdown = ShutdownToken()
    runner = asyncio.create_task(service.run(engine, shutdown))
    await eventually(lambda: service.registry is engine)
    handle = await engine.start_publish(KEY)
    await service.start(KEY)
    await segmenting(engine)
    try:
        yield engine, service, handle
    finally:
        await engine.end_publish(KEY, "test over")
        shutdown.cancel()
        await asyncio.wait_for(runner, 10)


async def test_a_blocking_request_returns_once_its_part_exists(
        live: tuple[Engine, HlsService, PublishHandle]) -> None:
    _, service, handle = live
    handle_frames, newest, parts = await midway(service, handle, 3000)  # in segment 2
    request = asyncio.create_task(service.playlist(KEY, msn=newest, part=parts))
    await asyncio.sleep(0.05)
    assert not request.done(), "held: that part does not exist yet"
    # The part closes when the next one starts.
    await feed_until(handle, handle_frames, lambda: service._states[KEY].has(newest, parts))
    held = await asyncio.wait_for(request, 1.0)
    playlist = m3u8.loads(held)
    uris = [p.uri for s in playlist.segments for p in s.parts]
    assert f"{handle.token}-{newest}.{parts}.m4s" in uris
    assert playlist.preload_hint.uri == f"{handle.token}-{newest}.{parts + 1}.m4s"


async def test_a_request_too_far_ahead_is_refused_and_one_that_never_comes_times_out(
        ) -> None:
    async with serving(0.5, 0.1) as (_, service, handle):  # holds 1.5 s at most
        for frame in session(gops=1)[:12]:  # a few parts of the first segment, then silence
            handle.publish_frame(frame)
        assert await service.playlist(KEY) is not None
        newest, _ = service._states[KEY].latest()
        with pytest.raises(BlockingReloadError) as far:
            await service.playlist(KEY, msn=newest + 3, part=0)
        assert far.value.status == 400
        started = time.monotonic()
        with pytest.raises(BlockingReloadError) as late:
            await service.playlist(KEY, msn=newest + 1, part=0)
        assert late.value.status == 503
        assert time.monotonic() - started >= 1.4, "held for three target durations first"


async def test_the_hinted_part_is_held_until_it_exists_and_other_missing_parts_are_not(
        live: tuple[Engine, HlsService, PublishHandle]) -> None:
    _, service, handle = live
    frames, newest, parts = await midway(service, handle, 2500)
    hinted = f"{handle.token}-{newest}.{parts}.m4s"
    fetch = asyncio.create_task(service.part(KEY, hinted))
    assert await service.part(KEY, f"{handle.token}-{newest}.{parts + 5}.m4s") is None
    assert not fetch.done()
    await feed_until(handle, frames, lambda: service._states[KEY].media(hinted) is not None)
    data = await asyncio.wait_for(fetch, 1.0)
    assert data is not None and data[4:8] == b"moof"


async def test_held_requests_wait_without_using_the_cpu(
        live: tuple[Engine, HlsService, PublishHandle]) -> None:
    _, service, handle = live
    frames, newest, parts = await midway(service, handle, 2500)
    held = [asyncio.create_task(service.playlist(KEY, msn=newest, part=parts))
            for _ in range(2000)]
    await asyncio.sleep(0.1)  # all of them parked on the key's one event
    cpu = time.process_time()
    await asyncio.sleep(1.0)
    spent = time.process_time() - cpu
    assert not any(task.done() for task in held)
    assert spent < 0.3, f"2000 held requests used {spent:.2f} s of CPU in 1 s (polling?)"
    await feed_until(handle, frames, lambda: service._states[KEY].has(newest, parts))
    texts = await asyncio.wait_for(asyncio.gather(*held), 10)
    assert len(set(texts)) == 1 and f"{newest}.{parts}.m4s" in texts[0]


async def test_a_republish_keeps_held_requests_and_the_old_init_segment(
        live: tuple[Engine, HlsService, PublishHandle],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "END_GRACE", 0.5)
    engine, service, handle = live
    _, newest, _ = await midway(service, handle, 2500)
    text = await service.playlist(KEY)
    assert text is not None
    old_init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', text)
    assert old_init is not None
    await engine.end_publish(KEY)  # the broadcaster's connection broke ...
    await eventually(lambda: service._states[KEY].runner is None)
    ended = await service.playlist(KEY)
    assert ended is not None and "#EXT-X-ENDLIST" not in ended, "not over yet: it may return"
    held = asyncio.create_task(service.playlist(KEY, msn=newest + 1, part=0))
    await asyncio.sleep(0.05)
    assert not held.done()
    second = await engine.start_publish(KEY)  # ... and it reconnects
    await segmenting(engine)
    await feed_until(second, iter(session(gops=2)),
                     lambda: service._states[KEY].has(newest + 1, 0))
    text = await asyncio.wait_for(held, 2.0)
    assert "#EXT-X-ENDLIST" not in text and "#EXT-X-DISCONTINUITY" in text
    assert f"{second.token}-{newest + 1}.0.m4s" in text
    assert service.segment(KEY, old_init.group(1)) is not None, "the old init is still named"


async def test_the_end_is_announced_once_the_stream_did_not_come_back(
        live: tuple[Engine, HlsService, PublishHandle],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "END_GRACE", 0.3)
    engine, service, handle = live
    _, newest, _ = await midway(service, handle, 2500)
    held = asyncio.create_task(service.playlist(KEY, msn=newest + 1, part=0))
    await engine.end_publish(KEY)
    text = await asyncio.wait_for(held, 3.0)
    assert text.rstrip().endswith("#EXT-X-ENDLIST") and "PRELOAD-HINT" not in text


async def test_a_held_reload_is_answered_by_a_callback_like_playlist_answers(
        live: tuple[Engine, HlsService, PublishHandle]) -> None:
    _, service, handle = live
    frames, newest, parts = await midway(service, handle, 2500)
    got: list[str | None] = []
    assert service.hold(KEY, newest, parts, query="key=v", client="c|p",
                        deliver=got.append) is True
    assert service.hold(KEY, newest + 3, 0, query="", client="", deliver=got.append) is False
    already = service.hold(KEY, newest, parts - 1, query="key=v", client="", deliver=got.append)
    assert isinstance(already, str) and already == await service.playlist(
        KEY, query="key=v", msn=newest, part=parts - 1)
    await asyncio.sleep(0.05)
    assert got == [], "held: that part does not exist yet"
    await feed_until(handle, frames, lambda: service._states[KEY].has(newest, parts))
    assert got == [await service.playlist(KEY, query="key=v", msn=newest, part=parts)]
    assert f"{newest}.{parts}.m4s?key=v" in str(got[0])
    assert not service._states[KEY].holds and service.viewers() == {KEY: 1}


async def test_a_held_reload_that_never_comes_gets_none_in_time() -> None:
    async with serving(0.5, 0.1) as (_, service, handle):  # holds 1.5 s at most
        for frame in session(gops=1)[:12]:
            handle.publish_frame(frame)
        assert await service.playlist(KEY) is not None
        newest, _ = service._states[KEY].latest()
        got: list[str | None] = []
        started = time.monotonic()
        assert service.hold(KEY, newest + 1, 0, query="", client="", deliver=got.append)
        await eventually(lambda: got, timeout=5)
        assert got == [None] and time.monotonic() - started >= 1.4
        assert not service._states[KEY].holds


async def test_held_reloads_are_answered_at_once_when_the_segmenter_stops(
        live: tuple[Engine, HlsService, PublishHandle]) -> None:
    _, service, handle = live
    _, newest, parts = await midway(service, handle, 2500)
    got: list[str | None] = []
    assert service.hold(KEY, newest, parts, query="", client="", deliver=got.append) is True
    state = service._states[KEY]
    assert state.runner is not None
    state.runner.cancel()  # what the idle sweep or a failure does: no part will come
    await eventually(lambda: got, timeout=1.0)  # not after the blocking wait (6 s)
    assert got == [None] and not state.holds
