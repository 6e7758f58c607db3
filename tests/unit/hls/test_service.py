"""The HLS service over a real kernel (no network): segmenters start on request or on publish,
the playlist keeps a window, continues across a republish with a discontinuity, and keys are
forgotten ``linger`` seconds after nobody needs them."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import m3u8
import pytest

from arcly.engine import (
    Engine,
    EngineConfig,
    Frame,
    FrameKind,
    PublishHandle,
    SegmentMark,
    ShutdownToken,
    StreamKey,
    Subscription,
)
from arcly.hls import Segment, Segmenter
from arcly.hls import service as service_module
from arcly.hls.cmaf import CmafSegmenter
from arcly.hls.service import HlsService, HlsSettings, HlsVariant
from arcly.media.flv import make_frame
from tests.support.wait import eventually

KEY = StreamKey("live", "cam")
# libx264's 640x360 Constrained Baseline SPS/PPS (as ffmpeg writes them into FLV).
SPS = bytes.fromhex("6742c01ed900a02ff970110000030001000003003c0f162e48")
PPS = bytes.fromhex("68cb83cb20")
AVC_CONFIG = (b"\x17\x00\x00\x00\x00" + bytes([1, SPS[1], SPS[2], SPS[3], 0xFF, 0xE1])
              + struct.pack(">H", len(SPS)) + SPS + b"\x01" + struct.pack(">H", len(PPS)) + PPS)
AAC_CONFIG = b"\xaf\x00\x12\x10"  # AAC-LC, 44.1 kHz, stereo
FPS = 10
GOP_MS = 2000  # one keyframe per segment target: every GOP is a segment


VARIANT = [HlsVariant.MPEGTS]


@pytest.fixture(autouse=True, params=[HlsVariant.MPEGTS, HlsVariant.LOWLATENCY])
def variant(request: pytest.FixtureRequest) -> Iterator[HlsVariant]:
    """Every test here runs with TS segments and with Low-Latency fMP4 parts."""
    VARIANT[0] = request.param
    yield request.param
    VARIANT[0] = HlsVariant.MPEGTS


@pytest.fixture(autouse=True)
def short_end_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grace before a playlist ends (3 s in production), short here: the rules are the
    same, the suite waits less."""
    monkeypatch.setattr(service_module, "END_GRACE", 0.3)


def new_service(settings: HlsSettings | None = None) -> HlsService:
    """The one place that constructs the service (its registry arrives with ``run``)."""
    return HlsService(dataclasses.replace(settings or HlsSettings(segment_seconds=2.0),
                                          variant=VARIANT[0]))


Serve = Callable[..., Awaitable[tuple[Engine, HlsService]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """``engine, service = await serve(settings)``: a service observing a new kernel and
    running on it (``run(registry, shutdown)``), as ``arcly.node`` builds and runs them.
    Teardown ends every stream, then shuts the service down."""
    running: list[tuple[Engine, ShutdownToken, asyncio.Task[None]]] = []

    async def start(settings: HlsSettings | None = None) -> tuple[Engine, HlsService]:
        service = new_service(settings)
        engine = new_engine(service)
        shutdown = ShutdownToken()
        running.append((engine, shutdown, asyncio.create_task(service.run(engine, shutdown))))
        await eventually(lambda: service.registry is engine)
        return engine, service

    try:
        yield start
    finally:
        for engine, shutdown, task in running:
            for stream in engine.streams():
                await engine.end_publish(stream.key, "test over")
            shutdown.cancel()
            await asyncio.wait_for(task, 10)


def new_engine(service: HlsService) -> Engine:
    """The kernel with the service as its observer, as ``arcly.node`` builds them."""
    return Engine(EngineConfig(segment_target=2.0, idle_timeout=None), observer=service)


def video(ts: int, key: bool, n: int) -> Frame:
    nal = bytes([0x65 if key else 0x41]) + n.to_bytes(4, "big") * 40
    body = (b"\x17" if key else b"\x27") + b"\x01\x00\x00\x00" + struct.pack(">I", len(nal)) + nal
    return make_frame(FrameKind.VIDEO, ts, body)


def audio(ts: int, n: int) -> Frame:
    return make_frame(FrameKind.AUDIO, ts, b"\xaf\x01" + n.to_bytes(2, "big") * 60)


def session(gops: int, start: int = 0) -> list[Frame]:
    """Configuration, then ``gops`` GOPs of 2 s: 10 fps video with audio between frames."""
    frames = [make_frame(FrameKind.VIDEO, start, AVC_CONFIG),
              make_frame(FrameKind.AUDIO, start, AAC_CONFIG)]
    step = 1000 // FPS
    for i in range(gops * GOP_MS // step):
        ts = start + i * step
        frames.append(video(ts, i % (GOP_MS // step) == 0, i))
        frames.append(audio(ts + step // 2, i))
    return frames


def publish_all(handle: PublishHandle, frames: list[Frame]) -> None:
    for frame in frames:
        assert handle.publish_frame(frame)



async def playlist_with(service: HlsService, count: int, *, ended: bool = False,
                        key: StreamKey = KEY) -> m3u8.M3U8:
    """Poll the playlist until it lists ``count`` segments (and the end, if asked)."""
    deadline = time.monotonic() + 5.0
    while True:
        text = await service.playlist(key)
        parsed = m3u8.loads(text) if text else None
        if parsed and len(complete(parsed)) == count and parsed.is_endlist == ended:
            return parsed
        if time.monotonic() > deadline:
            raise AssertionError(f"playlist never had {count} segments (ended={ended}):\n{text}")
        await asyncio.sleep(0.005)


def ext() -> str:
    return "ts" if VARIANT[0] is HlsVariant.MPEGTS else "m4s"


def complete(playlist: m3u8.M3U8) -> list[m3u8.Segment]:
    """The playlist's whole segments (not the parts of the one being cut, LL-HLS)."""
    return [s for s in playlist.segments if s.uri]


async def segmenting(engine: Engine, key: StreamKey = KEY) -> None:
    """Wait until the service's segmenter subscribed to the live stream."""
    await eventually(lambda: (s := engine.stream(key)) is not None and len(s.subscribers) == 1)


async def test_playlist_lists_completed_segments_then_the_end(serve: Serve) -> None:
    engine, service = await serve()
    handle = await engine.start_publish(KEY)
    request = asyncio.create_task(service.playlist(KEY))  # the first viewer asks
    await segmenting(engine)
    publish_all(handle, session(gops=4))
    first = await asyncio.wait_for(request, 5)
    assert first is not None and "#EXTINF" in first, "the first request waits for a segment"

    live = await playlist_with(service, 3)
    assert live.media_sequence == 0 and live.target_duration == 2
    assert [s.uri for s in complete(live)] == [f"{handle.token}-{n}.{ext()}" for n in range(3)]
    assert [s.duration for s in complete(live)] == [2.0, 2.0, 2.0]
    assert not any(s.discontinuity for s in complete(live))

    await engine.end_publish(KEY)
    ended = await playlist_with(service, 4, ended=True)
    assert complete(ended)[-1].uri == f"{handle.token}-3.{ext()}"


async def test_segments_are_served_by_uri_with_the_bytes_a_segmenter_cuts(
        serve: Serve) -> None:
    engine, service = await serve()
    handle = await engine.start_publish(KEY)
    await service.start(KEY)
    await segmenting(engine)
    reference = await engine.subscribe(KEY)  # an independent segmenter on the same stream
    publish_all(handle, session(gops=3))
    await engine.end_publish(KEY)
    expected = await cut_alone(reference)
    listed = await playlist_with(service, 3, ended=True)
    for entry, cut in zip(complete(listed), expected, strict=True):
        assert entry.uri == cut.uri
        data = service.segment(KEY, entry.uri)
        assert data == cut.data
        if VARIANT[0] is HlsVariant.MPEGTS:
            assert data[:4] == b"\x47\x40\x00\x10" and len(data) % 188 == 0, "TS, PAT first"
        else:
            assert data[4:8] == b"moof" and service.segment(KEY, cut.init) is not None
            assert [service.segment(KEY, p.uri) for p in cut.parts] == [
                p.data for p in cut.parts], "every part is served too"
    assert len({service.segment(KEY, s.uri) for s in complete(listed)}) == 3
    assert service.segment(KEY, f"{handle.token}-99.{ext()}") is None
    assert service.segment(KEY, "index.m3u8") is None


async def cut_alone(sub: Subscription) -> list[Segment]:
    """The segments an independent segmenter of the service's variant cuts from ``sub``."""
    out: list[Segment] = []
    if VARIANT[0] is HlsVariant.MPEGTS:
        segmenter = Segmenter()
        while batch := await sub.next_batch():
            out += [s for s in map(segmenter.feed, batch) if s is not None]
        last = segmenter.finish()
        out += [last] if last is not None else []
    else:
        cmaf = CmafSegmenter()
        while batch := await sub.next_batch():
            for frame in batch:
                out += [s for s in cmaf.feed(frame) if isinstance(s, Segment)]
        out += [s for s in cmaf.finish() if isinstance(s, Segment)]
    sub.close()
    return out


async def test_playlist_query_is_carried_to_segment_uris(serve: Serve) -> None:
    engine, service = await serve()
    handle = await engine.start_publish(KEY)
    await service.start(KEY)
    await segmenting(engine)
    publish_all(handle, session(gops=2))
    await playlist_with(service, 1)
    text = await service.playlist(KEY, query="key=viewer-1")
    assert text is not None
    assert [s.uri for s in complete(m3u8.loads(text))] == [f"{handle.token}-0.{ext()}?key=viewer-1"]


async def test_playlist_keeps_the_window_and_a_few_segments_behind_it(serve: Serve) -> None:
    engine, service = await serve(HlsSettings(segment_seconds=2.0, window=3))
    handle = await engine.start_publish(KEY)
    await service.start(KEY)
    await segmenting(engine)
    publish_all(handle, session(gops=10))  # 9 segments complete while live
    listed = await playlist_with(service, 3)
    await eventually(lambda: service.segment(KEY, f"{handle.token}-8.{ext()}") is not None)
    listed = await playlist_with(service, 3)
    assert listed.media_sequence == 6
    assert [s.uri for s in complete(listed)] == [f"{handle.token}-{n}.{ext()}" for n in (6, 7, 8)]
    for n in (3, 4, 5):  # out of the playlist, still served to players that fetch late
        assert service.segment(KEY, f"{handle.token}-{n}.{ext()}") is not None
    for n in (0, 1, 2):
        assert service.segment(KEY, f"{handle.token}-{n}.{ext()}") is None


async def test_playlist_continues_across_a_republish_with_a_discontinuity(
        serve: Serve) -> None:
    engine, service = await serve()
    first = await engine.start_publish(KEY)
    await service.start(KEY)
    await segmenting(engine)
    publish_all(first, session(gops=3))
    await engine.end_publish(KEY)
    await playlist_with(service, 3, ended=True)

    second = await engine.start_publish(KEY)  # the publisher reconnects; timestamps restart
    await segmenting(engine)  # followed without a new playlist request
    publish_all(second, session(gops=3))
    live = await playlist_with(service, 5)
    assert [s.uri for s in complete(live)] == (
        [f"{first.token}-{n}.{ext()}" for n in (0, 1, 2)]
        + [f"{second.token}-{n}.{ext()}" for n in (3, 4)])
    assert [s.discontinuity for s in complete(live)] == [False, False, False, True, False]
    assert live.media_sequence == 0 and live.discontinuity_sequence == 0
    assert "#EXT-X-DISCONTINUITY\n" in live.dumps()

    await engine.end_publish(KEY)
    ended = await playlist_with(service, 6, ended=True)
    assert complete(ended)[-1].uri == f"{second.token}-5.{ext()}"


async def test_linger_sweep_forgets_a_key_that_ended(serve: Serve) -> None:
    engine, service = await serve(HlsSettings(segment_seconds=2.0, linger=5.0))
    handle = await engine.start_publish(KEY)
    await service.start(KEY)
    await segmenting(engine)
    publish_all(handle, session(gops=2))
    await engine.end_publish(KEY)
    await playlist_with(service, 2, ended=True)
    uri = f"{handle.token}-0.{ext()}"

    service.sweep(now=time.monotonic() + 1.0)  # within linger: kept
    assert service.segment(KEY, uri) is not None
    assert await service.playlist(KEY) is not None

    service.sweep(now=time.monotonic() + 6.0)  # linger passed without a request: forgotten
    assert service.segment(KEY, uri) is None
    assert await service.playlist(KEY) is None


async def test_linger_sweep_stops_an_idle_segmenter_of_a_live_stream(serve: Serve) -> None:
    engine, service = await serve(HlsSettings(segment_seconds=2.0, linger=5.0))
    handle = await engine.start_publish(KEY)
    await service.start(KEY)
    await segmenting(engine)
    publish_all(handle, session(gops=2))
    await playlist_with(service, 1)
    stream = engine.stream(KEY)
    assert stream is not None

    service.sweep(now=time.monotonic() + 6.0)
    await eventually(lambda: not stream.subscribers)  # the segmenter left the stream
    service.sweep(now=time.monotonic() + 6.0)
    assert service.segment(KEY, f"{handle.token}-0.{ext()}") is None, "and the key is forgotten"
    assert engine.stream(KEY) is stream, "the publish itself goes on"


async def test_segmenting_on_publish_starts_without_a_request_and_survives_idle_sweeps(
        serve: Serve) -> None:
    engine, service = await serve(HlsSettings(segment_seconds=2.0, on_publish=True,
                                              linger=5.0))
    handle = await engine.start_publish(KEY)
    await segmenting(engine)
    publish_all(handle, session(gops=3))
    await eventually(lambda: service.segment(KEY, f"{handle.token}-1.{ext()}") is not None)

    service.sweep(now=time.monotonic() + 60.0)
    stream = engine.stream(KEY)
    assert stream is not None and len(stream.subscribers) == 1, "sticky: still segmenting"
    assert service.segment(KEY, f"{handle.token}-0.{ext()}") is not None


async def test_publish_of_a_key_nobody_watches_starts_no_segmenter(serve: Serve) -> None:
    engine, service = await serve()  # on_publish is off: segmenters start on request
    watched, unwatched = StreamKey("live", "watched"), StreamKey("live", "unwatched")
    await engine.start_publish(watched)
    await service.start(watched)
    await engine.end_publish(watched)
    await eventually(lambda: not any(s.subscribers for s in engine.streams()))

    await engine.start_publish(unwatched)
    await engine.start_publish(watched)  # published after: its segmenter starts later
    await segmenting(engine, watched)
    stream = engine.stream(unwatched)
    assert stream is not None and not stream.subscribers


async def test_concurrent_first_requests_share_one_segmenter(serve: Serve) -> None:
    engine, service = await serve()
    handle = await engine.start_publish(KEY)
    requests = [asyncio.create_task(service.playlist(KEY)) for _ in range(3)]
    await segmenting(engine)
    publish_all(handle, session(gops=2))
    texts = await asyncio.wait_for(asyncio.gather(*requests), 5)
    assert texts[0] is not None and texts.count(texts[0]) == 3
    stream = engine.stream(KEY)
    assert stream is not None and len(stream.subscribers) == 1


async def test_relayed_stream_whose_origin_restarted_its_timeline_starts_a_fresh_window(
        serve: Serve) -> None:
    engine, service = await serve()

    def relayed(session_id: int, sequences: list[int]) -> list[Frame]:
        """Frames as a relay delivers them: already stamped by the origin's timeline."""
        frames = session(gops=len(sequences))
        marks = {n: SegmentMark(seq, 0, n * GOP_MS, session_id)
                 for n, seq in enumerate(sequences)}
        return [f if f.config else Frame(f.kind, f.timestamp, f.payload, keyframe=f.keyframe,
                                         mark=marks[f.timestamp // GOP_MS])
                for f in frames]

    first = await engine.start_publish(KEY, protocol="upstream")
    await service.start(KEY)
    await segmenting(engine)
    publish_all(first, relayed(111, [10, 11, 12]))
    await engine.end_publish(KEY)
    before = await playlist_with(service, 3, ended=True)
    assert before.media_sequence == 10

    second = await engine.start_publish(KEY, protocol="upstream")
    await segmenting(engine)
    publish_all(second, relayed(222, [0, 1, 2]))
    after = await playlist_with(service, 2)
    assert after.media_sequence == 0
    assert [s.uri for s in complete(after)] == [f"222-0.{ext()}", f"222-1.{ext()}"]
    assert service.segment(KEY, f"111-12.{ext()}") is None, "the old window is gone"


async def test_unknown_keys_have_no_playlist_and_no_segments(serve: Serve) -> None:
    engine, service = await serve()
    started = time.monotonic()
    assert await service.playlist(StreamKey("live", "nobody")) is None
    assert time.monotonic() - started < 1.0, "no wait for a key that is not live"
    assert service.segment(StreamKey("live", "nobody"), f"1-0.{ext()}") is None
    await engine.start_publish(KEY)
    assert service.segment(KEY, f"1-0.{ext()}") is None, "live but never requested: nothing kept"


async def test_request_for_a_stream_without_video_returns_none_when_it_ends(
        serve: Serve) -> None:
    engine, service = await serve(HlsSettings(segment_seconds=0.1))  # waits 4.3 s at most
    handle = await engine.start_publish(KEY)
    request = asyncio.create_task(service.playlist(KEY))
    await segmenting(engine)
    publish_all(handle, [make_frame(FrameKind.AUDIO, 0, AAC_CONFIG)]
                + [audio(ts, ts) for ts in range(0, 3000, 23)])
    await engine.end_publish(KEY)  # the end releases the waiting request at once
    assert await asyncio.wait_for(request, 5) is None


async def test_run_returns_on_shutdown_and_stops_segmenters() -> None:
    service = new_service(HlsSettings(segment_seconds=2.0, linger=3.0))
    engine = new_engine(service)
    shutdown = ShutdownToken()
    runner = asyncio.create_task(service.run(engine, shutdown))
    await eventually(lambda: service.registry is engine)
    handle = await engine.start_publish(KEY)
    await service.start(KEY)
    await segmenting(engine)
    publish_all(handle, session(gops=2))
    await playlist_with(service, 1)

    shutdown.cancel()
    await engine.end_publish(KEY, "shutdown")  # the node ends every stream on shutdown
    await asyncio.wait_for(runner, 5)
    ended = await playlist_with(service, 2, ended=True)
    assert complete(ended)[-1].uri == f"{handle.token}-1.{ext()}"


@pytest.mark.parametrize("gops", [1, 2])
async def test_short_publish_is_listed_whole_once_it_ends(gops: int, serve: Serve) -> None:
    engine, service = await serve()
    handle = await engine.start_publish(KEY)
    await service.start(KEY)
    await segmenting(engine)
    publish_all(handle, session(gops=gops))
    await engine.end_publish(KEY)
    ended = await playlist_with(service, gops, ended=True)
    assert [s.duration for s in complete(ended)] == [2.0] * gops


def test_hls_viewers_are_clients_that_polled_within_the_window() -> None:
    service = new_service(HlsSettings(segment_seconds=2.0))  # window: 3 * 2 + 2 = 8 s
    other = StreamKey("live", "other")
    service.note_client(KEY, "10.0.0.1|hls.js", now=100.0)
    service.note_client(KEY, "10.0.0.2|hls.js", now=101.0)
    service.note_client(KEY, "10.0.0.1|hls.js", now=103.0)  # the same player polls again
    service.note_client(other, "10.0.0.1|hls.js", now=104.0)
    assert service.viewers(now=105.0) == {KEY: 2, other: 1}
    assert service.viewers(now=109.5) == {KEY: 1, other: 1}, "10.0.0.2 stopped polling"
    assert service.viewers(now=200.0) == {}


async def test_a_playlist_request_for_a_name_nobody_publishes_is_no_viewer(serve: Serve) -> None:
    _engine, service = await serve()
    assert await service.playlist(StreamKey("live", "made-up"), client="10.0.0.9|curl") is None
    assert service.viewers() == {}
