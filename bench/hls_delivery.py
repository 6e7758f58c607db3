"""HLS delivery benchmark (issue 18, target 5): CPU per GB served to players, arcly against nginx
serving nginx-rtmp's HLS files (``sendfile`` from the page cache: the efficient anchor).

Each server gets the same RTMP publish (the load client replays the 720p30 2.5 Mbit/s source
with a 2 s GOP) and cuts MPEG-TS segments of ~2 s: arcly with ``--hls-variant mpegts
--hls-on-publish``, nginx-rtmp with ``hls on`` into a directory that nginx's HTTP server
serves. Then N clients behave like players, each on one kept-alive HTTP/1.1 connection: fetch
the playlist, fetch the newest segments once each (starting three segments from the live edge),
and fetch the playlist again every target duration. Clients run in a process of their own
(joining at ``--rate``/s); the window measures the server's CPU (its process tree from /proc)
and the bytes the clients received. Rounds are interleaved (arcly, nginx, arcly, nginx, ...;
five by default); the median CPU s/GB of each server is kept and the ratio printed (target <= 1.5x).

    make bench-hls               # or: .venv/bin/python bench/hls_delivery.py --clients 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from streaming import (
    Arcly,
    Nginx,
    Server,
    _client,
    source,
    stop,
    tree_cpu_split,
)

KEY = "bench"
_TARGET = re.compile(rb"#EXT-X-TARGETDURATION:(\d+)")
_LENGTH = re.compile(rb"(?i)content-length:\s*(\d+)")


# --- servers ------------------------------------------------------------------------------------

class HlsServer(Server):
    """A server of streaming.py (start, stop, ports, log) that also serves HLS over HTTP."""

    protocols = ("rtmp", "flv")  # both ports are waited for at start (HTTP: the HLS here)

    @property
    def playlist(self) -> str:
        raise NotImplementedError


class ArclyHls(HlsServer, Arcly):
    """streaming.py's arcly, cutting ~2 s MPEG-TS segments from the publish on."""

    name = "arcly"

    def command(self) -> list[str]:
        return [*super().command(), "--no-webrtc", "--hls-variant", "mpegts",
                "--hls-on-publish", "--hls-segment-seconds", "2"]

    @property
    def playlist(self) -> str:
        return f"/live/{KEY}/index.m3u8"


class NginxHls(HlsServer):
    name = "nginx-rtmp-hls"

    def command(self) -> list[str]:
        prefix = self.workdir / "nginx-hls"
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        (prefix / "hls").mkdir(exist_ok=True)
        conf = (REPO / "bench" / "nginx-hls.conf").read_text()
        conf = (conf.replace("@PREFIX@", str(prefix)).replace("@PORT@", str(self.rtmp_port))
                .replace("@HTTP_PORT@", str(self.http_port)))
        (prefix / "nginx.conf").write_text(conf)
        return [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(prefix / "nginx.conf"),
                "-p", str(prefix)]

    @property
    def playlist(self) -> str:
        return f"/hls/{KEY}.m3u8"


SERVERS: dict[str, type[HlsServer]] = {"arcly": ArclyHls, "nginx-rtmp-hls": NginxHls}


# --- the players (``clients`` subcommand, a process of its own) ----------------------------------

class _Response(asyncio.Protocol):
    """One kept-alive connection: answers are counted, only playlists are kept."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.remaining = -1  # body bytes still due; -1: reading a head
        self.keep = False
        self.body = bytearray()
        self.done: asyncio.Future[bytes] | None = None
        self.received = 0
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("server closed the connection"))

    def request(self, path: str, keep: bool) -> asyncio.Future[bytes]:
        assert self.transport is not None
        self.keep, self.body, self.remaining = keep, bytearray(), -1
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        return self.done

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.remaining < 0:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = bytes(self.buffer[:end]), bytes(self.buffer[end + 4:])
            self.buffer.clear()
            found = _LENGTH.search(head)
            status = int(head.split(b" ", 2)[1])
            if found is None or status != 200:
                self._finish(ConnectionError(f"status {status}"))
                return
            self.remaining = int(found.group(1))
            data = rest
        take = min(len(data), self.remaining)
        if self.keep:
            self.body += data[:take]
        self.remaining -= take
        if self.remaining == 0:
            self._finish(None)

    def _finish(self, error: Exception | None) -> None:
        done, self.done = self.done, None
        self.remaining = -1
        if done is not None and not done.done():
            if error is None:
                done.set_result(bytes(self.body))
            else:
                done.set_exception(error)


async def _player(port: int, playlist: str, stats: dict[str, Any], stop_at: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        _, conn = await loop.create_connection(_Response, "127.0.0.1", port)
    except OSError:
        stats["errors"] += 1
        return
    stats["connections"].append(conn)
    base = playlist.rsplit("/", 1)[0]
    fetched: set[bytes] = set()
    started = False
    try:
        while loop.time() < stop_at:
            text = await conn.request(playlist, keep=True)
            uris = [line.strip() for line in text.split(b"\n")
                    if line.strip() and not line.startswith(b"#")]
            fresh = [u for u in (uris if started else uris[-3:]) if u not in fetched]
            started = True
            for uri in fresh:
                fetched.add(uri)
                await conn.request(f"{base}/{uri.decode()}", keep=False)
                stats["segments"] += 1
            target = _TARGET.search(text)
            await asyncio.sleep(float(target.group(1)) if target else 2.0)
    except (ConnectionError, OSError):
        stats["errors"] += 1


async def _players(opts: argparse.Namespace) -> None:
    def emit(event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, **fields}), flush=True)

    def own_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    stats: dict[str, Any] = {"errors": 0, "segments": 0, "connections": []}
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + opts.count / opts.rate + opts.settle + opts.window + 5
    tasks = []
    for _ in range(opts.count):
        tasks.append(asyncio.create_task(_player(opts.port, opts.playlist, stats, stop_at)))
        await asyncio.sleep(1 / opts.rate)
    await asyncio.sleep(opts.settle)

    def received() -> int:
        return sum(c.received for c in stats["connections"])

    emit("window_start", bytes=received(), cpu=own_cpu(), segments=stats["segments"])
    await asyncio.sleep(opts.window)
    emit("window_end", bytes=received(), cpu=own_cpu(), segments=stats["segments"])
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    emit("summary", errors=stats["errors"], connected=len(stats["connections"]))


# --- a run --------------------------------------------------------------------------------------

def run(server: HlsServer, clients: int, src: Path, opts: argparse.Namespace) -> dict[str, Any]:
    server.start()
    feed = players = None
    try:
        feed = _client(["publish", "--url", f"rtmp://127.0.0.1:{server.rtmp_port}/live/{KEY}",
                        "--source", str(src), "--window", "0"])
        time.sleep(9.0)  # a playlist with three segments on both servers
        players = subprocess.Popen(
            [sys.executable, __file__, "clients", "--port", str(server.http_port),
             "--playlist", server.playlist, "--count", str(clients), "--rate", str(opts.rate),
             "--settle", str(opts.settle), "--window", str(opts.window)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        marks: dict[str, Any] = {}
        assert players.stdout is not None
        for line in players.stdout:
            event = json.loads(line)
            if event["event"] in ("window_start", "window_end"):
                event["server_cpu"] = tree_cpu_split(server.pid)
                event["t"] = time.monotonic()
            marks[event["event"]] = event
            if event["event"] == "summary":
                break
    finally:
        stop(players)
        stop(feed)
        server.stop()
    start, end = marks["window_start"], marks["window_end"]
    seconds = end["t"] - start["t"]
    gbytes = (end["bytes"] - start["bytes"]) / 1e9
    user = end["server_cpu"][0] - start["server_cpu"][0]
    system = end["server_cpu"][1] - start["server_cpu"][1]
    cpu = user + system
    return {"server": server.name, "clients": clients,
            "egress_mbps": round(gbytes * 8000 / seconds, 1),
            "cpu_s_per_gb": round(cpu / gbytes, 3) if gbytes else None,
            # user: the server's own work; system: mostly the kernel's send
            "user_s_per_gb": round(user / gbytes, 3) if gbytes else None,
            "system_s_per_gb": round(system / gbytes, 3) if gbytes else None,
            "server_cpu_pct": round(cpu * 100 / seconds, 1),
            "segments_per_s": round((end["segments"] - start["segments"]) / seconds, 1),
            "client_cpu_pct": round((end["cpu"] - start["cpu"]) * 100 / seconds, 1),
            "errors": marks["summary"]["errors"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    players = sub.add_parser("clients")
    players.add_argument("--port", type=int, required=True)
    players.add_argument("--playlist", required=True)
    players.add_argument("--count", type=int, required=True)
    for p in (players, parser):
        p.add_argument("--rate", type=float, default=200.0, help="players joining per second")
        p.add_argument("--settle", type=float, default=4.0)
        p.add_argument("--window", type=float, default=12.0)
    parser.add_argument("--clients", default="1000")
    parser.add_argument("--servers", default="arcly,nginx-rtmp-hls")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "hls_delivery.json")
    opts = parser.parse_args()
    if opts.command == "clients":
        asyncio.run(_players(opts))
        return
    if Nginx.available():
        print(f"skipping nginx-rtmp-hls: {Nginx.available()}")
    names = [n for n in opts.servers.split(",") if n != "nginx-rtmp-hls" or not Nginx.available()]
    src = source()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="arcly-hls-bench-") as tmp:
        for clients in [int(n) for n in opts.clients.split(",")]:
            rounds: dict[str, list[dict[str, Any]]] = {}
            for _ in range(opts.repeat):
                for name in names:
                    row = run(SERVERS[name](Path(tmp)), clients, src, opts)
                    rounds.setdefault(name, []).append(row)
                    print(json.dumps(row), flush=True)
            for runs in rounds.values():
                chosen = dict(sorted(runs, key=lambda r: r["cpu_s_per_gb"] or 1e9)[len(runs) // 2])
                chosen["cpu_s_per_gb_rounds"] = [r["cpu_s_per_gb"] for r in runs]
                rows.append(chosen)
            mine = next((r for r in rows if r["server"] == "arcly" and r["clients"] == clients),
                        None)
            peer = next((r for r in rows if r["server"] == "nginx-rtmp-hls"
                         and r["clients"] == clients), None)
            if mine and peer and mine["cpu_s_per_gb"] and peer["cpu_s_per_gb"]:
                ratio = mine["cpu_s_per_gb"] / peer["cpu_s_per_gb"]
                per_round = [round(a / b, 2) for a, b in zip(
                    mine["cpu_s_per_gb_rounds"], peer["cpu_s_per_gb_rounds"], strict=False)]
                print(f"\n{clients} HLS players: arcly {mine['cpu_s_per_gb']} vs nginx "
                      f"{peer['cpu_s_per_gb']} CPU s/GB = {ratio:.2f}x (rounds {per_round}); "
                      f"{'MET' if ratio <= 1.5 else 'NOT MET'} (target <= 1.5x)")
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({"benchmark": "hls_delivery", "rows": rows}, indent=2))
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
