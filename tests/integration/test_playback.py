"""ffmpeg publishes to a real node; ffmpeg plays it back over RTMP and HTTP-FLV."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import FPS, HEIGHT, WIDTH
from tests.support.processes import FfmpegPublisher, Node

pytestmark = pytest.mark.integration


def _record(ffmpeg: str, url: str, out: Path, seconds: float) -> None:
    result = subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-rw_timeout", "10000000", "-i", url,
         "-t", str(seconds), "-c", "copy", "-y", str(out)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr


def _probe(ffprobe: str, path: Path) -> dict[str, dict[str, object]]:
    result = subprocess.run(
        [ffprobe, "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_type,codec_name,width,height,nb_read_frames", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True)
    return {s["codec_type"]: s for s in json.loads(result.stdout)["streams"]}


def _decode_errors(ffmpeg: str, path: Path) -> str:
    result = subprocess.run([ffmpeg, "-hide_banner", "-v", "error", "-i", str(path), "-f", "null",
                             "-"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stderr.strip()


@pytest.mark.parametrize("protocol", ["rtmp", "http-flv"])
def test_ffmpeg_plays_back_what_ffmpeg_published(
        protocol: str, node: Node, publish: Callable[[Node, str], FfmpegPublisher], ffmpeg: str,
        ffprobe: str, tmp_path: Path) -> None:
    publish(node, "live/cam")
    url = (f"rtmp://127.0.0.1:{node.rtmp}/live/cam" if protocol == "rtmp"
           else f"http://127.0.0.1:{node.http}/live/cam.flv")
    out = tmp_path / "played.flv"
    _record(ffmpeg, url, out, seconds=6)

    streams = _probe(ffprobe, out)
    video, audio = streams["video"], streams["audio"]
    assert video["codec_name"] == "h264"
    assert (video["width"], video["height"]) == (WIDTH, HEIGHT)
    assert audio["codec_name"] == "aac"
    assert int(str(video["nb_read_frames"])) >= 5 * FPS, "at least 5 s of video"
    assert _decode_errors(ffmpeg, out) == ""
    node.wait_for_log(rf"play end stream=live/cam protocol={protocol} ")


def test_ffprobe_reads_a_live_stream_over_both_protocols(
        node: Node, publish: Callable[[Node, str], FfmpegPublisher], ffprobe: str) -> None:
    publish(node, "live/probe")
    for url in (f"rtmp://127.0.0.1:{node.rtmp}/live/probe",
                f"http://127.0.0.1:{node.http}/live/probe.flv"):
        result = subprocess.run(
            [ffprobe, "-v", "error", "-show_entries", "stream=codec_name,width,height",
             "-of", "json", url], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        codecs = {s["codec_name"]: s for s in json.loads(result.stdout)["streams"]}
        assert set(codecs) == {"h264", "aac"}
        assert (codecs["h264"]["width"], codecs["h264"]["height"]) == (WIDTH, HEIGHT)


def test_sigterm_ends_streams_cleanly_and_exits_zero(
        node: Node, publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    publish(node, "live/bye")
    assert node.terminate() == 0
    text = node.log_text()
    assert "publish end stream=live/bye protocol=rtmp" in text and "reason='shutdown'" in text
    assert "node stopped" in text
