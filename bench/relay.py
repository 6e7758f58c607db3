"""Relay benchmark: the latency the origin -> edge hop adds, and the edge's CPU per relayed MB.

Starts a real redis-server, one origin and one edge (loopback), then for 1, 10 and 50 streams:
N light publishers replay a generated H.264/AAC FLV in real time into the origin; for every
stream one HTTP-FLV viewer reads it from the origin and one from the edge. A frame's hop latency
is its arrival time at the edge viewer minus its arrival time at the origin viewer (frames
matched by their publish timestamp). Edge CPU is utime+stime of the edge process from /proc.

    make bench-relay            # or: .venv/bin/python bench/relay.py --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from arcly.media import flv
from tests import tools
from tests.support.flv_reader import HttpFlvReader
from tests.support.media import load_tags
from tests.support.processes import Node, RedisServer
from tests.support.rtmp_client import RtmpClient

TOKEN = "bench-token"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_source(path: Path) -> None:
    found = tools.find()
    if found is None:
        raise SystemExit("no ffmpeg: run 'make test' once (it installs one)")
    subprocess.run([found[0], "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=30", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=44100", "-t", "20", "-c:v", "libx264",
                    "-preset", "veryfast", "-tune", "zerolatency", "-b:v", "2500k", "-g", "60",
                    "-keyint_min", "60", "-sc_threshold", "0", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "128k", "-f", "flv", str(path)], check=True)


async def publisher(port: int, name: str, tags: list[flv.Tag], stop: asyncio.Event) -> None:
    client = await RtmpClient.connect("127.0.0.1", port, "bench")
    status = await client.publish(name)
    if status.code != "NetStream.Publish.Start":
        raise RuntimeError(f"publish {name}: {status}")
    started = time.monotonic()
    offset = 0
    span = tags[-1].timestamp + 33
    while not stop.is_set():
        for tag in tags:
            due = started + (offset + tag.timestamp) / 1000
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set():
                break
            if offset and tag.tag_type != flv.TAG_SCRIPT and (
                    flv.is_video_config(tag.body) or flv.is_audio_config(tag.body)):
                continue
            client.send_media(tag.tag_type, offset + tag.timestamp, tag.body)
        offset += span
    await client.close()


async def viewer(port: int, name: str, arrivals: dict[int, float], counter: list[int],
                 stop: asyncio.Event) -> None:
    reader = await HttpFlvReader.open(port, f"/bench/{name}.flv")
    await reader.read_header()
    while not stop.is_set():
        try:
            tag = await reader.next_tag(5)
        except (EOFError, TimeoutError):
            break
        counter[0] += len(tag.body) + 15
        if tag.tag_type == flv.TAG_VIDEO and not flv.is_video_config(tag.body):
            arrivals.setdefault(tag.timestamp, time.monotonic())
    await reader.close()


async def run_level(origin: Node, edge: Node, tags: list[flv.Tag], streams: int,
                    seconds: float) -> dict[str, float]:
    stop = asyncio.Event()
    names = [f"s{i}" for i in range(streams)]
    pubs = [asyncio.create_task(publisher(origin.rtmp, n, tags, stop)) for n in names]
    await asyncio.sleep(1.5)
    at_origin = {n: {} for n in names}  # type: dict[str, dict[int, float]]
    at_edge = {n: {} for n in names}  # type: dict[str, dict[int, float]]
    edge_bytes = [0]
    origin_bytes = [0]
    views = [asyncio.create_task(viewer(origin.http, n, at_origin[n], origin_bytes, stop))
             for n in names]
    views += [asyncio.create_task(viewer(edge.http, n, at_edge[n], edge_bytes, stop))
              for n in names]
    await asyncio.sleep(2.0)  # past the GOP bursts
    cpu0, bytes0, t0 = cpu_seconds(edge.pid), edge_bytes[0], time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, bytes1, t1 = cpu_seconds(edge.pid), edge_bytes[0], time.monotonic()
    stop.set()
    await asyncio.gather(*pubs, *views, return_exceptions=True)
    hops = [(at_edge[n][ts] - at_origin[n][ts]) * 1000
            for n in names for ts in at_edge[n]
            if ts in at_origin[n] and t0 <= at_edge[n][ts] <= t1]
    hops.sort()
    relayed_mb = (bytes1 - bytes0) / 1e6
    return {
        "streams": streams,
        "hop_ms_p50": round(statistics.median(hops), 2) if hops else float("nan"),
        "hop_ms_p95": round(hops[int(len(hops) * 0.95)], 2) if hops else float("nan"),
        "frames_matched": len(hops),
        "relayed_mbps": round(relayed_mb * 8 / (t1 - t0), 1),
        "edge_cpu_seconds": round(cpu1 - cpu0, 3),
        "edge_cpu_ms_per_mb": round((cpu1 - cpu0) * 1000 / relayed_mb, 2) if relayed_mb else 0,
    }


async def main(levels: list[int], seconds: float, out: Path) -> None:
    source = out.parent / "source-720p.flv"
    if not source.exists():
        make_source(source)
    tags = load_tags(source)
    redis = RedisServer()
    # Viewers write each frame at once here (no pacing): the hop itself is what is measured.
    common = ["--redis-url", redis.url, "--no-hls", "--write-coalesce-ms", "0",
              "--idle-timeout", "off"]
    env = {"ARCLY_RELAY_TOKEN": TOKEN}
    origin = Node(*common, "--node-id", "bench-origin", role="origin", env=env)
    edge = Node(*common, "--node-id", "bench-edge", role="edge", env=env)
    results = []
    try:
        for streams in levels:
            results.append(await run_level(origin, edge, tags, streams, seconds))
            print(f"streams={streams:3d}  hop p50={results[-1]['hop_ms_p50']:7.2f} ms  "
                  f"p95={results[-1]['hop_ms_p95']:7.2f} ms  relayed="
                  f"{results[-1]['relayed_mbps']:6.1f} Mbps  edge CPU="
                  f"{results[-1]['edge_cpu_ms_per_mb']:6.2f} ms/MB", flush=True)
    finally:
        edge.stop()
        origin.stop()
        redis.stop()
    out.write_text(json.dumps({"benchmark": "relay", "seconds": seconds,
                               "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,10,50")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "relay.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(main([int(n) for n in args.streams.split(",")], args.seconds, args.out))
