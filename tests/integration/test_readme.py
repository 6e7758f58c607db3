"""The README's promises, run as written: the extension example and `make run`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.processes import REPO, Node
from tests.support.rtmp_client import RtmpClient

pytestmark = pytest.mark.integration
LOOPBACK = {"ARCLY_RTMP_LISTEN": "127.0.0.1:0", "ARCLY_HTTP_LISTEN": "127.0.0.1:0"}


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- example: extend -->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its extension example"
    return match.group(1)


def test_readme_extension_example_runs_and_does_what_it_says(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    node = Node(cmd=[sys.executable, str(script)], env=LOOPBACK)
    try:
        async def scenario() -> None:
            other = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
            assert (await other.publish("other")).code == "NetStream.Publish.Unauthorized"
            await other.close()
            cam = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
            assert (await cam.publish("cam-1")).code == "NetStream.Publish.Start"
            viewer = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
            assert (await viewer.play("cam-1")).code == "NetStream.Play.Start"
            await viewer.close()
            await cam.close()

        asyncio.run(scenario())
        node.wait_for_log(r"viewers live/cam-1 = 1")
        node.wait_for_log(r"viewers live/cam-1 = 0")
        assert node.terminate() == 0
    finally:
        node.stop()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_make_run_serves_a_single_node() -> None:
    node = Node(cmd=["make", "--no-print-directory", "run",
                     "ARGS=--rtmp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 "
                     "--srt-listen 127.0.0.1:0"],
                env={"MAKEFLAGS": ""})
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.http}/healthz", timeout=10) as resp:
            assert resp.status == 200
            assert json.load(resp) == {"status": "ok"}

        async def publish_and_play() -> None:
            pub = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
            assert (await pub.publish("laptop")).code == "NetStream.Publish.Start"
            viewer = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
            assert (await viewer.play("laptop")).code == "NetStream.Play.Start"
            await viewer.close()
            await pub.close()

        asyncio.run(publish_and_play())
        # make exec's the node; signal that process (ours, by pid), as an orchestrator would.
        arcly = [pid for pid in _children(node.pid)] or [node.pid]
        for pid in arcly:
            os.kill(pid, signal.SIGTERM)
        assert node.proc.wait(20) == 0
    finally:
        node.stop()
