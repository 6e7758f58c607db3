"""LL-HLS benchmark: the node's CPU per 1000 Low-Latency HLS clients with blocking reload.

Starts ``arcly serve`` (``--hls-variant lowlatency``, loopback) and an ffmpeg publisher replaying
a 720p30 H.264/AAC source with a 1 s GOP. Clients behave like hls.js in low-latency mode, each on
one kept-alive HTTP/1.1 connection: ask for the playlist, then over and over hold a blocking
request for the hinted next part (``_HLS_msn``/``_HLS_part``) and fetch that part once the
playlist lists it. Clients join at 200/s; after a settle time, a window measures the node's CPU
(utime + stime of its process from /proc), requests, bytes, how long blocking requests were
held and how far behind the newest part each client was. No peer in the same run serves LL-HLS
(nginx-rtmp and node-media-server serve MPEG-TS HLS only), so there is no ratio.

    make bench-llhls             # or: .venv/bin/python bench/llhls.py --clients 1000,200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import tools
from tests.support.processes import FfmpegPublisher, Node

KEY = "live/llbench"
HINT = re.compile(rb'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="([^"]*?-(\d+)\.(\d+)\.m4s)"')


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_source(ffmpeg: str, path: Path) -> None:
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=1280x720:rate=30", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=44100", "-t", "20", "-c:v", "libx264",
                    "-preset", "veryfast", "-tune", "zerolatency", "-b:v", "2500k", "-g", "30",
                    "-keyint_min", "30", "-sc_threshold", "0", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "128k", "-f", "flv", str(path)], check=True)


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.parts = 0
        self.bytes = 0
        self.errors = 0
        self.held: list[float] = []
        self.measuring = False


class Client:
    """One LL-HLS player on one kept-alive connection."""

    def __init__(self, port: int, stats: Stats) -> None:
        self.port = port
        self.stats = stats
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        body = await self.reader.readexactly(length)
        if b"Connection: close" in head:
            self.writer.close()
            self.writer = self.reader = None
        if self.stats.measuring:
            self.stats.requests += 1
            self.stats.bytes += len(body)
        return status, body

    async def run(self, stop: asyncio.Event) -> None:
        base = f"/{KEY}"
        status, playlist = await self.get(f"{base}/index.m3u8")
        while not stop.is_set():
            hint = HINT.search(playlist)
            if status != 200 or hint is None:
                self.stats.errors += 1
                await asyncio.sleep(0.5)
                status, playlist = await self.get(f"{base}/index.m3u8")
                continue
            uri, msn, part = hint.group(1).decode(), hint.group(2), hint.group(3)
            started = time.monotonic()
            status, playlist = await self.get(
                f"{base}/index.m3u8?_HLS_msn={msn.decode()}&_HLS_part={part.decode()}")
            if self.stats.measuring:
                self.stats.held.append(time.monotonic() - started)
            if status == 200:
                part_status, _ = await self.get(f"{base}/{uri}")
                if part_status == 200 and self.stats.measuring:
                    self.stats.parts += 1
                elif part_status != 200:
                    self.stats.errors += 1

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run_level(node: Node, clients: int, settle: float, seconds: float
                    ) -> dict[str, Any]:
    stats = Stats()
    stop = asyncio.Event()
    players = [Client(node.http, stats) for _ in range(clients)]
    tasks = []
    for index, player in enumerate(players):
        tasks.append(asyncio.create_task(player.run(stop)))
        if index % 20 == 19:
            await asyncio.sleep(0.1)  # 200 joins per second
    await asyncio.sleep(settle)
    cpu0, t0 = cpu_seconds(node.pid), time.monotonic()
    stats.measuring = True
    await asyncio.sleep(seconds)
    stats.measuring = False
    cpu1, t1 = cpu_seconds(node.pid), time.monotonic()
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for player in players:
        await player.close()
    elapsed = t1 - t0
    cpu = cpu1 - cpu0
    held = sorted(stats.held) or [0.0]
    return {
        "clients": clients,
        "cpu_percent": round(100 * cpu / elapsed, 1),
        "cpu_s_per_s_per_1000_clients": round(cpu / elapsed * 1000 / clients, 3),
        "requests_per_s": round(stats.requests / elapsed),
        "parts_per_client_per_s": round(stats.parts / elapsed / clients, 2),
        "mbps": round(stats.bytes * 8 / elapsed / 1e6, 1),
        "held_ms_p50": round(statistics.median(held) * 1000),
        "held_ms_p95": round(held[int(0.95 * (len(held) - 1))] * 1000),
        "errors": stats.errors,
    }


async def main(levels: list[int], settle: float, seconds: float, out: Path) -> None:
    found = tools.find()
    if found is None:
        raise SystemExit("no ffmpeg: run 'make test' once (it installs one)")
    source = out.parent / "source-720p-gop1s.flv"
    if not source.exists():
        make_source(found[0], source)
    node = Node("--hls-variant", "lowlatency", "--max-connections-per-ip", "20000",
                "--max-connections", "20000")
    publisher = FfmpegPublisher(found[0], source, f"rtmp://127.0.0.1:{node.rtmp}/{KEY}")
    results = []
    try:
        node.wait_for_stream(KEY, frames=8)
        await asyncio.sleep(3.0)
        idle0, idle_t0 = cpu_seconds(node.pid), time.monotonic()
        await asyncio.sleep(5.0)
        baseline = (cpu_seconds(node.pid) - idle0) / (time.monotonic() - idle_t0)
        print(f"no clients: node CPU {100 * baseline:.1f}% (ingest + cutting parts)",
              flush=True)
        for clients in levels:
            result = await run_level(node, clients, settle, seconds)
            result["cpu_above_idle_percent"] = round(result["cpu_percent"] - 100 * baseline, 1)
            results.append(result)
            print(f"clients={clients:5d}  node CPU {result['cpu_percent']:5.1f}% "
                  f"({result['cpu_above_idle_percent']:5.1f}% above no clients; "
                  f"{result['cpu_s_per_s_per_1000_clients']:.3f} CPU s/s per 1000 clients)  "
                  f"{result['requests_per_s']} req/s  {result['mbps']} Mbps  "
                  f"parts/client/s {result['parts_per_client_per_s']}  held p50 "
                  f"{result['held_ms_p50']} ms p95 {result['held_ms_p95']} ms  "
                  f"errors {result['errors']}", flush=True)
    finally:
        publisher.stop()
        node.stop()
    out.write_text(json.dumps({"benchmark": "llhls", "seconds": seconds,
                               "idle_cpu_percent": round(100 * baseline, 1),
                               "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="200,1000")
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "llhls.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main([int(n) for n in args.clients.split(",")], args.settle, args.seconds,
                         args.out))
    else:
        uvloop.run(main([int(n) for n in args.clients.split(",")], args.settle, args.seconds,
                        args.out))
