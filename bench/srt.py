"""SRT ingest benchmark: the node's CPU per ingested GB over SRT, beside RTMP of the same source.

    make bench-srt               # or: .venv/bin/python bench/srt.py --publishers 1,10,20

The source is the one of ``streaming.py`` (720p30 H.264 2.5 Mbps, GOP 2 s, + AAC; cached in
~/.cache/arcly-bench). For each publisher count N and each protocol, a fresh node
(``arcly serve`` on loopback, SRT listening) gets N ffmpeg publishers into N keys
(``-re -stream_loop -1 -c copy``): ``-f mpegts srt://...?streamid=publish:live/KEY&pkt_size=1316``
for SRT, ``-f flv rtmp://.../live/KEY`` for RTMP. All live, ``--settle`` seconds, then a
``--window`` second window: the node's CPU seconds (utime + stime of its process from /proc,
every thread, libsrt's included), the media bytes it ingested (``bytes_in`` summed over
``/api/v1/streams``: frame payloads, the same measure for both protocols) -> CPU s per GB and
CPU % of a core; beside it the publishers' own CPU and how busy the whole machine was (a level
above 90 % is marked CONTENDED: its figures are not the node's alone). For SRT, the figures of
every SRT connection from ``/api/v1/srt`` (lost, retransmitted, dropped packets; ~0 on
loopback) and the TS demuxer's continuity errors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from streaming import source
from webrtc import cpu_seconds, machine_cpu, node_problems

from tests import tools
from tests.support.processes import Node

APP = "live"
CONTENDED_PCT = 90.0
# SRT connection figures summed over connections (names of /api/v1/srt)
SRT_COUNTERS = ("packets_received", "packets_lost_received", "packets_retransmitted",
                "packets_dropped_received", "packets_lost_sent", "packets_dropped_sent")
DEMUX_COUNTERS = ("cc_errors", "sync_losses", "skipped_bytes", "transport_errors",
                  "bad_packets", "duplicates")


class Publisher:
    """One ffmpeg replaying the source in real time, in its own session, stopped by pid."""

    def __init__(self, ffmpeg: str, src: Path, protocol: str, port: int, name: str) -> None:
        if protocol == "srt":
            out = ["-f", "mpegts",
                   f"srt://127.0.0.1:{port}?streamid=publish:{APP}/{name}&pkt_size=1316"]
        else:
            out = ["-f", "flv", f"rtmp://127.0.0.1:{port}/{APP}/{name}"]
        self.key = f"{APP}/{name}"
        self.proc = subprocess.Popen(
            [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "warning", "-re",
             "-stream_loop", "-1", "-i", str(src), "-c", "copy", *out],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
        self.stderr: deque[str] = deque(maxlen=20)
        self.warnings = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.warnings += 1
            self.stderr.append(line.rstrip("\n"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        try:
            return cpu_seconds(self.proc.pid)
        except (OSError, IndexError):  # exited (and reaped)
            return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)


def wait_for(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} after {timeout:.0f} s")
        time.sleep(0.1)


def live_streams(node: Node) -> dict[str, dict[str, Any]]:
    """The node's live streams (with frames in) by key."""
    return {s["key"]: s for s in node.api("/streams")["streams"] if s["frames_in"] > 0}


def srt_totals(node: Node) -> dict[str, Any]:
    """The SRT connections' counters summed (``publishers``: how many were publishing)."""
    connections = node.api("/srt")["connections"]
    totals: dict[str, Any] = {name: 0 for name in (*SRT_COUNTERS, *DEMUX_COUNTERS)}
    totals["publishers"] = sum(1 for c in connections if c.get("mode") == "publish")
    rtts = []
    for c in connections:
        for name in SRT_COUNTERS:
            totals[name] += c.get(name, 0) or 0
        for name in DEMUX_COUNTERS:
            totals[name] += (c.get("demux") or {}).get(name, 0) or 0
        if c.get("rtt_ms") is not None:
            rtts.append(c["rtt_ms"])
    totals["rtt_ms_max"] = max(rtts) if rtts else None
    return totals


def sample(node: Node, publishers: list[Publisher], protocol: str, end: bool) -> dict[str, Any]:
    """One edge of the window. The API calls are kept outside the CPU window: before the CPU
    reading at its start, after it at its end."""
    mark: dict[str, Any] = {}

    def api() -> None:
        mark["streams"] = {k: (s["bytes_in"], s["frames_in"], s["session"])
                           for k, s in live_streams(node).items()}
        if protocol == "srt":
            mark["srt"] = srt_totals(node)

    if not end:
        api()
    mark.update(t=time.monotonic(), node_cpu=cpu_seconds(node.pid), machine=machine_cpu(),
                ffmpeg_cpu=sum(p.cpu() for p in publishers))
    if end:
        api()
    return mark


def ingested(start: dict[str, Any], end: dict[str, Any]) -> tuple[int, int]:
    """Bytes and frames in over the window, summed over streams (a stream whose publish
    restarted in between counts from zero)."""
    total_bytes = total_frames = 0
    for key, (b1, f1, session) in end["streams"].items():
        b0, f0, session0 = start["streams"].get(key, (0, 0, None))
        if session0 != session:
            b0 = f0 = 0
        total_bytes += b1 - b0
        total_frames += f1 - f0
    return total_bytes, total_frames


def run_level(protocol: str, count: int, ffmpeg: str, src: Path,
              opts: argparse.Namespace) -> dict[str, Any]:
    """A fresh node, N publishers of one protocol, the window; everything stopped after."""
    node = Node("--idle-timeout", "off")
    publishers: list[Publisher] = []
    try:
        if protocol == "srt":
            wait_for("the node never logged its SRT port", lambda: "srt" in node.ports, 10)
        port = node.srt if protocol == "srt" else node.rtmp
        idle = 0.0
        if opts.idle > 0:  # the node's own floor, before any publisher
            cpu0, t0 = cpu_seconds(node.pid), time.monotonic()
            time.sleep(opts.idle)
            idle = (cpu_seconds(node.pid) - cpu0) / (time.monotonic() - t0)
        began = time.monotonic()
        for index in range(count):
            publishers.append(Publisher(ffmpeg, src, protocol, port, f"{protocol}{index}"))
            time.sleep(0.05)
        keys = {p.key for p in publishers}

        def all_live() -> bool:
            if not all(p.alive() for p in publishers):
                dead = next(p for p in publishers if not p.alive())
                raise RuntimeError(f"ffmpeg for {dead.key} exited ({dead.proc.returncode}): "
                                   + " | ".join(dead.stderr))
            return keys <= live_streams(node).keys()

        wait_for(f"not all {count} {protocol} streams were live", all_live, 15 + count)
        live_after = time.monotonic() - began
        time.sleep(opts.settle)
        start = sample(node, publishers, protocol, end=False)
        time.sleep(opts.window)
        end = sample(node, publishers, protocol, end=True)
        alive = sum(1 for p in publishers if p.alive())
        # what ffmpeg printed while publishing (stopping it adds lines of its own)
        warnings = sum(p.warnings for p in publishers)
        warning_tail = [line for p in publishers for line in list(p.stderr)[-2:]][:10]
    finally:
        for publisher in publishers:
            publisher.stop()
        node.stop()
    seconds = end["t"] - start["t"]
    cpu = end["node_cpu"] - start["node_cpu"]
    nbytes, frames = ingested(start, end)
    gbytes = nbytes / 1e9
    busy = end["machine"][0] - start["machine"][0]
    total = max(1, end["machine"][1] - start["machine"][1])
    result: dict[str, Any] = {
        "protocol": protocol, "publishers": count, "window_s": round(seconds, 2),
        "live_at_end": len(keys & end["streams"].keys()), "ffmpeg_alive_at_end": alive,
        "all_live_after_s": round(live_after, 2),
        "ingest_mbps": round(nbytes * 8 / seconds / 1e6, 2),
        "frames_per_s": round(frames / seconds, 1),
        "node_cpu_s": round(cpu, 3),
        "cpu_s_per_gb": round(cpu / gbytes, 2) if gbytes else None,
        "node_cpu_pct": round(100 * cpu / seconds, 1),
        "node_idle_cpu_pct": round(100 * idle, 1) if opts.idle > 0 else None,
        "ffmpeg_cpu_pct": round(100 * (end["ffmpeg_cpu"] - start["ffmpeg_cpu"]) / seconds, 1),
        "machine_busy_pct": round(100 * busy / total, 1),
        "ffmpeg_stderr_lines": warnings, "ffmpeg_stderr_tail": warning_tail,
        "node_problems": node_problems(node)[:30],
    }
    result["contended"] = result["machine_busy_pct"] > CONTENDED_PCT
    if protocol == "srt":
        s0, s1 = start["srt"], end["srt"]
        result["srt_since_connect"] = s1
        result["srt_in_window"] = {name: s1[name] - s0[name]
                                   for name in (*SRT_COUNTERS, *DEMUX_COUNTERS)}
    return result


# --- report -----------------------------------------------------------------------------------

def _fmt(value: Any, width: int, digits: int = 2) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if isinstance(value, float):
        return f"{value:>{width}.{digits}f}"
    return f"{value:>{width}}"


def ratios(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["protocol"], r["publishers"]): r for r in levels}
    out = []
    for (protocol, count), srt in sorted(by.items(), key=lambda item: item[0][1]):
        rtmp = by.get(("rtmp", count))
        if protocol != "srt" or rtmp is None:
            continue
        row: dict[str, Any] = {"publishers": count}
        for name in ("cpu_s_per_gb", "node_cpu_pct"):
            a, b = srt[name], rtmp[name]
            row[name] = round(a / b, 2) if a is not None and b else None
        row["contended"] = srt["contended"] or rtmp["contended"]
        out.append(row)
    return out


def report(levels: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    head = (f"{'proto':5} {'n':>3} {'live':>5} {'Mbps in':>8} {'frames/s':>8} {'CPU s/GB':>9} "
            f"{'node CPU%':>9} {'idle%':>5} {'ffmpeg CPU%':>11} {'machine%':>8}")
    print()
    print(head)
    print("-" * len(head))
    for r in levels:
        print(f"{r['protocol']:5} {r['publishers']:3d} "
              f"{r['live_at_end']:>2}/{r['publishers']:<2} {r['ingest_mbps']:8.1f} "
              f"{r['frames_per_s']:8.1f} {_fmt(r['cpu_s_per_gb'], 9)} {r['node_cpu_pct']:9.1f} "
              f"{_fmt(r['node_idle_cpu_pct'], 5, 1)} {r['ffmpeg_cpu_pct']:11.1f} "
              f"{r['machine_busy_pct']:8.1f}"
              + ("  CONTENDED" if r["contended"] else ""))
    print("(Mbps in, CPU s/GB: media bytes the node ingested (bytes_in, frame payloads); node "
          "CPU%: of one core; idle%: the same node before its publishers; ffmpeg CPU%: all "
          "publishers; machine%: all cores busy)")
    print()
    for row in rows:
        print(f"SRT/RTMP n={row['publishers']:<3} CPU s/GB x{_fmt(row['cpu_s_per_gb'], 0)}  "
              f"node CPU% x{_fmt(row['node_cpu_pct'], 0)}"
              + ("  (contended: not the node's alone)" if row["contended"] else ""))
    print()
    for r in levels:
        if r["protocol"] != "srt":
            continue
        s, w = r["srt_since_connect"], r["srt_in_window"]
        print(f"SRT n={r['publishers']:<3} {s['publishers']} connections, since connect: "
              f"received {s['packets_received']} pkts, lost {s['packets_lost_received']}, "
              f"retransmitted {s['packets_retransmitted']}, dropped "
              f"{s['packets_dropped_received']}, TS cc errors {s['cc_errors']}; in the window: "
              f"lost {w['packets_lost_received']}, dropped {w['packets_dropped_received']}, "
              f"cc errors {w['cc_errors']}; rtt max {s['rtt_ms_max']} ms")
    for r in levels:
        label = f"{r['protocol']} n={r['publishers']}"
        if r["ffmpeg_alive_at_end"] != r["publishers"]:
            print(f"  {label}: only {r['ffmpeg_alive_at_end']} ffmpeg publishers alive at end")
        if r["ffmpeg_stderr_lines"]:
            print(f"  {label}: ffmpeg printed {r['ffmpeg_stderr_lines']} warning lines, e.g. "
                  f"{r['ffmpeg_stderr_tail'][:2]}")
        if r["node_problems"]:
            print(f"  {label}: node logged {len(r['node_problems'])} warning/error lines:")
            for line in r["node_problems"][:5]:
                print(f"    {line[:200]}")


def main(opts: argparse.Namespace) -> None:
    found = tools.find()
    if found is None:
        raise SystemExit("no ffmpeg: run 'make tools' once (it installs one)")
    src = source()
    started = time.monotonic()
    levels: list[dict[str, Any]] = []
    for count in [int(n) for n in opts.publishers.split(",") if int(n) > 0]:
        for protocol in opts.protocols.split(","):
            result = run_level(protocol, count, found[0], src, opts)
            levels.append(result)
            print(f"{protocol:4} n={count:<3} node CPU {result['node_cpu_pct']}% "
                  f"{result['cpu_s_per_gb']} CPU s/GB {result['ingest_mbps']} Mbps "
                  f"live {result['live_at_end']}/{count} machine {result['machine_busy_pct']}%",
                  flush=True)
            time.sleep(1.0)
    rows = ratios(levels)
    report(levels, rows)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({
        "benchmark": "srt", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(), "source": src.name, "settle_s": opts.settle,
        "window_s": opts.window, "contended_above_pct": CONTENDED_PCT, "levels": levels,
        "ratios_srt_over_rtmp": rows, "runtime_s": round(time.monotonic() - started, 1),
    }, indent=2))
    print(f"\nwrote {opts.out} ({time.monotonic() - started:.0f} s)")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--publishers", default="1,10,20", help="publisher counts")
    parser.add_argument("--protocols", default="srt,rtmp")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after all are live")
    parser.add_argument("--window", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--idle", type=float, default=2.0,
                        help="seconds of each fresh node's CPU before publishers (0: skip)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / time.strftime(
        "srt-%Y%m%dT%H%M%S.json"))
    opts = parser.parse_args()
    # SIGTERM as Ctrl-C: the finally clauses stop every node and ffmpeg we started
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        main(opts)
    except KeyboardInterrupt:
        raise SystemExit("interrupted: every process this run started was stopped") from None


if __name__ == "__main__":
    cli()
