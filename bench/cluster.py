"""Cluster benchmark (issue 18, target 6): the origin's CPU per added edge.

A real redis-server, one origin and 1, 2 and 4 edges (loopback; a fresh cluster per level);
one publisher (the load client) replays the 720p30 2.5 Mbit/s source into the origin, and each
edge gets ``--viewers`` RTMP viewers of that stream (one load-client process per edge, joining
at ``--rate``/s). Over the measured window: the origin's CPU (it relays one gRPC stream per
edge), each edge's CPU per GB it delivered, the bytes viewers received. Printed: origin CPU %
per edge (flat is the goal) and beside the edges' fan-out CPU.

    make bench-cluster           # or: .venv/bin/python bench/cluster.py --edges 1,2,4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from streaming import _client, _lines, source, stop, tree_cpu  # noqa: I001 (bench/ on path)
from tests.support.processes import Node, RedisServer

TOKEN = "bench-relay-token"
KEY = "live/bench"


def _node(role: str, redis: RedisServer, name: str) -> Node:
    return Node("--redis-url", redis.url, "--node-id", name, "--relay-token", TOKEN,
                "--idle-timeout", "off", "--srt-listen", "off",
                "--no-webrtc", "--max-connections", "20000", "--max-connections-per-ip",
                "20000", "--max-viewers-per-stream", "20000", role=role)


def level(edges: int, src: Path, opts: argparse.Namespace) -> dict[str, Any]:
    redis = RedisServer()
    redis.start()
    nodes: list[Node] = []
    clients: list[subprocess.Popen[str]] = []
    try:
        origin = _node("origin", redis, "origin-1")
        nodes.append(origin)
        feed = _client(["publish", "--url", f"rtmp://127.0.0.1:{origin.rtmp}/{KEY}",
                        "--source", str(src), "--window", "0"])
        clients.append(feed)
        origin.wait_for_stream(KEY, frames=8, timeout=20)
        time.sleep(2.0)  # a full GOP cached
        for index in range(edges):
            edge = _node("edge", redis, f"edge-{index + 1}")
            nodes.append(edge)
        viewers = [_client(["play", "--url", f"rtmp://127.0.0.1:{edge.rtmp}/{KEY}",
                            "--count", str(opts.viewers), "--rate", str(opts.rate),
                            "--settle", str(opts.settle), "--window", str(opts.window)])
                   for edge in nodes[1:]]
        clients += viewers
        marks = [_marks(client, nodes, opts) for client in viewers]
    finally:
        for client in clients:
            stop(client)
        for node in nodes:
            node.stop()
        redis.stop()
    return _figures(edges, marks)


def _marks(client: subprocess.Popen[str], nodes: list[Node],
           opts: argparse.Namespace) -> dict[str, Any]:
    """A viewer client's window marks, each with every node's CPU seconds at that moment."""
    found: dict[str, Any] = {}
    timeout = opts.viewers / opts.rate + opts.settle + opts.window + 60
    for event in _lines(client, timeout):
        if event["event"] in ("window_start", "window_end"):
            event["t"] = time.monotonic()
            event["cpu_by_node"] = [tree_cpu(node.pid) for node in nodes]
        found[event["event"]] = event
        if event["event"] == "summary":
            break
    return found


def _figures(edges: int, marks: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the window every client measured (the first client's marks time the nodes' CPU:
    all clients start together and measure the same window length)."""
    first = marks[0]
    start, end = first["window_start"], first["window_end"]
    seconds = end["t"] - start["t"]
    cpu = [b - a for a, b in zip(start["cpu_by_node"], end["cpu_by_node"], strict=True)]
    gbytes = sum((m["window_end"]["bytes"] - m["window_start"]["bytes"]) for m in marks) / 1e9
    origin_pct = cpu[0] * 100 / seconds
    edge_pct = [c * 100 / seconds for c in cpu[1:]]
    return {
        "edges": edges,
        "viewers": sum(len(m["summary"]["ttff_ms"]) for m in marks),
        "egress_mbps": round(gbytes * 8000 / seconds, 1),
        "origin_cpu_pct": round(origin_pct, 2),
        "origin_cpu_pct_per_edge": round(origin_pct / edges, 2),
        "edge_cpu_pct": [round(p, 1) for p in edge_pct],
        "edge_cpu_s_per_gb": round(sum(cpu[1:]) / gbytes, 3) if gbytes else None,
        "origin_share_of_cluster_pct": round(cpu[0] * 100 / sum(cpu), 1) if sum(cpu) else None,
        "errors": [e for m in marks for e in m["summary"]["errors"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", default="1,2,4")
    parser.add_argument("--viewers", type=int, default=250, help="RTMP viewers per edge")
    parser.add_argument("--rate", type=float, default=200.0, help="joins per second per edge")
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cluster.json")
    opts = parser.parse_args()
    src = source()
    rows = []
    for edges in [int(n) for n in opts.edges.split(",")]:
        row = level(edges, src, opts)
        rows.append(row)
        print(f"edges={edges} viewers={row['viewers']} egress={row['egress_mbps']} Mbps  "
              f"origin CPU {row['origin_cpu_pct']} % ({row['origin_cpu_pct_per_edge']} % per "
              f"edge; {row['origin_share_of_cluster_pct']} % of the cluster's)  edges CPU "
              f"{row['edge_cpu_pct']} %  edge CPU s/GB {row['edge_cpu_s_per_gb']}  "
              f"errors={row['errors'] or 'none'}", flush=True)
    # What one more edge costs the origin: its CPU beyond the first level's (ingest + the
    # first edge's stream), per added edge; flat is the goal, tiny beside an edge's fan-out.
    first = rows[0]
    for row in rows[1:]:
        added = row["edges"] - first["edges"]
        marginal = (row["origin_cpu_pct"] - first["origin_cpu_pct"]) / added
        row["origin_cpu_pct_per_added_edge"] = round(marginal, 2)
        edge = sum(row["edge_cpu_pct"]) / len(row["edge_cpu_pct"])
        print(f"edges={row['edges']}: origin +{marginal:.2f} % CPU per added edge "
              f"({marginal * 100 / edge:.0f} % of what one edge spends on its viewers)")
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({
        "benchmark": "cluster", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "viewers_per_edge": opts.viewers, "window_s": opts.window, "levels": rows}, indent=2))
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
