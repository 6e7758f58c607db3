"""Registry benchmark: what ownership costs Redis with per-node sessions.

Starts a real redis-server. Simulated origins — the nodes' own ``NodeRegistry``, without media,
all in this one process and event loop — claim the streams (claim latency: each node claims
its share one after another, all nodes at once; one loop for all of them adds its own queueing,
so real nodes see less), then run exactly as an origin runs (session renewals every TTL/4,
heartbeats with the check of what they hold, idle marking, the events listener, the sweep) for
a steady-state window. Every stream receives frames, so nothing is marked idle: the steady state.
Redis commands/s come from the server's own counters (``INFO stats`` for commands clients sent,
``INFO commandstats`` per command, including those scripts run), minus the two INFO commands
per sample. Then: takeovers — a node dies and its session key is gone (after its TTL; the TTL
itself, the failover time, is measured end to end in tests/integration/test_resilience.py) and
another node claims its keys (latency per claim); and, with the nodes stopped, one operator
reconcile read over all streams (commands per pass, counted alone).

    make bench-registry          # or: .venv/bin/python bench/registry.py --streams 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis.asyncio as aioredis

from arcly.cluster.cluster_view import ClusterView
from arcly.cluster.model import NodeLoad, NodeRole
from arcly.cluster.node_registry import NodeRegistry
from arcly.cluster.registry import RegistrySettings
from arcly.engine import StreamKey
from tests.support.processes import RedisServer

TARGET_OPS = 100.0  # issue 14: commands/s at steady state for 10,000 streams over 10 nodes


class Flowing:
    """A node whose streams all receive frames (the steady state: nothing is idle)."""

    def __init__(self, streams: int) -> None:
        self.streams = streams
        self.lost: list[tuple[StreamKey, str]] = []

    def load(self) -> NodeLoad:
        return NodeLoad(streams=self.streams, viewers=self.streams * 3)

    def last_frame(self, key: StreamKey) -> float | None:
        return time.time()

    def ownership_lost(self, key: StreamKey, token: int, reason: str) -> None:
        self.lost.append((key, reason))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def latency(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values) * 1000, 3),
            "p95_ms": round(percentile(values, 0.95) * 1000, 3),
            "max_ms": round(max(values) * 1000, 3), "count": len(values)}


async def counters(raw: aioredis.Redis) -> tuple[int, dict[str, int]]:
    """Commands the server processed (client commands) and per-command calls (including the
    commands scripts run)."""
    stats = await raw.info("stats")
    per_command = await raw.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(value["calls"])
             for name, value in per_command.items()}
    return int(stats["total_commands_processed"]), calls


def delta(before: tuple[int, dict[str, int]], after: tuple[int, dict[str, int]],
          ours: int) -> tuple[int, dict[str, int]]:
    """Commands between two samples, minus the ``ours`` INFO commands of the sampling."""
    total = after[0] - before[0] - ours
    calls = {name: count - before[1].get(name, 0) for name, count in after[1].items()}
    calls["info"] = calls.get("info", 0) - ours
    return total, {name: count for name, count in sorted(calls.items()) if count > 0}


async def claim_all(node: NodeRegistry, keys: list[StreamKey]) -> list[float]:
    took = []
    for key in keys:
        started = time.perf_counter()
        await node.claim(key)
        took.append(time.perf_counter() - started)
    return took


async def main(streams: int, node_count: int, seconds: float, session_ttl: float,
               takeovers: int, out: Path) -> dict[str, Any]:
    redis = RedisServer()
    settings = RegistrySettings(url=redis.url, session_ttl=session_ttl)
    raw = aioredis.Redis.from_url(redis.url, decode_responses=True)
    nodes = [NodeRegistry(settings, node_id=f"origin-{i}", role=NodeRole.ORIGIN,
                          relay_address=f"10.0.0.{i + 1}:7000") for i in range(node_count)]
    view = ClusterView(settings)
    stop = asyncio.Event()
    running: list[asyncio.Task[None]] = []
    per_node = streams // node_count
    result: dict[str, Any] = {"benchmark": "registry", "streams": per_node * node_count,
                              "nodes": node_count, "session_ttl_s": session_ttl,
                              "heartbeat_s": settings.heartbeat, "seconds": seconds}
    try:
        await asyncio.gather(*(node.start_session() for node in nodes))
        held = [Flowing(per_node) for _ in nodes]
        for node, streams_of in zip(nodes, held, strict=True):
            running.append(asyncio.create_task(node.run(stop, streams_of)))

        # Claims: every node claims its share, all nodes at once.
        shares = [[StreamKey("live", f"n{i}-s{j}") for j in range(per_node)]
                  for i in range(node_count)]
        started = time.perf_counter()
        took = [t for ts in await asyncio.gather(
            *(claim_all(node, share) for node, share in zip(nodes, shares, strict=True)))
            for t in ts]
        result["claim"] = latency(took)
        result["claim"]["claims_per_s"] = round(len(took) / (time.perf_counter() - started))
        print(f"claims: {len(took)} over {node_count} nodes  p50 "
              f"{result['claim']['p50_ms']:.2f} ms  p95 {result['claim']['p95_ms']:.2f} ms  "
              f"max {result['claim']['max_ms']:.2f} ms  "
              f"({result['claim']['claims_per_s']} claims/s)", flush=True)

        # Steady state: let one heartbeat pass, then count what the server processes.
        await asyncio.sleep(settings.heartbeat + 0.5)
        before = await counters(raw)
        window = time.monotonic()
        await asyncio.sleep(seconds)
        after = await counters(raw)
        elapsed = time.monotonic() - window
        total, calls = delta(before, after, ours=2)
        rate = total / elapsed
        lost = sum(len(h.lost) for h in held)
        if lost:
            raise SystemExit(f"the steady state lost {lost} keys (a session lapsed: the "
                             "machine is too busy for this TTL?)")
        result["steady"] = {"commands": total, "elapsed_s": round(elapsed, 2),
                            "ops_per_s": round(rate, 1),
                            "ops_per_s_per_node": round(rate / node_count, 2),
                            "calls": calls, "target_ops_per_s": TARGET_OPS,
                            "met": rate <= TARGET_OPS}
        print(f"steady state: {rate:.1f} commands/s for {per_node * node_count} streams on "
              f"{node_count} nodes ({rate / node_count:.2f}/s per node; target <= "
              f"{TARGET_OPS:g}: {'MET' if rate <= TARGET_OPS else 'NOT MET'})", flush=True)
        print("  by command (scripts' own calls included): "
              + ", ".join(f"{name} {count / elapsed:.1f}/s" for name, count in calls.items()),
              flush=True)

        # Takeovers: a node dies; once its session key is gone, another node claims its keys.
        dead, heir = nodes[0], nodes[1]
        running[0].cancel()
        await asyncio.gather(running[0], return_exceptions=True)
        await dead.close()  # gone, timers and all
        await raw.delete(dead.keys.session(dead.node_id))
        took = await claim_all(heir, shares[0][:takeovers])
        result["takeover"] = latency(took)
        print(f"claims of a dead node's keys: {len(took)}  p50 "
              f"{result['takeover']['p50_ms']:.2f} ms  p95 {result['takeover']['p95_ms']:.2f} "
              f"ms  max {result['takeover']['max_ms']:.2f} ms", flush=True)

        # The operator's reconcile read (owners, idle marks, liveness), counted alone.
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)
        before = await counters(raw)
        started = time.perf_counter()
        owners = await view.owners()
        await view.idle()
        await view.alive(owners, await view.nodes())
        pass_seconds = time.perf_counter() - started
        total, calls = delta(before, await counters(raw), ours=2)
        result["operator_pass"] = {"commands": total, "seconds": round(pass_seconds, 3),
                                   "owners": len(owners), "calls": calls}
        print(f"operator reconcile read: {len(owners)} owners with {total} commands in "
              f"{pass_seconds * 1000:.0f} ms (every 10 s by default: "
              f"{total / 10:.1f} commands/s)", flush=True)
    finally:
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)
        for client in (*nodes, view):
            await client.close()
        await raw.aclose()
        redis.stop()
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="the steady-state window")
    parser.add_argument("--session-ttl", type=float, default=RegistrySettings().session_ttl)
    parser.add_argument("--takeovers", type=int, default=500)
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "registry.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args.streams, args.nodes, args.seconds, args.session_ttl,
                     args.takeovers, args.out))
