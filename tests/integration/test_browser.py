"""HLS and HTTP-FLV play in a real browser: headless Chromium on the node's player page."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import threading
import time
import urllib.request
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


class FlvCapture:
    """An HTTP-FLV viewer in a thread writing the raw response to a file (what a player
    receives, byte for byte); notes whether and when the node closed it."""

    def __init__(self, url: str, out: Path) -> None:
        self.url = url
        self.out = out
        self.closed_early = False
        self.error = ""
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=20) as resp, self.out.open("wb") as out:
                while not self.stop.is_set():
                    data = resp.read1(65536)
                    if not data:
                        self.closed_early = True
                        return
                    out.write(data)
        except OSError as exc:
            self.error = repr(exc)

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(20)


def test_fallback_keeps_flv_and_hls_js_viewers_playing_while_the_publisher_is_away(
        browser, node_factory: Callable[..., Node], ffmpeg: str,  # type: ignore[no-untyped-def]
        ffprobe: str, source_flv: Path, slate_flv: Path, tmp_path: Path) -> None:
    config = tmp_path / "arcly.toml"
    config.write_text(f'[apps.live]\nfallback = "{slate_flv}"\n')
    recordings = tmp_path / "recordings"
    node = node_factory("--config", str(config), "--record", str(recordings))
    url = f"rtmp://127.0.0.1:{node.rtmp}/live/always"
    publisher = FfmpegPublisher(ffmpeg, source_flv, url)
    page = browser.new_page()
    capture: FlvCapture | None = None
    playlist_url = f"http://127.0.0.1:{node.http}/live/always/index.m3u8"
    try:
        node.wait_for_stream("live/always", frames=8, timeout=20)
        # HTTP-FLV of a stream nobody publishes is a 404 (as nginx's flv module answers), so the
        # capture starts once the stream is there
        capture = FlvCapture(f"http://127.0.0.1:{node.http}/live/always.flv",
                             tmp_path / "cap.flv")
        page.goto(f"http://127.0.0.1:{node.http}/play/live/always")
        page.wait_for_function("document.getElementById('video').currentTime > 2",
                               timeout=45_000)

        def played() -> float:
            return float(page.evaluate("document.getElementById('video').currentTime"))

        samples = [played()]
        publisher.stop()  # away for 10 s: the slate plays
        node.wait_for_log(r"fallback start stream=live/always source=file:slate.flv")
        for _ in range(10):
            time.sleep(1.0)
            samples.append(played())
        with urllib.request.urlopen(playlist_url, timeout=10) as resp:
            during = resp.read().decode()
        publisher = FfmpegPublisher(ffmpeg, source_flv, url)
        node.wait_for_log(r"fallback end stream=live/always reason='publisher back'")
        for _ in range(8):
            time.sleep(1.0)
            samples.append(played())
        with urllib.request.urlopen(playlist_url, timeout=10) as resp:
            after = resp.read().decode()
        steps = [b - a for a, b in itertools.pairwise(samples)]
        print(f"\nhls.js currentTime each second across both switches: "
              f"{', '.join(f'{s:.1f}' for s in samples)}")
        assert all(step > 0.3 for step in steps), f"hls.js stalled: {steps}"
        assert page.evaluate("document.getElementById('status').textContent") == "playing"
        assert "#EXT-X-DISCONTINUITY" in during and "#EXT-X-DISCONTINUITY" in after
        capture.finish()
        assert not capture.closed_early and not capture.error, capture.error
        decode = subprocess.run(
            [ffmpeg, "-hide_banner", "-v", "error", "-i", str(capture.out), "-f", "null", "-"],
            capture_output=True, text=True, timeout=120)
        assert decode.returncode == 0 and decode.stderr.strip() == "", decode.stderr
        probe = subprocess.run(
            [ffmpeg, "-hide_banner", "-i", str(capture.out), "-map", "0:v", "-f", "null", "-"],
            capture_output=True, text=True, timeout=120)
        seconds = max(_hms(t) for t in re.findall(r"time=(\d+:\d+:[\d.]+)", probe.stderr))
        print(f"FLV capture: {seconds:.1f} s of video decoded without errors")
        assert seconds >= 18, "the capture covers the publish, the slate and the return"
        packets = subprocess.run(
            [ffprobe, "-v", "error", "-select_streams", "v", "-show_entries", "packet=dts_time",
             "-of", "csv=p=0", str(capture.out)], capture_output=True, text=True, timeout=60,
            check=True).stdout.split()
        times = [float(t.strip(",")) for t in packets if t.strip(",")]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        print(f"FLV capture: {len(times)} video packets, largest step {max(gaps) * 1000:.0f} ms")
        assert min(gaps) > 0 and max(gaps) < 0.2, "timestamps go on across both switches"
        assert "publish start stream=live/always" in node.log_text()
        # Recordings follow publishes, not the slate: one finalized when the publisher left,
        # one being written since it came back.
        assert node.log_text().count("recording finalized stream=live/always") == 1
        assert len(list((recordings / "live" / "always").glob("*.flv"))) == 2
    finally:
        if capture is not None:
            capture.finish()
        page.close()
        publisher.stop()


def _hms(text: str) -> float:
    hours, minutes, seconds = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
