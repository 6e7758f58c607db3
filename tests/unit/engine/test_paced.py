"""Paced subscriptions: a cursor into the stream's shared frame log instead of per-frame pushes,
with the same guarantees as pushed ones (start burst, order, skip to keyframe, slow-viewer cut,
nothing published before the end is lost, counters)."""

from __future__ import annotations

from arcly.engine import Engine, EngineConfig, Frame, FrameKind, StreamKey

from .test_engine import Recorder, avc_config, video

KEY = StreamKey("live", "paced")


def audio(ts: int) -> Frame:
    return Frame(FrameKind.AUDIO, ts, b"\xaf\x01" + bytes(50))


async def test_paced_viewer_gets_burst_then_log_frames_in_order_without_pushes() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    handle.publish_frame(avc_config())
    handle.publish_frame(video(0, key=True))
    viewer = await engine.subscribe(KEY)
    pushed = await engine.subscribe(KEY)
    burst = await viewer.next_batch()
    assert [f.config for f in burst] == [True, False]
    viewer.pace()
    stream = engine.stream(KEY)
    assert stream is not None and viewer.paced and viewer in stream.subscribers
    frames = [video(40), audio(50), video(80)]
    for frame in frames:
        handle.publish_frame(frame)
    assert viewer.take() == frames, "paced viewers read the log, in order, same objects"
    assert viewer.take() == []
    # the pushed subscriber next to it is untouched
    assert [f.timestamp for f in (await pushed.next_batch())[2:]] == [40, 50, 80]


async def test_viewers_in_step_get_equal_spans_and_the_log_is_trimmed_behind_them() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    handle.publish_frame(video(0, key=True))
    viewers = [await engine.subscribe(KEY) for _ in range(3)]
    for v in viewers:
        await v.next_batch()
        v.pace()
    stream = engine.stream(KEY)
    assert stream is not None
    for round_ in range(100):
        handle.publish_frame(video(40 * round_ + 40))
        spans = {v.take_span() for v in viewers}
        assert len(spans) == 1, "viewers in step see the same span"
        (start, end), = spans
        assert [f.timestamp for f in stream.log.span(start, end)] == [40 * round_ + 40]
    assert len(stream.log.frames) <= stream.log.TRIM_EVERY, "read frames are not kept"
    assert stream.frames_out == 3 * (1 + 100) and stream.bytes_out == 3 * 101 * 102


async def test_paced_viewer_over_its_cap_skips_to_a_keyframe_with_configuration() -> None:
    observer = Recorder()
    engine = Engine(EngineConfig(viewer_backlog_frames=10, viewer_max_skips=100),
                    observer=observer)
    handle = await engine.start_publish(KEY)
    handle.publish_frame(avc_config())
    handle.publish_frame(video(0, key=True))
    slow = await engine.subscribe(KEY, peer="slow")
    fast = await engine.subscribe(KEY, peer="fast")
    for v in (slow, fast):
        await v.next_batch()
        v.pace()
    seen = []
    for ts in range(1, 105):  # the slow one reads nothing: its backlog passes the cap
        handle.publish_frame(video(ts, key=ts == 100))
        seen += [f.timestamp for f in fast.take()]
    assert seen == list(range(1, 105)), "a slow neighbour does not touch the fast viewer"
    stream = engine.stream(KEY)
    assert stream is not None and len(stream.log.frames) <= 10 + stream.log.TRIM_EVERY
    assert stream.log.base > 1, "frames past the cap were trimmed despite the slow viewer"
    assert slow.take_span() is None, "fallen behind: not in step any more"
    resumed = slow.take()
    assert resumed[0].config, "the current configuration comes first"
    assert resumed[1].timestamp == 100 and resumed[1].keyframe
    assert [f.timestamp for f in resumed[2:]] == list(range(101, 105))
    assert slow.dropped > 0 and ("skipped", "live/paced") in observer.events
    handle.publish_frame(video(200))
    assert slow.take_span() is not None, "back in step after the keyframe"


async def test_paced_viewer_that_keeps_falling_behind_is_cut() -> None:
    engine = Engine(EngineConfig(viewer_backlog_frames=5, viewer_max_skips=2))
    handle = await engine.start_publish(KEY)
    handle.publish_frame(video(0, key=True))
    slow = await engine.subscribe(KEY)
    await slow.next_batch()
    slow.pace()
    for burst in range(4):
        for ts in range(100):
            handle.publish_frame(video(1000 * burst + ts, key=ts % 10 == 0))
        slow.take()
        if slow.finished:
            break
    assert slow.finished and slow.close_reason == "slow viewer"
    assert slow.take() == []
    stream = engine.stream(KEY)
    assert stream is not None and slow not in stream.subscribers
    assert not stream.log.frames, "no paced subscriber left: the log is empty"


async def test_frames_published_before_the_end_still_reach_a_paced_viewer() -> None:
    engine = Engine()
    handle = await engine.start_publish(KEY)
    handle.publish_frame(video(0, key=True))
    viewer = await engine.subscribe(KEY)
    await viewer.next_batch()
    viewer.pace()
    handle.publish_frame(video(40))
    handle.publish_frame(video(80))
    await engine.end_publish(KEY, "publisher disconnected")
    assert viewer.finished
    assert [f.timestamp for f in viewer.take()] == [40, 80], "no frame lost at the end"
    assert viewer.take() == [] and viewer.take_span() is None
