"""The node's fallback sources: an FLV file looped in real time, checked when read; the
provider follows the running config."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from arcly.engine import Frame, FrameKind, ProtocolError, StreamKey
from arcly.media import amf0, flv
from arcly.node.config import ConfigSource, NodeConfig
from arcly.node.fallback import AppFallbacks, FileLoop, StreamFollower, read_flv


def flv_file(path: Path, frames: list[tuple[int, int, bytes]]) -> str:
    data = flv.file_header() + b"".join(flv.encode_tag(t, ts, body) for t, ts, body in frames)
    path.write_bytes(data)
    return str(path)


SLATE = [
    (18, 0, amf0.encode("onMetaData", amf0.EcmaArray(duration=3.0))),
    (9, 0, b"\x17\x00\x00\x00\x00avcC"),
    (9, 0, b"\x17\x01\x00\x00\x00key"),
    (9, 40, b"\x27\x01\x00\x00\x00p"),
    (9, 80, b"\x27\x01\x00\x00\x00p"),
]


def test_a_file_loop_plays_in_real_time_and_loops_without_its_metadata(tmp_path: Path) -> None:
    path = flv_file(tmp_path / "slate.flv", SLATE)
    now = [100.0]
    slept: list[float] = []

    async def play() -> list[Frame]:
        async def load() -> list[Frame]:
            return read_flv(path)

        loop = FileLoop(path, load, clock=lambda: now[0])
        real_sleep = asyncio.sleep

        async def fake_sleep(seconds: float) -> None:
            slept.append(round(seconds, 3))
            now[0] += seconds
            await real_sleep(0)

        asyncio.sleep = fake_sleep  # type: ignore[assignment]
        try:
            return [await loop.next_frame() for _ in range(8)]  # type: ignore[misc]
        finally:
            asyncio.sleep = real_sleep  # type: ignore[assignment]

    frames = asyncio.run(play())
    assert frames[0].config and frames[0].kind is FrameKind.VIDEO  # no onMetaData
    assert [f.timestamp for f in frames[1:]] == [0, 40, 80, 0, 40, 80, 0]
    assert slept == [0.04, 0.04, 0.04, 0.04, 0.04, 0.04]  # 40 ms apart, across the loop too


@pytest.mark.parametrize(("frames", "problem"), [
    ([SLATE[1]], "no audio or video frames"),
    ([SLATE[1], SLATE[3]], "no video keyframe"),
])
def test_an_unusable_file_is_refused_with_the_reason(
        tmp_path: Path, frames: list[tuple[int, int, bytes]], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        read_flv(flv_file(tmp_path / "bad.flv", frames))
    (tmp_path / "junk.flv").write_bytes(b"not flv")
    with pytest.raises(ProtocolError):
        read_flv(str(tmp_path / "junk.flv"))


def test_the_provider_reads_the_running_config(tmp_path: Path) -> None:
    slate = flv_file(tmp_path / "slate.flv", SLATE)
    path = tmp_path / "arcly.toml"
    path.write_text(f'[apps.live]\nfallback = "{slate}"\n[apps.tv]\n'
                    'fallback_stream = "live/main"\non_demand_fallback = true\n')
    running = [ConfigSource({"config": str(path)}, {}).build()]
    provider = AppFallbacks(lambda: running[0])
    provider.registry = object()  # type: ignore[assignment]
    assert isinstance(provider.fallback_for(StreamKey("live", "a"), on_demand=False), FileLoop)
    assert provider.fallback_for(StreamKey("live", "a"), on_demand=True) is None
    follower = provider.fallback_for(StreamKey("tv", "a"), on_demand=True)
    assert isinstance(follower, StreamFollower) and follower.key == StreamKey("live", "main")
    assert provider.fallback_for(StreamKey("other", "a"), on_demand=False) is None
    running[0] = NodeConfig()  # a reload removed them
    assert provider.fallback_for(StreamKey("live", "a"), on_demand=False) is None
    running[0] = ConfigSource({"config": str(path)}, {}).build()
    Path(slate).write_bytes(b"broken")  # a file that became unusable: the source fails
    broken = provider.fallback_for(StreamKey("live", "a"), on_demand=False)
    assert broken is not None
    with pytest.raises(ProtocolError, match="fallback file"):
        asyncio.run(broken.next_frame())
