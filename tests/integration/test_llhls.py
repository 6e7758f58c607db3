"""Low-Latency HLS from real nodes: the playlist follows RFC 8216bis, ffprobe/ffmpeg read it,
blocking reload answers as parts appear, and every node serves the same bytes for a URI."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import m3u8
import pytest

from tests.conftest import HEIGHT, WIDTH
from tests.support.mp4 import first_sample_sync
from tests.support.processes import FfmpegPublisher, Node, RedisServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration
PART_TARGET = 0.2
VIDEO_TRACK = 1
HINT = re.compile(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="[^"]*?-(\d+)\.(\d+)\.m4s')


def fetch(url: str, timeout: float = 20) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def playlist_with(base: str, segments: int) -> tuple[str, m3u8.M3U8]:
    """The playlist, once it lists ``segments`` whole segments."""
    def ready() -> tuple[str, m3u8.M3U8] | None:
        status, _, body = fetch(f"{base}/index.m3u8")
        if status != 200:
            return None
        parsed = m3u8.loads(body.decode())
        return (body.decode(), parsed) if len([s for s in parsed.segments if s.uri]) >= \
            segments else None

    return wait_until(ready, timeout=40, message=f"no playlist with {segments} segments")


def test_a_low_latency_playlist_follows_rfc8216bis_and_decodes(
        node: Node, publish: Callable[[Node, str], FfmpegPublisher], ffmpeg: str,
        ffprobe: str, tmp_path: Path) -> None:
    publish(node, "live/ll")
    base = f"http://127.0.0.1:{node.http}/live/ll"
    status, headers, _ = fetch(f"{base}/index.m3u8")
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    text, playlist = playlist_with(base, 2)
    lines = text.splitlines()
    assert "#EXT-X-VERSION:9" in lines
    control = next(x for x in lines if x.startswith("#EXT-X-SERVER-CONTROL:"))
    part_target = float(next(x for x in lines if x.startswith("#EXT-X-PART-INF:")
                             ).split("=")[1])
    assert "CAN-BLOCK-RELOAD=YES" in control and part_target == PART_TARGET
    hold_back = float(control.split("PART-HOLD-BACK=")[1].split(",")[0])
    assert hold_back >= round(3 * part_target, 3)
    assert HINT.search(text), "the next part is hinted"
    assert playlist.segment_map, "EXT-X-MAP names the init segment"
    init_status, _, init = fetch(f"{base}/{playlist.segment_map[0].uri}")
    assert init_status == 200 and init[4:8] == b"ftyp"

    whole = [s for s in playlist.segments if s.uri and s.parts]
    assert whole, "recent segments are listed with their parts"
    concatenated = init
    for segment in whole:
        status, headers, data = fetch(f"{base}/{segment.uri}")
        assert status == 200 and "immutable" in headers["Cache-Control"]
        parts = []
        for part in segment.parts:
            assert part.duration <= part_target, f"{part.uri} lasts {part.duration}"
            status, headers, body = fetch(f"{base}/{part.uri}")
            assert status == 200 and headers["Content-Type"] == "video/mp4"
            assert "immutable" in headers["Cache-Control"]
            assert bool(part.independent) == first_sample_sync(body, VIDEO_TRACK), \
                f"{part.uri}: INDEPENDENT=YES exactly on parts that start with a keyframe"
            parts.append(body)
        assert data == b"".join(parts), f"{segment.uri} is its parts back to back"
        assert abs(sum(p.duration for p in segment.parts) - segment.duration) < 0.002
        concatenated += data
    assert whole[0].parts[0].independent, "a segment starts with an independent part"

    joined = tmp_path / "init-and-parts.mp4"
    joined.write_bytes(concatenated)
    decode = subprocess.run([ffmpeg, "-hide_banner", "-v", "error", "-i", str(joined),
                             "-f", "null", "-"], capture_output=True, text=True, timeout=60)
    assert decode.returncode == 0 and decode.stderr.strip() == "", decode.stderr

    probe = subprocess.run(
        [ffprobe, "-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "json",
         f"{base}/index.m3u8"], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    codecs = {s["codec_name"]: s for s in json.loads(probe.stdout)["streams"]}
    assert set(codecs) == {"h264", "aac"}
    assert (codecs["h264"]["width"], codecs["h264"]["height"]) == (WIDTH, HEIGHT)
    live = subprocess.run(
        [ffmpeg, "-hide_banner", "-v", "error", "-i", f"{base}/index.m3u8", "-t", "10",
         "-f", "null", "-", "-progress", "pipe:1", "-nostats"],
        capture_output=True, text=True, timeout=90)
    assert live.returncode == 0 and live.stderr.strip() == "", live.stderr
    out_time = [x for x in live.stdout.splitlines() if x.startswith("out_time_us=")]
    assert int(out_time[-1].split("=")[1]) >= 9_900_000, "decoded at least 10 s"


def test_blocking_reload_answers_as_the_part_appears_and_refuses_the_far_future(
        node: Node, publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    publish(node, "live/block")
    base = f"http://127.0.0.1:{node.http}/live/block"
    text, _ = playlist_with(base, 1)
    held: list[float] = []
    for _ in range(10):  # like a player: ask for the hinted part, again and again
        hint = HINT.search(text)
        assert hint is not None
        msn, part = int(hint.group(1)), int(hint.group(2))
        started = time.monotonic()
        status, _, body = fetch(f"{base}/index.m3u8?_HLS_msn={msn}&_HLS_part={part}")
        held.append(time.monotonic() - started)
        text = body.decode()
        assert status == 200 and f"-{msn}.{part}.m4s" in text, "the answer has that part"
    print(f"\nblocking reload held p50 {statistics.median(held) * 1000:.0f} ms, "
          f"max {max(held) * 1000:.0f} ms (part target {PART_TARGET * 1000:.0f} ms)")
    # Each request waits for the part after the last one listed: about one part, never more
    # than one part after it closes (plus this machine's noise).
    assert max(held) <= 2 * PART_TARGET + 0.5
    hint = HINT.search(text)
    assert hint is not None
    far = int(hint.group(1)) + 5
    started = time.monotonic()
    status, _, body = fetch(f"{base}/index.m3u8?_HLS_msn={far}&_HLS_part=0")
    assert status == 400 and time.monotonic() - started < 2.0, "refused, not held"
    assert fetch(f"{base}/index.m3u8?_HLS_part=1")[0] == 400, "_HLS_part needs _HLS_msn"
    # The hinted part itself is held until it exists.
    uri = re.search(r'PRELOAD-HINT:TYPE=PART,URI="([^"]+)"', text)
    assert uri is not None
    status, _, part_bytes = fetch(f"{base}/{uri.group(1)}")
    assert status == 200 and part_bytes[4:8] == b"moof"


def test_origin_and_edges_serve_identical_init_parts_and_segments(
        node_factory: Callable[..., Node], redis_server: RedisServer,
        publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    def cluster_node(role: str, node_id: str) -> Node:
        return node_factory("--redis-url", redis_server.url, "--node-id", node_id, role=role,
                            env={"ARCLY_RELAY_TOKEN": "llhls-token"})

    origin = cluster_node("origin", "o1")
    early = cluster_node("edge", "e1")
    publish(origin, "live/same")
    bases = {name: f"http://127.0.0.1:{n.http}/live/same"
             for name, n in (("origin", origin), ("early", early))}
    for base in bases.values():
        playlist_with(base, 0)  # segmenting from now on
    time.sleep(7.0)
    late = cluster_node("edge", "e2")  # an edge that starts 7 s later
    bases["late"] = f"http://127.0.0.1:{late.http}/live/same"
    playlist_with(bases["late"], 1)

    listed: dict[str, set[str]] = {}
    for name, base in bases.items():
        parsed = m3u8.loads(fetch(f"{base}/index.m3u8")[2].decode())
        uris = {s.uri for s in parsed.segments if s.uri}
        uris |= {p.uri for s in parsed.segments for p in s.parts}
        uris |= {m.uri for m in parsed.segment_map}
        listed[name] = uris
    common = set.intersection(*listed.values())
    assert any(u.endswith(".mp4") for u in common), "the same init segment"
    assert sum(1 for u in common if re.search(r"-\d+\.m4s$", u)) >= 1, "a common segment"
    assert sum(1 for u in common if re.search(r"-\d+\.\d+\.m4s$", u)) >= 5, "common parts"
    for uri in sorted(common):
        bodies = {name: fetch(f"{base}/{uri}") for name, base in bases.items()}
        assert all(status == 200 for status, _, _ in bodies.values()), uri
        assert len({body for _, _, body in bodies.values()}) == 1, f"{uri} differs"
    print(f"\n{len(common)} URIs served byte-identical by the origin and both edges")
