"""WebRTC in a real browser: headless Chromium plays over WHEP (origin and edge) and
publishes over WHIP with a fake camera and microphone."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HEIGHT, WIDTH
from tests.support import webrtc
from tests.support.processes import FfmpegPublisher, Node, RedisServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required",
         # ICE on loopback only: Chromium gathers 127.0.0.1 and shows it unobfuscated.
         "--allow-loopback-in-peer-connection",
         "--disable-features=WebRtcHideLocalIpsWithMdns",
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
WEBRTC = ("--webrtc-advertise-ip", "127.0.0.1")
NodeFactory = Callable[..., Node]

_STATS = """async () => {
  const out = {};
  (await arclyRtc.pc.getStats()).forEach(s => {
    if (s.type === 'inbound-rtp' || s.type === 'outbound-rtp') out[s.type + '-' + s.kind] = s;
  });
  return {stats: out, postedAt: arclyRtc.postedAt, firstFrameAt: arclyRtc.firstFrameAt,
          status: document.getElementById('status').textContent};
}"""


@pytest.fixture(scope="module")
def chromium():  # type: ignore[no-untyped-def]
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (make test installs Debian's chromium as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def browser_stats(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(_STATS)
    return result


def watch_whep(chromium: Any, node: Node, key: str, frames: int = 90) -> dict[str, Any]:
    """Play ``key`` over WHEP on ``node``'s player page until ``frames`` are decoded."""
    page = chromium.new_page()
    try:
        page.goto(f"http://127.0.0.1:{node.http}/play/{key}?type=webrtc")
        deadline = time.monotonic() + 30
        while True:
            result = browser_stats(page)
            video = result["stats"].get("inbound-rtp-video", {})
            if video.get("framesDecoded", 0) >= frames and result["firstFrameAt"]:
                return result
            if result["status"].startswith("error") or time.monotonic() > deadline:
                raise AssertionError(f"WHEP did not play: {json.dumps(result)[:2000]}\n"
                                     f"{node.log_text()[-3000:]}")
            time.sleep(0.25)
    finally:
        page.close()


def check_played(result: dict[str, Any], where: str) -> None:
    video = result["stats"]["inbound-rtp-video"]
    audio = result["stats"].get("inbound-rtp-audio", {})
    first_ms = result["firstFrameAt"] - result["postedAt"]
    print(f"\nWHEP in Chromium ({where}): {video['framesDecoded']} frames decoded at "
          f"{video['frameWidth']}x{video['frameHeight']}, {audio.get('packetsReceived', 0)} "
          f"audio packets, POST to first frame on screen {first_ms:.0f} ms, codec "
          f"{video.get('codecId', '?')}")
    assert video["framesDecoded"] >= 90
    assert (video["frameWidth"], video["frameHeight"]) == (WIDTH, HEIGHT)
    assert audio.get("packetsReceived", 0) > 0
    assert first_ms < 3000  # target 1 s (printed); generous on a shared machine


def test_whep_plays_a_high_profile_rtmp_stream_in_chromium(
        chromium: Any, node_factory: NodeFactory, ffprobe: str, source_flv: Path,
        publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    profile = subprocess.run(
        [ffprobe, "-v", "error", "-select_streams", "v", "-show_entries", "stream=profile",
         "-of", "csv=p=0", str(source_flv)], capture_output=True, text=True, check=True)
    assert profile.stdout.strip() == "High"  # what OBS/x264 sources usually are
    node = node_factory(*WEBRTC)
    publish(node, "live/rtc")
    check_played(watch_whep(chromium, node, "live/rtc"), "origin")
    summary = node.api("/webrtc")
    assert summary["sessions"] == [] or all(s["kind"] == "whep" for s in summary["sessions"])


def test_whep_plays_through_an_edge(
        chromium: Any, node_factory: NodeFactory, redis_server: RedisServer,
        publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    env = {"ARCLY_RELAY_TOKEN": "webrtc-relay"}
    origin = node_factory("--redis-url", redis_server.url, "--node-id", "o1", *WEBRTC,
                          role="origin", env=env)
    edge = node_factory("--redis-url", redis_server.url, "--node-id", "e1", *WEBRTC,
                        role="edge", env=env)
    publish(origin, "live/edged")
    check_played(watch_whep(chromium, edge, "live/edged"), "edge")
    # Edges take no publishers: WHIP there is refused, saying where to publish.
    with ThreadPoolExecutor(1) as pool:  # Playwright's loop owns this thread
        offer = pool.submit(asyncio.run, webrtc.throwaway_offer(direction="sendonly")).result()
    status, _, text = webrtc.post(f"http://127.0.0.1:{edge.http}/live/other/whip", offer)
    assert (status, text.strip()) == (403, "this node takes no publishers: publish to an origin")
    assert "protocol=webrtc " in edge.log_text()
    edge.wait_for_log(r"relay.*live/edged|upstream.*live/edged")


def test_chromium_publishes_over_whip_and_every_protocol_reads_it(
        chromium: Any, node_factory: NodeFactory, ffmpeg: str, ffprobe: str,
        tmp_path: Path) -> None:
    node = node_factory(*WEBRTC, "--hls-segment-seconds", "1", "--hls-on-publish")
    page = chromium.new_page()
    try:
        page.goto(f"http://127.0.0.1:{node.http}/publish/live/cam")
        page.wait_for_function("document.getElementById('status').textContent === "
                               "'connected'", timeout=20_000)
        node.wait_for_stream("live/cam", frames=30)
        base = f"http://127.0.0.1:{node.http}/live/cam"
        wait_until(lambda: "#EXTINF" in webrtc.post(f"{base}/index.m3u8", "", method="GET")[2],
                   15, message="no complete HLS segment")
        for url in (f"{base}.flv", f"{base}/index.m3u8"):
            probe = subprocess.run(
                [ffprobe, "-v", "error", "-show_entries", "stream=codec_name,width,height",
                 "-of", "json", url], capture_output=True, text=True, timeout=30)
            streams = json.loads(probe.stdout or "{}").get("streams", [])
            names = sorted(s["codec_name"] for s in streams)
            print(f"\nffprobe {url.rsplit('/', 1)[1]}: {streams}")
            assert names == ["aac", "h264"], probe.stderr
        recorded = tmp_path / "cam.flv"
        subprocess.run([ffmpeg, "-v", "error", "-i", f"{base}.flv", "-t", "6", "-c", "copy",
                        "-y", str(recorded)], check=True, timeout=30, capture_output=True)
        # A browser's frame times are its capture times (variable frame rate): decode on the
        # FLV's millisecond clock, not on ffmpeg's guessed 30 fps grid, where two frames taken
        # 20 ms apart share a slot and read as "non monotonically increasing dts".
        decoded = subprocess.run([ffmpeg, "-v", "error", "-i", str(recorded),
                                  "-enc_time_base:v", "1:1000", "-f", "null", "-"],
                                 capture_output=True, text=True, timeout=30)
        assert decoded.returncode == 0 and decoded.stderr.strip() == "", decoded.stderr
        for kind in ("v", "a"):  # each track's times strictly increase
            times = [float(t.strip(",")) for t in subprocess.run(
                [ffprobe, "-v", "error", "-select_streams", kind, "-show_entries",
                 "packet=dts_time", "-of", "csv=p=0", str(recorded)],
                capture_output=True, text=True, check=True).stdout.split() if t.strip(",")]
            assert times and all(b > a for a, b in itertools.pairwise(times)), kind
        duration = float(subprocess.run(
            [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
             str(recorded)], capture_output=True, text=True, check=True).stdout)
        assert duration >= 5.0
        stats = browser_stats(page)["stats"]["outbound-rtp-video"]
        # Browsers send keyframes when asked: the node asks every segment (PLI).
        assert stats["keyFramesEncoded"] >= 2, stats
    finally:
        page.close()
    node.wait_for_log(r"publish end stream=live/cam ", timeout=15)
