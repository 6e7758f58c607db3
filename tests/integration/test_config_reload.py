"""``--config`` file and hot reload on a real node: SIGHUP and file changes swap the auth
config while an RTMP viewer and an HLS viewer keep playing; an invalid file is refused."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import m3u8
import pytest

from tests.conftest import FPS
from tests.integration.test_auth import publish_status
from tests.support.processes import FfmpegPublisher, Node
from tests.support.rtmp_client import RtmpClient
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

CONFIG = """\
# arcly.toml written by the test
log_level = "info"
hls_variant = "mpegts"
hls_segment_seconds = 1
max_viewers_per_stream = 100

[auth.default]
provider = "allow-all"

[auth.apps.live]
provider = "static"
publish_keys = [{keys}]
"""


def write_config(path: Path, *keys: str, extra: str = "") -> None:
    """Write the whole file at once (a rename, like editors and ConfigMap volumes do)."""
    staged = path.with_suffix(".new")
    # Extra top-level keys go first (after a [table] they would belong to it).
    staged.write_text(extra + CONFIG.format(keys=", ".join(f'"{k}"' for k in keys)))
    staged.replace(path)


class RtmpWatcher:
    """An RTMP viewer in a thread: the video timestamps it receives, and whether the node ever
    closed it."""

    def __init__(self, node: Node, key: str) -> None:
        self.timestamps: list[int] = []
        self.closed = False
        self.stop = threading.Event()
        app, name = key.split("/")
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(node, app, name),),
                                        daemon=True)
        self._thread.start()

    async def _run(self, node: Node, app: str, name: str) -> None:
        client = await RtmpClient.connect("127.0.0.1", node.rtmp, app)
        assert (await client.play(name)).code == "NetStream.Play.Start"
        while not self.stop.is_set():
            try:
                message = await client.read_message(0.5)
            except TimeoutError:
                continue
            except EOFError:
                self.closed = True
                break
            if message.type_id == 9 and len(message.payload) > 1 and message.payload[1] == 1:
                self.timestamps.append(message.timestamp)
        await client.close()

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(10)


class HlsWatcher:
    """An HLS player in a thread: polls the playlist each second and fetches each new segment
    once; notes media sequence numbers, discontinuities and failed fetches."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.sequences: list[int] = []
        self.discontinuities = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                with urllib.request.urlopen(f"{self.base}/index.m3u8", timeout=10) as resp:
                    playlist = m3u8.loads(resp.read().decode())
                for number, segment in enumerate(playlist.segments, playlist.media_sequence):
                    if self.sequences and number <= self.sequences[-1]:
                        continue
                    self.discontinuities += int(bool(segment.discontinuity))
                    with urllib.request.urlopen(f"{self.base}/{segment.uri}", timeout=10) as got:
                        assert got.read(), "an empty segment"
                    self.sequences.append(number)
            except (OSError, AssertionError) as exc:
                self.failures.append(repr(exc))

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(15)


def node_config(node: Node) -> dict[str, object]:
    config = node.api("/node")["config"]
    assert isinstance(config, dict)
    return config


def test_sighup_and_file_changes_swap_auth_while_viewers_keep_playing(
        node_factory: Callable[..., Node], ffmpeg: str, source_flv: Path,
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    path = tmp_path / "arcly.toml"
    write_config(path, "first")
    node = node_factory("--config", str(path))
    assert node_config(node)["generation"] == 1
    publisher = FfmpegPublisher(ffmpeg, source_flv,
                                f"rtmp://127.0.0.1:{node.rtmp}/live/cam?key=first")
    request.addfinalizer(publisher.stop)
    node.wait_for_stream("live/cam", frames=8, timeout=20)
    rtmp = RtmpWatcher(node, "live/cam")
    hls = HlsWatcher(f"http://127.0.0.1:{node.http}/live/cam")
    request.addfinalizer(rtmp.finish)
    request.addfinalizer(hls.finish)
    wait_until(lambda: len(rtmp.timestamps) > FPS and len(hls.sequences) >= 2, timeout=20)

    # SIGHUP: the publish key changes; the publisher and both viewers stay.
    write_config(path, "second")
    os.kill(node.pid, signal.SIGHUP)
    node.wait_for_log(r"config reloaded \((SIGHUP|file changed)\) generation=2 changed=auth")
    assert node_config(node)["generation"] == 2
    assert publish_status(node, "live", "other?key=first") == "NetStream.Publish.Unauthorized"
    assert publish_status(node, "live", "other?key=second") == "NetStream.Publish.Start"

    # An invalid file is refused with its key and line; the running config stays.
    write_config(path, "third", extra="max_publishers = \"lots\"\n")
    refused = node.wait_for_log(r"config refused \(file changed\)", timeout=5)
    assert re.search(r"line 1: max_publishers: invalid literal", refused), refused
    assert node_config(node)["generation"] == 2
    assert publish_status(node, "live", "other?key=third") == "NetStream.Publish.Unauthorized"
    assert publish_status(node, "live", "other?key=second") == "NetStream.Publish.Start"

    # A file change alone is picked up within 2 s.
    write_config(path, "fourth")
    changed = time.monotonic()
    wait_until(lambda: node_config(node)["generation"] == 3, timeout=5, interval=0.05)
    picked_up = time.monotonic() - changed
    print(f"\nfile change picked up after {picked_up:.2f} s")
    assert picked_up <= 2.0
    assert publish_status(node, "live", "other?key=fourth") == "NetStream.Publish.Start"
    # Settings that need a restart keep their running values, and the log says so.
    write_config(path, "fourth", extra='chunk_size = 60000\n')
    node.wait_for_log(r"config: chunk_size changed .* needs a restart", timeout=5)
    assert publish_status(node, "live", "other?key=fourth") == "NetStream.Publish.Start"

    fetched = len(hls.sequences)  # both viewers go on after the last reload
    wait_until(lambda: len(hls.sequences) > fetched, timeout=10)
    rtmp.finish()
    hls.finish()
    assert not rtmp.closed, "the RTMP viewer was never disconnected"
    steps = [b - a for a, b in zip(rtmp.timestamps, rtmp.timestamps[1:], strict=False)]
    assert steps and max(steps) <= 1000 / FPS + 1, f"a gap in the RTMP viewer's video: {steps}"
    assert not hls.failures, hls.failures
    assert hls.sequences == list(range(hls.sequences[0], hls.sequences[0] + len(hls.sequences)))
    assert hls.discontinuities == 0
    assert len(hls.sequences) >= 3
    assert publisher.alive()
    assert "publish end stream=live/cam" not in node.log_text()
