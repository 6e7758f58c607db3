"""HLS and HTTP-FLV play in a real browser: headless Chromium on the node's player page."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

import pytest

from arcly.protocols.http.pages import STATIC_DIR
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
