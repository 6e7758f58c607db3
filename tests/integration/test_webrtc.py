"""WebRTC on real nodes with aiortc clients: refusals, session cleanup, a vanished viewer,
added latency. (The browser tests are in ``test_webrtc_browser``.)"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCRtpReceiver

from arcly.media import codecs, flv
from tests.support import webrtc
from tests.support.media import load_tags
from tests.support.processes import REPO, FfmpegPublisher, Node
from tests.support.rtmp_client import RtmpClient
from tests.support.wait import eventually, wait_until

pytestmark = pytest.mark.integration

WEBRTC = ("--webrtc-advertise-ip", "127.0.0.1")
NodeFactory = Callable[..., Node]


def _bframes_source(ffmpeg: str, out: Path) -> Path:
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "testsrc2=size=320x240:rate=25", "-t", "4", "-c:v", "libx264", "-preset",
         "veryfast", "-bf", "2", "-g", "25", "-pix_fmt", "yuv420p", "-f", "flv", str(out)],
        check=True, timeout=60)
    return out


def test_refusals_carry_the_documented_status_and_never_hang(
        node_factory: NodeFactory, ffmpeg: str, source_flv: Path, tmp_path: Path,
        publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    auth = tmp_path / "auth.toml"
    auth.write_text('[default]\nprovider = "allow-all"\n\n[apps.keyed]\nprovider = "static"\n'
                    'play_keys = ["vk"]\npublish_keys = ["pk"]\n')
    node = node_factory(*WEBRTC, "--auth-config", str(auth))
    publish(node, "live/ok")
    keyed = FfmpegPublisher(ffmpeg, source_flv, f"rtmp://127.0.0.1:{node.rtmp}/keyed/cam?key=pk")
    bframes = FfmpegPublisher(ffmpeg, _bframes_source(ffmpeg, tmp_path / "bf.flv"),
                              f"rtmp://127.0.0.1:{node.rtmp}/live/bf")
    try:
        node.wait_for_stream("live/bf", frames=10)
        node.wait_for_stream("keyed/cam", frames=8)
        sdp = asyncio.run(webrtc.throwaway_offer())
        publish_sdp = asyncio.run(webrtc.throwaway_offer(direction="sendonly"))
        base = f"http://127.0.0.1:{node.http}"
        cases = [
            ("bad SDP", f"{base}/live/ok/whep", "v=0\r\nthis is not sdp\r\n", {}, 400),
            ("no media", f"{base}/live/ok/whep", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n"
             "t=0 0\r\n", {}, 400),
            ("not SDP", f"{base}/live/ok/whep", sdp, {"Content-Type": "text/plain"}, 415),
            ("unknown stream", f"{base}/live/nobody/whep", sdp, {}, 404),
            ("B-frames", f"{base}/live/bf/whep", sdp, {}, 422),
            ("missing key", f"{base}/keyed/cam/whep", sdp, {}, 401),
            ("wrong key", f"{base}/keyed/cam/whep?key=nope", sdp, {}, 403),
            ("wrong bearer", f"{base}/keyed/cam/whep", sdp,
             {"Authorization": "Bearer nope"}, 403),
            ("live key", f"{base}/live/ok/whip", publish_sdp, {}, 409),
            ("no such session", f"{base}/live/ok/whep/nothing", "", {}, 404),
        ]
        for what, url, body, headers, expected in cases:
            method = "DELETE" if what == "no such session" else "POST"
            status, answer_headers, text = webrtc.post(
                url, body, headers.pop("Content-Type", "application/sdp"), headers,
                method=method)
            print(f"{what}: {status} {text.strip()[:100]}")
            assert status == expected, (what, text)
            if status == 401:
                assert answer_headers.get("WWW-Authenticate", "").startswith("Bearer")
        # A right key (as a query, and as a WHIP-style bearer) is let in.
        # A session ends only for the credentials it was opened with (RFC 9725 §4.3).
        for headers, url, query in (({}, f"{base}/keyed/cam/whep?key=vk", "?key=vk"),
                                    ({"Authorization": "Bearer vk"}, f"{base}/keyed/cam/whep",
                                     "")):
            status, answer_headers, text = webrtc.post(url, sdp, headers=headers)
            assert status == 201, text
            assert text.startswith("v=0") and answer_headers["Content-Type"] == "application/sdp"
            location = base + answer_headers["Location"]
            assert webrtc.post(location + "?key=nope", "", method="DELETE")[0] == 403
            assert webrtc.post(location + query, "", headers=headers, method="DELETE")[0] == 200
        # Offers with more than one section of a kind (each would cost a receiver) are refused.
        doubled = sdp + sdp[sdp.index("m=video"):]
        assert webrtc.post(f"{base}/live/ok/whep", doubled)[0] == 400
        # CORS: a page on another origin may POST the offer and read Location.
        preflight = webrtc.post(f"{base}/live/ok/whep", "", method="OPTIONS")
        assert preflight[0] == 204
        assert "POST" in preflight[1]["Access-Control-Allow-Methods"]
        assert "Authorization" in preflight[1]["Access-Control-Allow-Headers"]
        assert preflight[1]["Accept-Post"] == "application/sdp"
        api_preflight = webrtc.post(f"{base}/api/v1/streams/live/ok", "", method="OPTIONS")
        assert "DELETE" not in api_preflight[1]["Access-Control-Allow-Methods"]
        assert node.proc.poll() is None
        assert node.api("/webrtc")["sessions"] == []
    finally:
        bframes.stop()
        keyed.stop()


def _udp_sockets(pid: int) -> int:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    udp = set()
    for table in ("udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            udp.add(line.split()[9])
    return len(inodes & udp)


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_a_hundred_sessions_leave_nothing_behind(
        node_factory: NodeFactory, publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    node = node_factory(*WEBRTC, "--webrtc-udp-ports", "41000-41063")
    publish(node, "live/many")
    base = f"http://127.0.0.1:{node.http}"

    def figures() -> dict[str, Any]:
        document = node.api("/node")
        return {"tasks": document["runtime"]["tasks"], "os_threads": _threads(node.pid),
                "threads": document["runtime"]["thread_kinds"], "udp": _udp_sockets(node.pid),
                "sessions": document["webrtc"]["sessions"],
                "transcoders": document["webrtc"]["audio_transcoders"]}

    async def rounds(count: int) -> list[int]:
        ports = []
        for _ in range(count):  # rounds of 10 concurrent sessions
            viewers = await asyncio.gather(*(webrtc.whep(base, "live/many") for _ in range(10)))
            await eventually(lambda vs=viewers: all(v.frames.get("video") for v in vs), 10,
                             message="a viewer got no video")
            ports += [int(v.pc.remoteDescription.sdp.split("a=candidate:")[1].split()[5])
                      for v in viewers]
            assert [await v.close() for v in viewers] == [200] * 10
        return ports

    baseline_udp = _udp_sockets(node.pid)  # the node's own (the SRT listener's)

    def settled() -> dict[str, Any] | None:
        now = figures()
        return now if now["sessions"] == 0 and now["transcoders"] == 0 and \
            now["udp"] == baseline_udp else None

    # Warm up: first-use allocations (codecs, SSL contexts, pools) and the allocators' working
    # size take ~150 sessions to level off (RSS then stays within ~2 MB per 100 sessions).
    asyncio.run(rounds(15))
    before = wait_until(settled, 20, message="warm-up sessions never ended")
    rss_before = node.rss_kib()
    ports = asyncio.run(rounds(10))
    assert all(41000 <= port <= 41063 for port in ports)

    def cleaned() -> dict[str, Any] | None:
        now = settled()  # and the sessions' tasks and threads ended too
        return now if now is not None and now["tasks"] <= before["tasks"] + 2 and \
            now["os_threads"] <= before["os_threads"] + 8 and set(now["threads"]) <= {
                "MainThread", "uvloop", "asyncio", "ThreadPoolExecutor", "srt"} else None

    after = wait_until(cleaned, 20, message="sessions, transcoders, UDP sockets, tasks or "
                                            "threads left behind")
    grown = node.rss_kib() - rss_before
    print(f"\n100 WHEP sessions: before {before}, after {after}, RSS {grown:+d} KiB "
          f"({grown / 100:.0f} KiB per session)")
    assert after["tasks"] <= before["tasks"] + 2
    # No per-session or per-stream thread is left (transcoders, aiortc's receivers); the
    # pools (asyncio's executor, libuv's resolver, FFmpeg's codec threads) are bounded.
    assert set(after["threads"]) <= {"MainThread", "uvloop", "asyncio", "ThreadPoolExecutor", "srt"}
    assert after["os_threads"] <= before["os_threads"] + 8
    assert grown < 8 * 1024


def test_a_viewer_that_vanishes_is_cleaned_up_within_the_consent_timeout(
        node_factory: NodeFactory, publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    node = node_factory(*WEBRTC, "--webrtc-consent-timeout", "4")
    publish(node, "live/gone")
    client = subprocess.Popen(
        [sys.executable, "-m", "tests.support.webrtc", f"http://127.0.0.1:{node.http}",
         "live/gone"], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
        assert len(node.api("/webrtc")["sessions"]) == 1
        os.killpg(client.pid, signal.SIGKILL)  # no DELETE, no DTLS close: just gone
        killed = time.monotonic()
        wait_until(lambda: not node.api("/webrtc")["sessions"], 15,
                   message="the vanished viewer's session stayed")
        took = time.monotonic() - killed
        print(f"\nvanished viewer cleaned up after {took:.1f} s (consent timeout 4 s)")
        assert took <= 4 + 3
        print(node.wait_for_log(r"webrtc whep end stream=live/gone "))
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
        client.wait(5)


def _slice_key(annexb: bytes) -> bytes:
    """What identifies a frame on both sides: its last NAL unit (the picture's slice)."""
    return hashlib.sha1(codecs.split_annexb(annexb)[-1]).digest()


async def _latency(node: Node, source: Path, seconds: float) -> list[float]:
    """Publish ``source`` in real time over RTMP while a WHEP client receives it; each live
    frame's time from its RTMP send to the arrival of its last RTP packet (ms).

    Frames are matched by content (their last NAL unit). aiortc's jitter buffer hands a frame
    over only when the next one starts, so the arrival is read off the RTP packets (the
    marker bit ends a frame), by the frame's RTP timestamp: aiortc numbers frames from the
    first one's timestamp."""
    tags = load_tags(source)
    sent: dict[bytes, float] = {}
    marked: dict[int, float] = {}  # RTP timestamp -> arrival of the frame's last packet
    publisher = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
    assert (await publisher.publish("lat")).code == "NetStream.Publish.Start"
    loop = asyncio.get_running_loop()
    original = RTCRtpReceiver._handle_rtp_packet

    async def handle(receiver: RTCRtpReceiver, packet: Any, arrival_time_ms: int) -> None:
        if packet.marker and receiver.track is not None and receiver.track.kind == "video":
            marked.setdefault(packet.timestamp, loop.time())
        await original(receiver, packet, arrival_time_ms)

    async def send() -> None:
        config: codecs.VideoConfig | None = None
        start = loop.time()
        for tag in tags:
            due = start + tag.timestamp / 1000
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            if tag.tag_type == flv.FrameKind.VIDEO:
                packet = codecs.parse_video(tag.body)
                if packet.is_config:
                    config = codecs.parse_video_config(packet)
                elif config is not None and packet.is_frame:
                    annexb = codecs.to_annexb(packet.data, config, keyframe=False,
                                              delimiter=False)
                    sent[_slice_key(annexb)] = loop.time()
            publisher.send_media(tag.tag_type, tag.timestamp, tag.body)
            await publisher.writer.drain()

    sender = asyncio.create_task(send())
    await eventually(lambda: node.stream("live/lat") is not None, 10)
    await asyncio.sleep(1.5)  # a GOP in the cache: the viewer's start burst is not measured
    RTCRtpReceiver._handle_rtp_packet = handle  # type: ignore[method-assign]
    try:
        viewer = await webrtc.whep(f"http://127.0.0.1:{node.http}", "live/lat")
        joined = loop.time()
        await asyncio.sleep(seconds)
    finally:
        RTCRtpReceiver._handle_rtp_packet = original  # type: ignore[method-assign]
    sender.cancel()
    await viewer.close()
    await publisher.close()
    origin = next(iter(marked))
    latencies = []
    for _, frame in viewer.frames.get("video", []):
        sent_at = sent.get(_slice_key(frame.data))
        if sent_at is None or sent_at <= joined:  # the start burst (cached frames)
            continue
        arrived = marked.get((origin + frame.timestamp) % 2**32)
        assert arrived is not None, "a frame's RTP timestamp matches no packet"
        latencies.append((arrived - sent_at) * 1000)
    return latencies


def test_webrtc_adds_little_latency(node_factory: NodeFactory, source_flv: Path) -> None:
    node = node_factory(*WEBRTC)
    latencies = asyncio.run(_latency(node, source_flv, 6.0))
    assert len(latencies) >= 100, len(latencies)
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = latencies[int(len(latencies) * 0.95)]
    print(f"\nRTMP publish -> last RTP packet at a WHEP client, {len(latencies)} frames: "
          f"p50 {p50:.1f} ms, "
          f"p95 {p95:.1f} ms, max {latencies[-1]:.1f} ms")
    assert p95 <= 50
