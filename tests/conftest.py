"""Shared fixtures: real ffmpeg/ffprobe, a generated H.264/AAC source, real arcly nodes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import tools
from tests.support.processes import FfmpegPublisher, Node, RedisServer

# The generated test source: 640x360@30 H.264 + AAC 44.1 kHz, a keyframe every 2 s.
WIDTH, HEIGHT, FPS, GOP_SECONDS = 640, 360, 30, 2


@pytest.fixture(scope="session")
def ffmpeg_tools() -> tuple[str, str]:
    found = tools.find()
    if found is None:
        pytest.fail("no ffmpeg/ffprobe with libx264+aac: run `make test` (it installs them)")
    return found


@pytest.fixture(scope="session")
def ffmpeg(ffmpeg_tools: tuple[str, str]) -> str:
    return ffmpeg_tools[0]


@pytest.fixture(scope="session")
def ffprobe(ffmpeg_tools: tuple[str, str]) -> str:
    return ffmpeg_tools[1]


@pytest.fixture(scope="session")
def source_flv(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 s of lavfi testsrc2 + sine, encoded like a live encoder would (fixed GOP, no B-frames
    surprises), generated once per session."""
    out = tmp_path_factory.mktemp("media") / "source.flv"
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "12",
         "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-b:v", "1000k",
         "-g", str(FPS * GOP_SECONDS), "-keyint_min", str(FPS * GOP_SECONDS),
         "-sc_threshold", "0", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
         "-f", "flv", str(out)],
        check=True, timeout=120)
    return out


@pytest.fixture
def node() -> Iterator[Node]:
    started = Node()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def node_factory() -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(*args: str, **kwargs: object) -> Node:
        started = Node(*args, **kwargs)  # type: ignore[arg-type]
        nodes.append(started)
        return started

    try:
        yield make
    finally:
        for started in nodes:
            started.stop()


@pytest.fixture
def publish(ffmpeg: str, source_flv: Path) -> Iterator[Callable[[Node, str], FfmpegPublisher]]:
    """Start an ffmpeg publisher to ``rtmp://node/<key>`` and wait until the node has it."""
    publishers: list[FfmpegPublisher] = []

    def start(target: Node, key: str) -> FfmpegPublisher:
        pub = FfmpegPublisher(ffmpeg, source_flv, f"rtmp://127.0.0.1:{target.rtmp}/{key}")
        publishers.append(pub)
        target.wait_for_log(rf"publish start stream={key} ", timeout=20)
        # Sequence headers (audio, video), metadata and a keyframe: a viewer can start.
        target.wait_for_stream(key, frames=8)
        return pub

    try:
        yield start
    finally:
        for pub in publishers:
            pub.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def slate_flv(ffmpeg: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 s slate (colour bars and a tone) shaped like the test source, as users make one."""
    out = tmp_path_factory.mktemp("media") / "slate.flv"
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"smptebars=size={WIDTH}x{HEIGHT}:rate={FPS}",
         "-f", "lavfi", "-i", "sine=frequency=880:sample_rate=44100", "-t", "3",
         "-c:v", "libx264", "-preset", "veryfast", "-g", str(FPS), "-keyint_min", str(FPS),
         "-sc_threshold", "0", "-bf", "0", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k",
         "-f", "flv", str(out)],
        check=True, timeout=120)
    return out
