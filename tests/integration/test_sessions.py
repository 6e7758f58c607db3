"""Session behaviour against a real node: instant start, key ownership, end of stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from arcly.media import flv
from arcly.protocols.rtmp import chunk
from tests.conftest import GOP_SECONDS
from tests.support.flv_reader import HttpFlvReader, first_video_frames
from tests.support.media import load_tags
from tests.support.processes import FfmpegPublisher, Node
from tests.support.rtmp_client import RtmpClient

pytestmark = pytest.mark.integration


async def _first_video_frames_rtmp(port: int, key: str) -> tuple[float, list[bytes]]:
    app, name = key.split("/")
    client = await RtmpClient.connect("127.0.0.1", port, app)
    try:
        started = time.monotonic()
        status = await client.play(name)
        assert status.code == "NetStream.Play.Start"
        videos: list[bytes] = []
        first_at = 0.0
        while len(videos) < 2:
            msg = await client.read_message()
            if msg.type_id == chunk.VIDEO:
                videos.append(msg.payload)
                first_at = first_at or time.monotonic()
        return first_at - started, videos
    finally:
        await client.close()


@pytest.mark.parametrize("protocol", ["rtmp", "http-flv"])
def test_viewer_joining_mid_gop_starts_with_sequence_header_then_keyframe(
        protocol: str, node: Node, publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    publish(node, "live/gop")
    waits = []
    for delay in (0.7, 0.9, 1.3):  # three joins at different points of a 2 s GOP
        time.sleep(delay)
        probe = _first_video_frames_rtmp if protocol == "rtmp" else first_video_frames
        port = node.rtmp if protocol == "rtmp" else node.http
        waited, videos = asyncio.run(probe(port, "live/gop"))
        assert flv.is_video_config(videos[0]), "first video frame is the AVC sequence header"
        assert flv.is_video_keyframe(videos[1]) and not flv.is_video_config(videos[1]), \
            "first decodable frame is a keyframe"
        waits.append(waited)
    print(f"\n{protocol}: play request -> first video frame: "
          + ", ".join(f"{w * 1000:.1f} ms" for w in waits) + f" (GOP is {GOP_SECONDS} s)")
    # Without a GOP cache a viewer waits for the next keyframe: on average half a GOP.
    assert max(waits) < GOP_SECONDS / 2


def test_second_publisher_is_refused_and_first_is_untouched(
        node: Node, publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    first = publish(node, "live/taken")

    async def scenario() -> None:
        intruder = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
        status = await intruder.publish("taken")
        assert status.code == "NetStream.Publish.BadName"
        assert status.level == "error"
        with pytest.raises(EOFError):  # and the intruder's connection is closed
            while True:
                await intruder.read_message(5)
        # The first publisher still feeds viewers.
        _, videos = await first_video_frames(node.http, "live/taken")
        assert flv.is_video_keyframe(videos[1])

    asyncio.run(scenario())
    assert first.alive()
    node.wait_for_log(r"publish refused app=live name=taken .*NetStream.Publish.BadName")
    assert "publish end stream=live/taken" not in node.log_text()


def test_publisher_disconnect_ends_stream_for_viewers_and_frees_key(
        node: Node, source_flv: Path) -> None:
    tags = load_tags(source_flv)[:200]

    async def scenario() -> None:
        pub = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
        assert (await pub.publish("gone")).code == "NetStream.Publish.Start"
        for tag in tags[:100]:
            pub.send_media(tag.tag_type, tag.timestamp, tag.body)
        await pub.writer.drain()
        await asyncio.to_thread(node.wait_for_stream, "live/gone", 100)

        rtmp_viewer = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
        assert (await rtmp_viewer.play("gone")).code == "NetStream.Play.Start"
        flv_viewer = await HttpFlvReader.open(node.http, "/live/gone.flv")
        assert flv_viewer.status == 200
        await flv_viewer.read_header()

        await pub.close()  # the broadcaster goes away

        statuses, eof_seen = [], False
        try:
            while True:
                msg = await rtmp_viewer.read_message(10)
                if msg.type_id == chunk.USER_CONTROL and msg.payload[:2] == b"\x00\x01":
                    eof_seen = True
                status = rtmp_viewer.as_status(msg)
                if status:
                    statuses.append(status.code)
        except EOFError:
            pass
        assert eof_seen, "StreamEOF user control event"
        assert "NetStream.Play.UnpublishNotify" in statuses

        with pytest.raises(EOFError):  # the HTTP-FLV response ends
            while True:
                await flv_viewer.next_tag(10)
        await flv_viewer.close()

        again = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
        assert (await again.publish("gone")).code == "NetStream.Publish.Start"
        await again.close()

    asyncio.run(scenario())
    for protocol in ("rtmp", "http-flv"):
        node.wait_for_log(rf"play end stream=live/gone protocol={protocol} "
                          r".*reason='stream ended: publisher disconnected'")


def test_unknown_stream_is_not_found_over_rtmp_and_http(node: Node) -> None:
    async def scenario() -> None:
        viewer = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
        assert (await viewer.play("nothing")).code == "NetStream.Play.StreamNotFound"
        await viewer.close()
        reader = await HttpFlvReader.open(node.http, "/live/nothing.flv")
        assert reader.status == 404
        await reader.close()

    asyncio.run(scenario())


def test_idle_publisher_is_reaped_and_disconnected(
        node_factory: Callable[..., Node], source_flv: Path) -> None:
    node = node_factory("--idle-timeout", "1")
    tags = load_tags(source_flv)[:20]

    async def scenario() -> None:
        pub = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
        assert (await pub.publish("quiet")).code == "NetStream.Publish.Start"
        for tag in tags:
            pub.send_media(tag.tag_type, tag.timestamp, tag.body)
        viewer = await HttpFlvReader.open(node.http, "/live/quiet.flv")
        await viewer.read_header()
        with pytest.raises(EOFError):  # the publisher goes quiet; the reaper ends the stream
            while True:
                await viewer.next_tag(10)
        with pytest.raises(EOFError):  # and closes the silent publisher's connection
            while True:
                await pub.read_message(10)
        await viewer.close()

    asyncio.run(scenario())
    node.wait_for_log(r"stream reaped stream=live/quiet reason=idle")
    node.wait_for_log(r"publish end stream=live/quiet protocol=rtmp .*reason='idle'")
