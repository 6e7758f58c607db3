"""The management API's figures, its OpenAPI document, and the status page people open first."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from arcly.protocols.rtmp import chunk
from tests.integration.test_browser import browser  # noqa: F401  (fixture)
from tests.support.flv_reader import HttpFlvReader
from tests.support.processes import FfmpegPublisher, Node
from tests.support.rtmp_client import RtmpClient

pytestmark = pytest.mark.integration


def get(node: Node, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http}{path}", timeout=20) as resp:
        return json.load(resp)


def test_api_figures_match_what_viewers_receive(
        node: Node, publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    publish(node, "live/api")
    get_playlist = f"http://127.0.0.1:{node.http}/live/api/index.m3u8"

    async def scenario() -> tuple[dict[str, Any], dict[str, int]]:
        rtmp = [await RtmpClient.connect("127.0.0.1", node.rtmp, "live") for _ in range(3)]
        for client in rtmp:
            assert (await client.play("api")).code == "NetStream.Play.Start"
        flv = [await HttpFlvReader.open(node.http, "/live/api.flv") for _ in range(2)]
        for reader in flv:
            await reader.read_header()
        await asyncio.to_thread(lambda: urllib.request.urlopen(get_playlist, timeout=20).read())
        received: dict[str, int] = {}

        async def drain_rtmp(client: RtmpClient) -> None:
            peer = f"127.0.0.1:{client.writer.get_extra_info('sockname')[1]}"
            received[peer] = 0
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                message = await client.read_message(5)
                if message.type_id in (chunk.AUDIO, chunk.VIDEO, chunk.DATA_AMF0):
                    received[peer] += 1

        await asyncio.gather(*(drain_rtmp(c) for c in rtmp))
        # the HLS player polls again (a viewer is a client that polled lately)
        await asyncio.to_thread(lambda: urllib.request.urlopen(get_playlist, timeout=20).read())
        detail = await asyncio.to_thread(get, node, "/api/v1/streams/live/api")
        for client in rtmp:
            await client.close()
        for reader in flv:
            await reader.close()
        return detail, received

    detail, received = asyncio.run(scenario())
    assert detail["viewers"] == {"rtmp": 3, "flv": 2, "hls": 1, "relay": 0, "total": 6}
    assert detail["codecs"]["video"] == "h264" and detail["codecs"]["audio"] == "aac"
    assert (detail["codecs"]["width"], detail["codecs"]["height"]) == (640, 360)
    assert detail["codecs"]["sample_rate"] == 44100
    assert 700 < detail["bitrate_kbps"] < 2000, "1 Mbit/s video + 128 kbit/s audio"
    delivered = {s["peer"]: s["delivered_frames"] for s in detail["subscribers"]
                 if s["protocol"] == "rtmp"}
    for peer, count in received.items():
        # What the node handed to a socket vs what the viewer read by then: the difference is
        # only what was still in flight.
        assert 0 <= delivered[peer] - count <= 150, (peer, delivered[peer], count)
    listing = get(node, "/api/v1/streams")
    assert [s["key"] for s in listing["streams"]] == ["live/api"]


def test_openapi_document_is_served_committed_and_holds_under_schemathesis(
        node: Node, publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    publish(node, "live/schema")
    served = get(node, "/api/v1/openapi.json")
    committed = json.loads((Path(__file__).parents[2] / "services" / "arcly" / "protocols" / "http"
                            / "openapi.json").read_text())
    assert served == committed
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run",
         f"http://127.0.0.1:{node.http}/api/v1/openapi.json",
         "--url", f"http://127.0.0.1:{node.http}", "--checks", "not_a_server_error",
         "--max-examples", "25", "--exclude-method", "DELETE"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_status_page_lists_streams_and_plays_them(
        browser: Any, node: Node,  # noqa: F811
        publish: Callable[[Node, str], FfmpegPublisher], tmp_path: Path) -> None:
    publish(node, "live/page")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.goto(f"http://127.0.0.1:{node.http}/")
        page.wait_for_selector('section.stream[data-key="live/page"]', timeout=15_000)
        page.wait_for_function(
            "document.querySelector('section.stream[data-key=\"live/page\"] video')"
            ".currentTime > 2", timeout=45_000)
        figures = page.inner_text('section.stream[data-key="live/page"] .figures')
        assert "viewers" in figures and "h264" in figures and "640\u00d7360" in figures
        shot = Path(os.environ.get("ARCLY_SCREENSHOT_DIR", tmp_path)) / "status.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        page.close()
