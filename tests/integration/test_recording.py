"""Recordings from a real node are playable: after a normal end, after SIGTERM, after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import m3u8
import pytest

from arcly.engine import ProtocolError
from arcly.media import flv
from tests.support.processes import FfmpegPublisher, Node
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def probe_duration(ffprobe: str, path: Path) -> float:
    result = subprocess.run([ffprobe, "-v", "error", "-show_entries", "format=duration",
                             "-of", "json", str(path)], capture_output=True, text=True,
                            timeout=60, check=True)
    return float(json.loads(result.stdout)["format"]["duration"])


def decoded_seconds(ffmpeg: str, path: Path) -> tuple[float, str]:
    result = subprocess.run([ffmpeg, "-hide_banner", "-v", "error", "-i", str(path), "-f", "null",
                             "-", "-progress", "pipe:1", "-nostats"],
                            capture_output=True, text=True, timeout=60)
    times = [int(line.split("=")[1]) for line in result.stdout.splitlines()
             if line.startswith("out_time_us=") and line.split("=")[1].isdigit()]
    return (max(times) / 1e6 if times else 0.0), result.stderr.strip()


def recorded_at_least(folder: Path, seconds: float) -> None:
    """Wait until the recording under ``folder`` holds ``seconds`` of media on disk (the last
    whole tag's timestamp; a tag being written is not counted)."""
    def long_enough() -> bool:
        for path in folder.glob("*.flv"):
            data = path.read_bytes()
            try:
                tags, _ = flv.parse_tags(data, flv.parse_header(data))
            except ProtocolError:
                continue
            if tags and tags[-1].timestamp >= seconds * 1000:
                return True
        return False

    wait_until(long_enough, timeout=seconds + 20, message=f"no {seconds} s recording")


@pytest.mark.parametrize("variant", ["lowlatency", "mpegts"])
def test_ten_second_publish_records_a_playable_flv_and_hls_vod(
        variant: str, node_factory: Callable[..., Node], ffmpeg: str, ffprobe: str,
        source_flv: Path, tmp_path: Path) -> None:
    node = node_factory("--record", str(tmp_path), "--record-hls", "--hls-variant", variant)
    pub = FfmpegPublisher(ffmpeg, source_flv, f"rtmp://127.0.0.1:{node.rtmp}/live/tenner",
                          seconds=10)
    assert pub.proc.wait(60) == 0
    node.wait_for_log(r"recording finalized stream=live/tenner", timeout=20)
    recording = next(tmp_path.glob("live/tenner/*.flv"))
    duration = probe_duration(ffprobe, recording)
    print(f"\nrecorded duration {duration:.3f} s for a 10 s publish")
    assert abs(duration - 10.0) <= 0.5
    seconds, errors = decoded_seconds(ffmpeg, recording)
    assert errors == "" and seconds >= 9.5
    playlist_path = next(tmp_path.glob("live/tenner/*/index.m3u8"))
    playlist = m3u8.load(str(playlist_path))
    assert playlist.is_endlist and playlist.playlist_type == "vod"
    assert abs(sum(s.duration for s in playlist.segments) - 10.0) <= 0.5
    vod_seconds, vod_errors = decoded_seconds(ffmpeg, playlist_path)
    assert vod_errors == "" and vod_seconds >= 9.5
    if variant == "mpegts":
        assert {s.uri.rsplit(".", 1)[1] for s in playlist.segments} == {"ts"}
    else:  # fMP4 VOD: an init segment, then .m4s segments
        assert playlist.segment_map and (playlist_path.parent / playlist.segment_map[0].uri
                                         ).read_bytes()[4:8] == b"ftyp"
        assert {s.uri.rsplit(".", 1)[1] for s in playlist.segments} == {"m4s"}


def test_sigterm_mid_publish_finalizes_the_recording(
        node_factory: Callable[..., Node], publish: Callable[[Node, str], FfmpegPublisher],
        ffmpeg: str, ffprobe: str, source_flv: Path, tmp_path: Path) -> None:
    node = node_factory("--record", str(tmp_path))
    publish(node, "live/cut")
    started = time.monotonic()
    recorded_at_least(tmp_path / "live/cut", seconds=2.5)
    until_sigterm = time.monotonic() - started
    assert node.terminate() == 0
    elapsed = time.monotonic() - started  # the recording ends somewhere in the shutdown
    assert "recording finalized stream=live/cut" in node.log_text()
    recording = next(tmp_path.glob("live/cut/*.flv"))
    duration = probe_duration(ffprobe, recording)
    assert until_sigterm - 1.5 <= duration <= elapsed + 1.0, (until_sigterm, elapsed)
    seconds, errors = decoded_seconds(ffmpeg, recording)
    assert errors == "" and seconds >= duration - 0.5


def test_a_crash_leaves_a_recording_readable_up_to_the_last_complete_tag(
        node_factory: Callable[..., Node], publish: Callable[[Node, str], FfmpegPublisher],
        ffmpeg: str, source_flv: Path, tmp_path: Path) -> None:
    node = node_factory("--record", str(tmp_path))
    publish(node, "live/crash")
    recorded_at_least(tmp_path / "live/crash", seconds=2.5)
    os.kill(node.pid, signal.SIGKILL)  # our own node, by pid
    node.proc.wait(10)
    recording = next(tmp_path.glob("live/crash/*.flv"))
    seconds, _ = decoded_seconds(ffmpeg, recording)
    assert seconds >= 2.0, "what reached the disk decodes"


def test_odd_stream_keys_are_refused_before_any_path_is_built(
        node_factory: Callable[..., Node], tmp_path: Path) -> None:
    import asyncio

    from tests.support.rtmp_client import RtmpClient

    node = node_factory("--record", str(tmp_path / "rec"))

    async def scenario() -> None:
        for name in ("../../etc", "..", ".hidden", "a/b", "x%2F..", "caf\u00e9"):
            client = await RtmpClient.connect("127.0.0.1", node.rtmp, "live")
            assert (await client.publish(name)).code == "NetStream.Publish.BadName"
            await client.close()

    asyncio.run(scenario())
    assert not (tmp_path / "rec").exists() or list((tmp_path / "rec").rglob("*")) == []
