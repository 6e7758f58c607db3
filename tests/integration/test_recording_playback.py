"""Recording playback from a real node: two 10 s ffmpeg publishes are recorded once for the
module, then listed over the API, read by ffprobe over HTTP with byte ranges, played as HLS VOD
made from the FLV, and cut as one FLV across the two recordings — with the app's play key."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GOP_SECONDS, HEIGHT, WIDTH
from tests.support.processes import FfmpegPublisher, Node
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

KEY = "live/pb"
PLAY_KEY = "viewer-key"
API_TOKEN = "api-s3cret"
SECONDS = 10


@dataclass
class Recorded:
    node: Node
    root: Path

    def url(self, path: str, *, key: bool = True) -> str:
        sep = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.node.http}{path}{sep + 'key=' + PLAY_KEY if key else ''}"

    def recordings(self) -> list[dict[str, Any]]:
        listing: list[dict[str, Any]] = self.node.api(f"/recordings/{KEY}")["recordings"]
        return listing


@pytest.fixture(scope="module")
def recorded(ffmpeg: str, source_flv: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """A node (play needs a key in app ``live``; the API a token) that recorded two 10 s
    publishes of ``live/pb``, one right after the other."""
    root = tmp_path_factory.mktemp("recordings")
    auth = tmp_path_factory.mktemp("auth") / "auth.toml"
    auth.write_text(f'[apps.live]\nprovider = "static"\nplay_keys = ["{PLAY_KEY}"]\n')
    node = Node("--record", str(root), "--auth-config", str(auth), "--api-token", API_TOKEN)
    try:
        for count in (1, 2):
            publisher = FfmpegPublisher(ffmpeg, source_flv,
                                        f"rtmp://127.0.0.1:{node.rtmp}/{KEY}", seconds=SECONDS)
            assert publisher.proc.wait(60) == 0
            wait_until(lambda n=count: node.log_text().count(  # type: ignore[misc]
                f"recording finalized stream={KEY} ") >= n, timeout=20,
                message="recording not finalized")
        yield Recorded(node, root)
    finally:
        node.stop()


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _ffprobe(ffprobe: str, target: str, *args: str) -> tuple[dict[str, Any], str]:
    result = subprocess.run([ffprobe, "-hide_banner", "-of", "json", *args, target],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    document: dict[str, Any] = json.loads(result.stdout)
    return document, result.stderr


def decoded_seconds(ffmpeg: str, target: str) -> tuple[float, str]:
    """How much of ``target`` (a file or URL) ffmpeg decodes, and what it complained of."""
    result = subprocess.run([ffmpeg, "-hide_banner", "-v", "error", "-i", target, "-f", "null",
                             "-", "-progress", "pipe:1", "-nostats"],
                            capture_output=True, text=True, timeout=120)
    times = [int(line.split("=")[1]) for line in result.stdout.splitlines()
             if line.startswith("out_time_us=") and line.split("=")[1].isdigit()]
    return (max(times) / 1e6 if times else 0.0), result.stderr.strip()


def _stamp(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def test_the_listing_shows_both_recordings_with_their_duration_and_size(
        recorded: Recorded) -> None:
    recordings = recorded.recordings()
    assert len(recordings) == 2
    starts = [datetime.fromisoformat(r["start"]).timestamp() for r in recordings]
    for recording in recordings:
        path = recorded.root / KEY / recording["name"]
        assert recording["size"] == path.stat().st_size
        assert abs(recording["duration"] - SECONDS) <= 0.5, recording
        assert not recording["live"] and recording["hls"] == "generated"
    gap = starts[1] - (starts[0] + recordings[0]["duration"])
    print(f"\nrecordings {[r['duration'] for r in recordings]} s, gap {gap:.3f} s")
    assert 0 <= gap < 5
    keys = recorded.node.api("/recordings")["streams"]
    assert [(s["key"], s["recordings"]) for s in keys] == [(KEY, 2)]
    status, _, _ = _get(recorded.url(f"/api/v1/recordings/{KEY}", key=False))
    assert status == 401, "the API token guards the listing"


def test_ffprobe_reads_and_seeks_a_served_recording_with_range_requests(
        recorded: Recorded, ffprobe: str) -> None:
    recording = recorded.recordings()[0]
    url = recorded.url(recording["url"])
    probe, log = _ffprobe(ffprobe, url, "-v", "debug", "-read_intervals", "5%+#3",
                          "-show_entries", "format=duration:stream=codec_name,width,height"
                          ":packet=pts_time,stream_index")
    assert abs(float(probe["format"]["duration"]) - recording["duration"]) <= 0.1
    assert {s["codec_name"] for s in probe["streams"]} == {"h264", "aac"}
    assert (probe["streams"][0].get("width"), probe["streams"][0].get("height")) in \
        ((WIDTH, HEIGHT), (None, None))
    offsets = [int(n) for n in re.findall(r"Range: bytes=(\d+)-", log)]
    print(f"\nffprobe asked for ranges from {offsets}")
    assert any(offset > 0 for offset in offsets), "ffprobe seeked with a range request"
    assert any(4.0 <= float(p["pts_time"]) <= 6.0 for p in probe["packets"]), \
        "seeked to 5 s over HTTP"
    data = (recorded.root / KEY / recording["name"]).read_bytes()
    status, headers, body = _get(url, Range="bytes=1000-65535")
    assert (status, body) == (206, data[1000:65536])
    assert headers["Content-Range"] == f"bytes 1000-65535/{len(data)}"
    status, headers, _ = _get(url, Range=f"bytes={len(data)}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"


def test_hls_vod_made_from_the_flv_decodes_whole(recorded: Recorded, ffmpeg: str) -> None:
    recording = recorded.recordings()[1]
    status, _, playlist = _get(recorded.url(recording["hls_url"]))
    assert status == 200 and b"#EXT-X-PLAYLIST-TYPE:VOD" in playlist
    assert f"?key={PLAY_KEY}".encode() in playlist, "the credentials go on to the segments"
    # ffmpeg's HLS demuxer fetches the segments through the node.
    seconds, errors = decoded_seconds(ffmpeg, recorded.url(recording["hls_url"]))
    print(f"\nHLS VOD from the FLV: {seconds:.3f} s decoded for a "
          f"{recording['duration']:.3f} s recording")
    assert errors == "" and abs(seconds - recording["duration"]) <= 0.5


@pytest.mark.parametrize("before", [4.0, 2.5, 1.0])
def test_a_playback_window_across_the_two_recordings_decodes_to_its_length(
        recorded: Recorded, before: float, ffmpeg: str, ffprobe: str, tmp_path: Path) -> None:
    """A 5 s window starting ``before`` seconds before the first recording ends."""
    first = recorded.recordings()[0]
    boundary = datetime.fromisoformat(first["start"]).timestamp() + first["duration"]
    status, headers, body = _get(recorded.url(
        f"/playback/{KEY}.flv?start={_stamp(boundary - before)}&duration=5"))
    assert status == 200 and headers["Content-Type"] == "video/x-flv"
    out = tmp_path / "window.flv"
    out.write_bytes(body)
    seconds, errors = decoded_seconds(ffmpeg, str(out))
    frames, _ = _ffprobe(ffprobe, str(out), "-v", "error", "-select_streams", "v",
                         "-show_entries", "frame=key_frame,pict_type", "-read_intervals",
                         "%+#1")
    print(f"\nplayback window of 5 s from {before} s before the boundary: {seconds:.3f} s "
          "decoded")
    assert errors == ""
    assert abs(seconds - 5.0) <= GOP_SECONDS
    assert frames["frames"][0]["key_frame"] == 1, "starts on a keyframe"
    # It spans both recordings: longer than what the first one has left.
    assert seconds > before + 0.5


def test_playback_and_files_need_the_apps_play_key(recorded: Recorded) -> None:
    recording = recorded.recordings()[0]
    window = f"/playback/{KEY}.flv?start={recording['start']}&duration=2"
    for url in (recorded.url(window, key=False), recorded.url(window) + "x",
                recorded.url(recording["url"], key=False),
                recorded.url(recording["hls_url"], key=False)):
        status, _, body = _get(url)
        assert status == 403, (url, status, body)


@pytest.mark.parametrize(("path", "status"), [
    (f"/playback/{KEY}.flv", 400),
    (f"/playback/{KEY}.flv?start=noon&duration=5", 400),
    (f"/playback/{KEY}.flv?start=2001-01-01T00:00:00Z&duration=5", 404),
    ("/recordings/live/pb/..%2F..%2F..%2Fetc%2Fpasswd", 404),
    ("/recordings/live/..%2F..%2Fetc/passwd.flv", 404),
    ("/recordings/live/pb/20000101-000000-1/index.m3u8", 404),
])
def test_bad_requests_are_refused_with_a_reason(recorded: Recorded, path: str,
                                                status: int) -> None:
    got, _, body = _get(recorded.url(path))
    assert got == status and body.strip(), (path, got, body)
