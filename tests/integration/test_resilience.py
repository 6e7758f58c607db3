"""Faults an operator meets: an origin killed or partitioned while it publishes, a reconnect
storm, a long publish that ends cleanly, a port already taken."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from arcly.media import flv
from tests.support.flv_reader import HttpFlvReader
from tests.support.processes import REPO, FfmpegPublisher, Node, RedisServer, retry_publish
from tests.support.rtmp_client import RtmpClient
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration
NodeFactory = Callable[..., Node]
ENV = {"ARCLY_RELAY_TOKEN": "t"}


def cluster(node_factory: NodeFactory, redis: RedisServer) -> tuple[Node, Node, Node]:
    make = [("o1", "origin"), ("o2", "origin"), ("e1", "edge")]
    return tuple(node_factory("--redis-url", redis.url, "--node-id", name, "--drain-timeout",
                              "1", role=role, env=ENV) for name, role in make)  # type: ignore[return-value]


async def watch_video(edge: Node, key: str, stop: asyncio.Event) -> tuple[list[float], int]:
    """An HTTP-FLV viewer and an RTMP viewer on ``edge`` until ``stop``: the arrival times
    of the HTTP-FLV viewer's video frames, and how many video frames the RTMP viewer got."""
    app, name = key.split("/")
    reader = await HttpFlvReader.open(edge.http, f"/{key}.flv")
    await reader.read_header()
    rtmp = await RtmpClient.connect("127.0.0.1", edge.rtmp, app)
    assert (await rtmp.play(name)).code == "NetStream.Play.Start"
    arrivals: list[float] = []
    rtmp_frames = 0

    async def http_flv() -> None:
        while not stop.is_set():
            tag = await reader.next_tag(15)
            if tag.tag_type == flv.TAG_VIDEO and not flv.is_video_config(tag.body):
                arrivals.append(time.monotonic())

    async def rtmp_viewer() -> None:
        nonlocal rtmp_frames
        while not stop.is_set():
            message = await rtmp.read_message(15)
            if message.type_id == 9:
                rtmp_frames += 1

    try:
        await asyncio.gather(http_flv(), rtmp_viewer())
    finally:
        await reader.close()
        await rtmp.close()
    return arrivals, rtmp_frames


def longest_gap(arrivals: list[float], after: float) -> float:
    times = [t for t in arrivals if t >= after - 1.0]
    return max(b - a for a, b in itertools.pairwise(times))


def test_killing_the_owning_origin_costs_viewers_at_most_two_seconds(
        node_factory: NodeFactory, redis_server: RedisServer, ffmpeg: str,
        source_flv: Path) -> None:
    o1, o2, edge = cluster(node_factory, redis_server)
    first = FfmpegPublisher(ffmpeg, source_flv, f"rtmp://127.0.0.1:{o1.rtmp}/live/fo")
    second: list[FfmpegPublisher] = []
    try:
        o1.wait_for_stream("live/fo", frames=8)

        async def scenario() -> tuple[list[float], int, float]:
            stop = asyncio.Event()
            viewers = asyncio.create_task(watch_video(edge, "live/fo", stop))
            await asyncio.sleep(2.0)  # watching
            killed = time.monotonic()
            os.kill(o1.pid, signal.SIGKILL)  # our own process, by pid
            # The broadcaster reconnects to the other origin, retrying every 250 ms.
            second.append(await asyncio.to_thread(retry_publish, ffmpeg, source_flv, o2,
                                                  "live/fo", 15))
            await asyncio.sleep(3.0)  # and watching again
            stop.set()
            arrivals, rtmp_frames = await viewers
            return arrivals, rtmp_frames, killed

        arrivals, rtmp_frames, killed = asyncio.run(scenario())
    finally:
        first.stop()
        for publisher in second:
            publisher.stop()
    gap = longest_gap(arrivals, killed)
    print(f"\nfailover: longest gap between video frames at an edge viewer: {gap:.2f} s")
    assert gap <= 2.0, f"viewers waited {gap:.2f} s for the new origin"
    assert arrivals[-1] > killed + 2.0 and rtmp_frames > 100, "both viewers kept watching"
    assert "relay gave up" not in edge.log_text()


def test_a_partitioned_origin_is_replaced_and_then_feeds_nobody(
        node_factory: NodeFactory, redis_server: RedisServer, ffmpeg: str,
        source_flv: Path) -> None:
    o1, o2, edge = cluster(node_factory, redis_server)
    first = FfmpegPublisher(ffmpeg, source_flv, f"rtmp://127.0.0.1:{o1.rtmp}/live/part")
    second: list[FfmpegPublisher] = []
    try:
        o1.wait_for_stream("live/part", frames=8)

        async def scenario() -> tuple[list[float], float]:
            stop = asyncio.Event()
            viewers = asyncio.create_task(watch_video(edge, "live/part", stop))
            await asyncio.sleep(1.5)
            stopped = time.monotonic()
            os.kill(o1.pid, signal.SIGSTOP)  # o1 freezes: its connections stay open
            try:
                second.append(await asyncio.to_thread(retry_publish, ffmpeg, source_flv, o2,
                                                      "live/part", 15))
                await asyncio.sleep(max(0.0, stopped + 5.0 - time.monotonic()))
            finally:
                os.kill(o1.pid, signal.SIGCONT)
            # o1 wakes up past its session: it must end its publisher and feed nobody.
            await asyncio.to_thread(o1.wait_for_log, r"registry session lost", 10)
            await asyncio.sleep(2.0)
            stop.set()
            arrivals, _ = await viewers
            return arrivals, stopped

        arrivals, stopped = asyncio.run(scenario())
        ended = o1.wait_for_log(r"publish end stream=live/part protocol=rtmp")
        # Whichever o1 learns first: its session lapsed, or o2's claim (the events channel).
        assert "reason='session lost'" in ended or "reason='ownership lost'" in ended
        streams = api(o1, "/api/v1/streams")["streams"]
        assert not any(s["key"] == "live/part" for s in streams), "o1 feeds no edge"
        detail = api(edge, "/api/v1/streams/live/part")
        assert detail["upstream"]["origin"] == "o2"
    finally:
        first.stop()
        for publisher in second:
            publisher.stop()
    gap = longest_gap(arrivals, stopped)
    print(f"\npartition: longest gap at the edge viewer while o1 was stopped: {gap:.2f} s")
    assert arrivals[-1] > stopped + 4.0, "the viewer kept watching, from o2"
    assert gap <= 3.0


def api(node: Node, path: str) -> dict:  # type: ignore[type-arg]
    import json

    with urllib.request.urlopen(f"http://127.0.0.1:{node.http}{path}", timeout=10) as resp:
        return json.load(resp)  # type: ignore[no-any-return]


def test_a_reconnect_storm_is_accepted_without_syn_retransmissions(
        node_factory: NodeFactory) -> None:
    node = node_factory("--max-connections-per-ip", "5000", "--max-connections", "5000")
    slowest, slow, sockets = 0.0, 0, []
    started = time.monotonic()
    try:
        for _ in range(2000):  # an edge died: its viewers come back at once
            began = time.monotonic()
            sock = socket.create_connection(("127.0.0.1", node.rtmp), timeout=5)
            took = time.monotonic() - began
            slowest, slow = max(slowest, took), slow + (took > 0.2)
            sockets.append(sock)
        elapsed = time.monotonic() - started
    finally:
        for sock in sockets:
            sock.close()
    print(f"\n2000 connects in {elapsed:.2f} s; slowest {slowest * 1000:.1f} ms; "
          f"over 200 ms: {slow}")
    assert slow == 0, f"{slow} connects waited for a SYN retransmission"


def test_a_long_publish_unpublishes_cleanly(node: Node, ffmpeg: str, source_flv: Path) -> None:
    """Longer than the command timeout (10 s), then a normal end: no timeout, no broken pipe."""
    result = subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1",
         "-i", str(source_flv), "-t", "12", "-c", "copy", "-f", "flv",
         f"rtmp://127.0.0.1:{node.rtmp}/live/long"], capture_output=True, text=True,
        timeout=60)
    node.wait_for_log(r"publish end stream=live/long .*reason='unpublished'")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    time.sleep(0.5)  # the client's goodbye and close arrive after the unpublish
    assert "rtmp timeout" not in node.log_text()


def test_a_taken_port_is_one_line_and_exit_code_two(node: Node) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "arcly", "serve", "--rtmp-listen", f"127.0.0.1:{node.rtmp}",
         "--http-listen", "127.0.0.1:0", "--srt-listen", "off"], capture_output=True,
        text=True, timeout=30,
        cwd=REPO)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if f"127.0.0.1:{node.rtmp}" in line]
    assert len(lines) == 1 and "--rtmp-listen" in lines[0] and "address already in use" in \
        lines[0], result.stderr
    wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{node.http}/healthz",
                                              timeout=5).status == 200,
               message="the first node is unharmed")
