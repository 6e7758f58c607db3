"""MPEG-TS HLS from a real node: ffprobe/ffmpeg read it, playlists follow RFC 8216, segments
are sane."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import m3u8
import pytest

from tests.conftest import GOP_SECONDS, HEIGHT, WIDTH
from tests.support.processes import FfmpegPublisher, Node
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration
TARGET = 2.0


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_hls_plays_in_ffmpeg_and_follows_the_rules(
        node_factory: Callable[..., Node], publish: Callable[[Node, str], FfmpegPublisher],
        ffmpeg: str, ffprobe: str, tmp_path: Path) -> None:
    node = node_factory("--hls-variant", "mpegts")  # Low-Latency: test_llhls.py
    publisher = publish(node, "live/hls")
    base = f"http://127.0.0.1:{node.http}/live/hls"
    started = time.monotonic()
    status, headers, _ = fetch(f"{base}/index.m3u8")
    print(f"\nfirst playlist after {time.monotonic() - started:.2f} s")
    assert status == 200
    assert headers["Content-Type"] == "application/vnd.apple.mpegurl"
    assert "max-age=1" in headers["Cache-Control"]

    probe = subprocess.run(
        [ffprobe, "-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "json",
         f"{base}/index.m3u8"], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    codecs = {s["codec_name"]: s for s in json.loads(probe.stdout)["streams"]}
    assert set(codecs) == {"h264", "aac"}
    assert (codecs["h264"]["width"], codecs["h264"]["height"]) == (WIDTH, HEIGHT)

    decode = subprocess.run(
        [ffmpeg, "-hide_banner", "-v", "error", "-i", f"{base}/index.m3u8", "-t", "6",
         "-f", "null", "-", "-progress", "pipe:1", "-nostats"],
        capture_output=True, text=True, timeout=90)
    assert decode.returncode == 0, decode.stderr
    assert decode.stderr.strip() == "", "no decode errors"
    out_time = [line for line in decode.stdout.splitlines() if line.startswith("out_time_us=")]
    assert int(out_time[-1].split("=")[1]) >= 5_900_000, "decoded 6 s (three segments)"

    playlist = m3u8.loads(fetch(f"{base}/index.m3u8")[2].decode())
    assert playlist.segments and not playlist.is_endlist
    assert playlist.target_duration >= max(s.duration for s in playlist.segments)
    assert len(playlist.segments) <= 6
    sequences = [int(s.uri.split("-")[1].split(".")[0]) for s in playlist.segments]
    assert sequences == list(range(playlist.media_sequence,
                                   playlist.media_sequence + len(sequences)))
    for segment in playlist.segments:
        assert segment.duration <= TARGET + GOP_SECONDS
        status, headers, data = fetch(f"{base}/{segment.uri}")
        assert status == 200 and headers["Content-Type"] == "video/mp2t"
        assert "immutable" in headers["Cache-Control"]
        path = tmp_path / segment.uri
        path.write_bytes(data)
        first = subprocess.run(
            [ffprobe, "-v", "error", "-select_streams", "v", "-show_entries",
             "frame=key_frame,pict_type", "-read_intervals", "%+#1", "-of", "json", str(path)],
            capture_output=True, text=True, timeout=30, check=True)
        frame = json.loads(first.stdout)["frames"][0]
        assert frame["key_frame"] == 1, f"{segment.uri} starts with a keyframe"

    publisher.stop()
    node.wait_for_log(r"publish end stream=live/hls ")
    wait_until(lambda: m3u8.loads(fetch(f"{base}/index.m3u8")[2].decode()).is_endlist,
               message="the playlist ends when the stream ends")


def test_hls_for_unknown_stream_is_404(node: Node) -> None:
    assert fetch(f"http://127.0.0.1:{node.http}/live/none/index.m3u8")[0] == 404
    assert fetch(f"http://127.0.0.1:{node.http}/live/none/1-0.ts")[0] == 404
    assert fetch(f"http://127.0.0.1:{node.http}/live/..%2F/index.m3u8")[0] == 404


def test_no_hls_turns_it_off(node_factory: Callable[..., Node],
                             publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    node = node_factory("--no-hls")
    publish(node, "live/nohls")
    assert fetch(f"http://127.0.0.1:{node.http}/live/nohls/index.m3u8")[0] == 404
