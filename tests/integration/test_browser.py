"""HLS and HTTP-FLV play in a real browser: headless Chromium on the node's player page."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from arcly.protocols.http.pages import STATIC_DIR
from tests.conftest import HEIGHT, WIDTH
from tests.support.processes import FfmpegPublisher, Node

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required"]


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (make test installs Debian's chromium as root)")
    if not (STATIC_DIR / "hls.min.js").is_file():
        pytest.skip("hls.js is not in the node's static folder (make static needs npm)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.parametrize("kind", ["hls", "flv"])
def test_stream_plays_in_headless_chromium(
        kind: str, browser, node: Node,  # type: ignore[no-untyped-def]
        publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    publish(node, "live/web")
    page = browser.new_page()
    try:
        url = f"http://127.0.0.1:{node.http}/play/live/web" + ("?type=flv" if kind == "flv" else "")
        page.goto(url)
        started = time.monotonic()
        page.wait_for_function("document.getElementById('video').currentTime > 3",
                               timeout=45_000)
        played = page.evaluate("document.getElementById('video').currentTime")
        print(f"\n{kind} in Chromium: currentTime {played:.1f} s after "
              f"{time.monotonic() - started:.1f} s")
        assert played > 3
        assert page.evaluate("document.getElementById('status').textContent") == "playing"
    finally:
        page.close()


@pytest.fixture(scope="module")
def one_second_gop_flv(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 s at 30 fps with a keyframe every second (how LL-HLS sources are set up)."""
    out = tmp_path_factory.mktemp("media") / "gop1s.flv"
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "12",
         "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-b:v", "800k",
         "-g", "30", "-keyint_min", "30", "-sc_threshold", "0", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "96k", "-f", "flv", str(out)],
        check=True, timeout=120)
    return out


def test_low_latency_hls_plays_in_hls_js_near_the_live_edge(
        browser, node: Node, ffmpeg: str,  # type: ignore[no-untyped-def]
        one_second_gop_flv: Path) -> None:
    publisher = FfmpegPublisher(ffmpeg, one_second_gop_flv,
                                f"rtmp://127.0.0.1:{node.rtmp}/live/llweb")
    page = browser.new_page()
    try:
        node.wait_for_stream("live/llweb", frames=8)
        page.goto(f"http://127.0.0.1:{node.http}/play/live/llweb")
        page.wait_for_function("document.getElementById('video').currentTime > 2",
                               timeout=45_000)
        assert page.evaluate("window.hls.config.lowLatencyMode") is True
        before = page.evaluate("document.getElementById('video').currentTime")
        latencies = []
        for _ in range(10):  # 10 s of playback, sampled each second
            time.sleep(1.0)
            latencies.append(page.evaluate("window.hls.latency"))
        after = page.evaluate("document.getElementById('video').currentTime")
        ahead = page.evaluate("(v => v.buffered.length ? v.buffered.end(v.buffered.length - 1)"
                              " - v.currentTime : 0)(document.getElementById('video'))")
        print(f"\nbuffered ahead of the playhead: {ahead:.2f} s")
        target = page.evaluate("window.hls.targetLatency")
        print(f"\nLL-HLS in hls.js: latency {min(latencies):.2f}-{max(latencies):.2f} s "
              f"(median {sorted(latencies)[5]:.2f} s; target latency {target:.2f} s; "
              f"goal <= 2.0 s with a 1 s GOP)")
        assert after > before + 5, "playback advances"
        # Not a speed test: classic HLS would sit 3 segments (6 s) back; LL-HLS must not.
        assert sorted(latencies)[5] < 4.0, "low-latency mode is in effect"
        assert page.evaluate("document.getElementById('status').textContent") == "playing"
    finally:
        page.close()
        publisher.stop()
