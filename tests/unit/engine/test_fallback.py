"""Always-available streams in the kernel: a fallback feeds a key's stream while its publisher
is away; viewers stay, timestamps never go back, the timeline marks discontinuities, a
returning publisher takes over at its first keyframe."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from arcly.engine import (
    FALLBACK,
    CloseReason,
    Engine,
    EngineConfig,
    Frame,
    FrameKind,
    MediaSource,
    NullObserver,
    Splicer,
    StreamKey,
    StreamNotFound,
)

KEY = StreamKey("live", "cam")


def video(ts: int, key: bool = False) -> Frame:
    return Frame(FrameKind.VIDEO, ts, b"\x17\x01" if key else b"\x27\x01", keyframe=key)


def audio(ts: int) -> Frame:
    return Frame(FrameKind.AUDIO, ts, b"\xaf\x01")


def config(tag: bytes) -> Frame:
    return Frame(FrameKind.VIDEO, 0, b"\x17\x00" + tag, keyframe=True, config=True)


class Slate:
    """A fallback source: config, then a keyframe every 10 frames, 40 ms apart, from 0."""

    def __init__(self, frames: int = 1000) -> None:
        self.left = frames
        self.ts = 0
        self.closed = False
        self.sent_config = False

    async def next_frame(self) -> Frame | None:
        await asyncio.sleep(0.001)
        if not self.sent_config:
            self.sent_config = True
            return config(b"slate")
        if self.left <= 0:
            return None
        self.left -= 1
        frame = video(self.ts, key=self.ts % 400 == 0)
        self.ts += 40
        return frame

    async def aclose(self) -> None:
        self.closed = True


class Fallbacks:
    def __init__(self, on_demand: bool = False) -> None:
        self.sources: list[Slate] = []
        self.on_demand = on_demand

    def fallback_for(self, key: StreamKey, *, on_demand: bool) -> MediaSource | None:
        if key.app != "live" or (on_demand and not self.on_demand):
            return None
        self.sources.append(Slate())
        return self.sources[-1]


class Starts(NullObserver):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_publish_start(self, key: StreamKey, protocol: str, peer: str) -> None:
        self.events.append(f"start {protocol}")

    def on_publish_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        self.events.append(f"end {protocol}")


async def drain(sub: object, until: int, timeout: float = 5.0) -> list[Frame]:
    frames: list[Frame] = []
    async with asyncio.timeout(timeout):
        while len(frames) < until:
            batch = await sub.next_batch()  # type: ignore[attr-defined]
            assert batch, "the subscription ended"
            frames += batch
    return frames


async def test_viewers_stay_through_the_fallback_and_switch_back_at_a_keyframe() -> None:
    observer = Starts()
    fallbacks = Fallbacks()
    engine = Engine(EngineConfig(segment_target=0.4), observer=observer, fallback=fallbacks)
    handle = await engine.start_publish(KEY, protocol="rtmp")
    handle.publish_frame(config(b"cam"))
    for ts in range(0, 800, 40):
        handle.publish_frame(video(ts, key=ts % 400 == 0))
    viewer = await engine.subscribe(KEY)
    recorder = await engine.subscribe(KEY, viewer=False, follows_fallback=False)
    await drain(viewer, 1)

    assert await engine.end_publish(KEY, "publisher disconnected")
    assert handle.ended.cancelled and not handle.publish_frame(video(800))
    assert engine.stream(KEY) is not None and engine.stream(KEY).protocol == FALLBACK
    assert recorder.finished or not await recorder.next_batch()
    slate = await drain(viewer, 30)
    assert any(f.config and f.payload.endswith(b"slate") for f in slate)

    back = await engine.start_publish(KEY, protocol="rtmp", peer="again")
    back.publish_frame(config(b"cam2"))
    back.publish_frame(video(0))  # not a keyframe: the switch waits for one
    back.publish_frame(video(40, key=True))
    for ts in range(80, 400, 40):
        back.publish_frame(video(ts))
    after = await drain(viewer, 8)
    seen = [f for f in [*slate, *after] if not f.config]
    assert all(b.timestamp > a.timestamp for a, b in itertools.pairwise(seen))
    switched = next(i for i, f in enumerate(after) if f.payload.endswith(b"cam2"))
    assert after[switched + 1].keyframe and after[switched + 1].payload == b"\x17\x01"
    await asyncio.sleep(0.01)  # the fallback's task winds down
    assert fallbacks.sources[0].closed
    assert observer.events == ["start rtmp", "end rtmp", "start rtmp"]
    # The timeline marked a discontinuity at both switches.
    marks = {f.mark.discontinuity for f in [*slate, *after] if f.mark is not None}
    assert len(marks) >= 3

    await engine.end_publish(KEY, CloseReason.SHUTDOWN)
    assert engine.stream(KEY) is None and not await viewer.next_batch()


async def test_final_reasons_and_apps_without_a_fallback_end_the_stream() -> None:
    engine = Engine(fallback=Fallbacks())
    for key, reason in ((StreamKey("other", "cam"), "publisher disconnected"),
                        (KEY, CloseReason.SHUTDOWN), (KEY, CloseReason.OWNERSHIP_LOST)):
        await engine.start_publish(key)
        viewer = await engine.subscribe(key)
        await engine.end_publish(key, reason)
        assert engine.stream(key) is None and viewer.finished


async def test_on_demand_fallback_opens_an_unpublished_key_and_closes_without_viewers() -> None:
    fallbacks = Fallbacks(on_demand=True)
    engine = Engine(EngineConfig(upstream_linger=0.2, max_on_demand_fallbacks=1),
                    fallback=fallbacks)
    viewers = await asyncio.gather(*(engine.subscribe(KEY) for _ in range(3)))
    assert len(fallbacks.sources) == 1  # one stream, however many ask at once
    await drain(viewers[0], 5)
    with pytest.raises(StreamNotFound):
        await engine.subscribe(StreamKey("other", "cam"))
    for viewer in viewers:
        viewer.close()
    async with asyncio.timeout(5):
        while engine.stream(KEY) is not None:  # noqa: ASYNC110 (the engine has no event)
            await asyncio.sleep(0.05)
    assert fallbacks.sources[0].closed
    nxt = await engine.subscribe(StreamKey("live", "next"))  # the one place is free again
    nxt.close()
    await engine.end_publish(StreamKey("live", "next"), CloseReason.SHUTDOWN)


async def test_on_demand_fallbacks_are_capped_and_a_published_key_frees_its_place(
        caplog: pytest.LogCaptureFixture) -> None:
    def key(name: str) -> StreamKey:
        return StreamKey("live", name)

    fallbacks = Fallbacks(on_demand=True)
    now = [100.0]
    engine = Engine(EngineConfig(max_on_demand_fallbacks=2), fallback=fallbacks,
                    clock=lambda: now[0])
    viewers = list(await asyncio.gather(*(engine.subscribe(key(n)) for n in ("a", "b"))))
    for name in ("c", "d"):  # a client making up names gets nowhere
        with pytest.raises(StreamNotFound):
            await engine.subscribe(key(name))
    assert len(fallbacks.sources) == 4 and all(s.closed for s in fallbacks.sources[2:])
    hits = [r.getMessage() for r in caplog.records if "limit hit" in r.getMessage()]
    assert hits == ["limit hit limit=max_on_demand_fallbacks stream=live/c running=2 limit=2 "
                    "refused_total=1"], "a line a second, not one per ask"
    now[0] += 1.0
    with pytest.raises(StreamNotFound):
        await engine.subscribe(key("e"))
    assert "refused_total=3" in caplog.records[-1].getMessage()
    counted: list[tuple[str, str]] = []
    engine.limit_hit = lambda limit, detail: counted.append((limit, detail))  # a node's
    with pytest.raises(StreamNotFound):
        await engine.subscribe(key("e"))
    assert counted == [("max_on_demand_fallbacks", "stream=live/e running=2 limit=2")]
    await engine.start_publish(key("a"), protocol="rtmp")  # a publisher adopts live/a ...
    viewers.append(await engine.subscribe(key("c")))  # ... and its place is free
    with pytest.raises(StreamNotFound):
        await engine.subscribe(key("d"))
    await engine.end_publish(key("b"), CloseReason.SHUTDOWN)  # an on-demand stream ends
    viewers.append(await engine.subscribe(key("d")))
    assert engine.stream(key("d")) is not None and engine.stream(key("d")).protocol == FALLBACK
    for viewer in viewers:
        viewer.close()
    for name in ("a", "c", "d"):
        await engine.end_publish(key(name), CloseReason.SHUTDOWN)


def test_the_splicer_rebases_loops_and_keeps_tracks_monotonic() -> None:
    cuts: list[bool] = []
    splicer = Splicer(cuts.append, last_sent={FrameKind.VIDEO: 4967, FrameKind.AUDIO: 5000})
    splicer.cut(rebase_jumps=True)
    assert splicer.fit(config(b"a")) == ()  # held until the keyframe
    assert splicer.fit(audio(90)) == ()  # before the video keyframe: dropped
    out = splicer.fit(video(100, key=True))
    # One step after the newest track, the offset rounded up to the 100 ms grid (frame-rate
    # phase kept): 5000 + 33 - 100 -> 5000.
    assert [f.timestamp for f in out] == [5100, 5100] and out[0].config and cuts == [True]
    assert [f.timestamp for f in splicer.fit(video(140))] == [5140]
    assert [f.timestamp for f in splicer.fit(audio(120))] == [5120]
    looped = splicer.fit(video(0, key=True))  # the file looped: rebased, a new cut
    assert [f.timestamp for f in looped] == [5200] and cuts == [True, True]
    # A publisher's own timestamps keep their steps (one offset from its cut) ...
    splicer.cut(rebase_jumps=False)
    assert [f.timestamp for f in splicer.fit(video(0, key=True))] == [5300]
    assert [f.timestamp for f in splicer.fit(video(60_000))] == [65_300]
    assert splicer.fit(audio(59_000)) != ()  # audio trailing video a little: kept
    # ... until its clock goes back (an encoder reset): rebased, time goes on.
    assert [f.timestamp for f in splicer.fit(video(10))] == [65_410]


def test_a_cut_that_starts_on_audio_lets_video_in_only_at_a_keyframe() -> None:
    cuts: list[bool] = []
    splicer = Splicer(cuts.append, last_sent={FrameKind.AUDIO: 1000})
    splicer.cut(rebase_jumps=False)
    assert splicer.fit(config(b"v")) == ()
    for ts in range(0, 2000, 20):  # two seconds of audio and no video keyframe
        assert splicer.fit(audio(ts)) == ()
    started = splicer.fit(audio(2000))
    assert [f.kind for f in started] == [FrameKind.AUDIO] and cuts == [False]
    assert splicer.fit(video(2010)) == ()  # not a keyframe: video still waits
    joined = splicer.fit(video(2040, key=True))
    assert [(f.config, f.keyframe) for f in joined] == [(True, True), (False, True)]
    assert joined[1].timestamp > started[0].timestamp


async def test_a_reconnecting_publisher_replaces_its_silent_self_on_a_fallback_app() -> None:
    now = [0.0]
    engine = Engine(EngineConfig(stale_publisher=2.0), fallback=Fallbacks(),
                    clock=lambda: now[0])
    first = await engine.start_publish(KEY, protocol="rtmp", peer="old")
    first.publish_frame(video(0, key=True))
    now[0] = 5.0  # the old connection went quiet (half-open after a network drop)
    again = await engine.start_publish(KEY, protocol="rtmp", peer="new")
    assert first.ended.cancelled and not again.ended.cancelled
    assert first.end_reason == CloseReason.REPLACED
    again.publish_frame(video(40, key=True))
    assert engine.stream(KEY) is not None and engine.stream(KEY).peer == "new"


async def test_an_adopter_that_leaves_before_its_keyframe_is_never_announced() -> None:
    observer = Starts()
    engine = Engine(observer=observer, fallback=Fallbacks())
    handle = await engine.start_publish(KEY, protocol="rtmp")
    handle.publish_frame(video(0, key=True))
    await engine.end_publish(KEY, "publisher disconnected")
    back = await engine.start_publish(KEY, protocol="rtmp")
    back.publish_frame(video(40))  # no keyframe yet
    await engine.end_publish(KEY, "publisher disconnected")
    assert back.end_reason == "publisher disconnected"
    await engine.end_publish(KEY, CloseReason.SHUTDOWN)
    assert observer.events == ["start rtmp", "end rtmp"]  # balanced
