"""The real kopf operator (``kopf run``, as the chart starts it, in its own processes) against
kmock (a Kubernetes API emulator) and a real redis-server: node lifecycle, releases, reaping,
status, deletion costs that follow viewers, and two replicas of which exactly one acts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from arcly.cluster.model import NodeLoad, NodeRole
from arcly.cluster.node_registry import NodeRegistry
from arcly.cluster.registry import RegistrySettings
from arcly.engine import StreamKey
from arcly_operator import decisions
from tests.support.processes import REPO, RedisServer
from tests.support.wait import eventually as _eventually

pytestmark = pytest.mark.integration
NS = "media"
LABELS = {"app.kubernetes.io/part-of": "arcly", "app.kubernetes.io/instance": "demo"}
LEASE_SECONDS, LEASE_RETRY, INTERVAL = 3.0, 0.5, 0.5
# A killed leader is replaced once its lease lapsed (as the follower observed it), at the
# follower's next try; then the first reconcile writes the status.
FAILOVER_BOUND = LEASE_SECONDS + LEASE_RETRY + INTERVAL + 2.0  # + 2 s for two busy cores


async def eventually(check: Any, timeout: float = 15.0, message: str = "never held") -> Any:
    """kopf on two busy cores can take a while: a longer deadline than the default."""
    return await _eventually(check, timeout=timeout, message=message)


def pod(name: str, role: str, *, ready: bool) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}",
                         "resourceVersion": "1",
                         "labels": {**LABELS, decisions.COMPONENT: role}},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


class Operator:
    """``kopf run -m arcly_operator.main`` in a process of its own (ours: stopped by pid)."""

    def __init__(self, name: str, kube_url: str, redis_url: str) -> None:
        env = {**os.environ, "ARCLY_OPERATOR_KUBE_URL": kube_url, "ARCLY_REDIS_URL": redis_url,
               "ARCLY_RELEASE": "demo", "POD_NAME": name, "POD_NAMESPACE": NS,
               "ARCLY_OPERATOR_INTERVAL": str(INTERVAL),
               "ARCLY_OPERATOR_LEASE_SECONDS": str(LEASE_SECONDS),
               "ARCLY_OPERATOR_LEASE_RETRY": str(LEASE_RETRY),
               "ARCLY_OPERATOR_METRICS": "127.0.0.1:0", "OTEL_SDK_DISABLED": "false",
               "PYTHONPATH": str(REPO / "operator")}  # as the image has it
        # Cluster-wide here: kmock cannot list namespaces the way kopf's namespace observer
        # does in namespaced mode. The handlers are the same either way.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
             "-m", "arcly_operator.main"], cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def logged(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def leader_gauge(self) -> float:
        """``arcly_operator_leader`` from this replica's own /metrics."""
        line = next(line for line in self.lines if "listening protocol=metrics" in line)
        address = line.rsplit("address=", 1)[1].strip()
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        match = re.search(r"^arcly_operator_leader\{[^}]*\} ([0-9.]+)$", text, re.M)
        assert match, text
        return float(match.group(1))

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


Start = Callable[[str], Operator]


@pytest.fixture
async def cluster(kmock: Any) -> AsyncIterator[tuple[Any, aiohttp.ClientSession, RedisServer,
                                                     Start]]:
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = {
        "kind": "CustomResourceDefinition", "namespaced": False,
        "verbs": ["list", "watch", "get"]}
    kmock.resources["v1/namespaces"] = {"kind": "Namespace", "namespaced": False,
                                        "verbs": ["list", "watch", "get"]}
    kmock.resources["v1/pods"] = {"kind": "Pod", "namespaced": True,
                                  "verbs": ["list", "watch", "get", "patch", "create", "delete"]}
    kmock.resources["v1/events"] = {"kind": "Event", "namespaced": True, "verbs": ["create"]}
    kmock.resources["arcly.io/v1alpha1/arclyclusters"] = {
        "kind": "ArclyCluster", "namespaced": True, "subresources": ["status"],
        "verbs": ["list", "watch", "get", "patch", "create"]}
    kmock.resources["coordination.k8s.io/v1/leases"] = {
        "kind": "Lease", "namespaced": True, "verbs": ["get", "create", "update", "list"]}
    redis_server = RedisServer()
    operators: list[Operator] = []

    def start(name: str) -> Operator:
        operator = Operator(name, str(kmock.url).rstrip("/"), redis_server.url)
        operators.append(operator)
        return operator

    session = aiohttp.ClientSession(base_url=str(kmock.url))
    try:
        await session.post(f"/apis/arcly.io/v1alpha1/namespaces/{NS}/arclyclusters", json={
            "apiVersion": "arcly.io/v1alpha1", "kind": "ArclyCluster",
            "metadata": {"name": "demo", "namespace": NS, "uid": "uid-demo",
                         "resourceVersion": "1", "labels": LABELS,
                         # what chart 0.1's operator (a kopf timer) left on it
                         "finalizers": ["kopf.zalando.org/KopfFinalizerMarker"]},
            "spec": {"idleTimeoutSeconds": 30}})
        yield kmock, session, redis_server, start
    finally:
        await asyncio.gather(*(asyncio.to_thread(o.stop) for o in operators))
        for operator in operators:  # shown when a test fails
            print(f"--- operator log ({operator.proc.args[-1]}, rc={operator.proc.returncode})")
            print("\n".join(operator.lines[-60:]))
        await session.close()
        redis_server.stop()


async def beating(node: NodeRegistry, load: NodeLoad) -> asyncio.Task[None]:
    """A fake node's heartbeats, every second, as a running node sends them (its record lapses
    after three missed ones); ``heartbeat(load)`` sets what the following ones report."""
    await node.heartbeat(load)

    async def beat() -> None:
        while True:
            await asyncio.sleep(1.0)
            await node.heartbeat()

    return asyncio.create_task(beat())


def status(kmock: Any) -> dict[str, Any]:
    obj = kmock.objects["arcly.io/v1alpha1/arclyclusters", NS, "demo"]
    return dict(obj.get("status") or {})


def deletion_cost(kmock: Any, name: str) -> str | None:
    obj = kmock.objects["v1/pods", NS, name]
    return (obj.get("metadata", {}).get("annotations") or {}).get(decisions.DELETION_COST)


async def test_operator_manages_node_lifecycle_releases_reaps_and_reports(
        cluster: tuple[Any, aiohttp.ClientSession, RedisServer, Start]) -> None:
    kmock, api, redis_server, start = cluster
    operator = start("op-a")
    node = NodeRegistry(RegistrySettings(url=redis_server.url), node_id="demo-origin-0",
                        role=NodeRole.ORIGIN, relay_address="10.0.0.1:7000")
    edge = NodeRegistry(RegistrySettings(url=redis_server.url), node_id="demo-edge-abc",
                        role=NodeRole.EDGE)
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    lost = _Lost()
    stop = asyncio.Event()
    running = asyncio.create_task(node.run(stop, lost))  # its session, heartbeats, events
    beat = await beating(edge, NodeLoad(streams=1, viewers=42))
    try:
        # The nodes run: heartbeats, and the origin owns two keys (one goes idle).
        await eventually(lambda: node.session)
        kept = StreamKey("live", "cam")
        idle = StreamKey("live", "quiet")
        await node.claim(kept)
        lost.frames[idle] = time.time() - 3600  # the node marks it idle at its next heartbeat
        await node.claim(idle)

        # Pods appear; turning Ready registers them as ready nodes.
        for name, role in (("demo-origin-0", "origin"), ("demo-edge-abc", "edge")):
            created = await api.post(f"/api/v1/namespaces/{NS}/pods",
                                     json=pod(name, role, ready=False))
            assert created.status < 300
        await eventually(lambda: _state(raw, "demo-edge-abc", "draining"))
        await api.patch(f"/api/v1/namespaces/{NS}/pods/demo-edge-abc",
                        json={"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                        headers={"Content-Type": "application/merge-patch+json"})
        await api.patch(f"/api/v1/namespaces/{NS}/pods/demo-origin-0",
                        json={"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                        headers={"Content-Type": "application/merge-patch+json"})
        await eventually(lambda: _state(raw, "demo-edge-abc", "ready"))
        await eventually(lambda: _state(raw, "demo-origin-0", "ready"))

        # The edge Pod gets a deletion cost from its viewer count.
        assert await eventually(lambda: deletion_cost(kmock, "demo-edge-abc")) == \
            decisions.deletion_cost(42)

        # The reconcile loop reaps the idle stream and reports status.
        async def reaped() -> bool:
            return await raw.get(node.keys.owner(idle)) is None
        await eventually(reaped)
        assert await raw.get(node.keys.owner(kept)) is not None, "the live stream is kept"

        reported = await eventually(lambda: (now := status(kmock)).get("reapedTotal") and now)
        assert reported["readyOrigins"] == 1 and reported["readyEdges"] == 1
        assert reported["viewers"] == 42 and reported["liveStreams"] == 1
        assert reported["lastReap"].endswith("Z") and reported["leader"] == "op-a"
        assert reported["registry"] == "ok"
        assert not kmock.objects["arcly.io/v1alpha1/arclyclusters", NS, "demo"].get(
            "metadata", {}).get("finalizers"), "nothing can hold up an uninstall"

        # Deleting the origin Pod releases its keys at once (no wait for its session).
        await api.delete(f"/api/v1/namespaces/{NS}/pods/demo-origin-0")

        async def released() -> bool:
            return await raw.get(node.keys.owner(kept)) is None
        await eventually(released)

        async def node_gone() -> bool:
            return not await raw.exists(node.keys.node("demo-origin-0"))
        await eventually(node_gone)

        async def released_event() -> bool:
            return any(obj.get("reason") == "StreamKeysReleased" and "live/cam" in obj.get(
                "message", "") for obj in kmock.objects.values())
        await eventually(released_event)
        # The owner hears of each release (the events channel) and ends those publishes.
        await eventually(lambda: set(lost.keys) == {kept, idle})
        assert await raw.get(node.keys.owner(kept)) is None
        assert operator.proc.poll() is None, "\n".join(operator.lines)
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
        stop.set()
        await asyncio.wait_for(running, 10)
        await raw.aclose()
        await node.close()
        await edge.close()


async def test_two_replicas_one_acts_and_the_other_takes_over_when_it_dies(
        cluster: tuple[Any, aiohttp.ClientSession, RedisServer, Start]) -> None:
    kmock, api, redis_server, start = cluster
    edge = NodeRegistry(RegistrySettings(url=redis_server.url), node_id="demo-edge-1",
                        role=NodeRole.EDGE)
    beat = await beating(edge, NodeLoad(streams=1, viewers=5))
    try:
        await api.post(f"/api/v1/namespaces/{NS}/pods", json=pod("demo-edge-1", "edge",
                                                                 ready=True))
        first = start("op-a")
        await eventually(lambda: status(kmock).get("leader") == "op-a",
                         message="the first replica never led")
        second = start("op-b")
        await eventually(lambda: second.logged("following leader=op-b"),
                         message="the second replica never joined as a follower")
        # For a while both run: only op-a acts (writes status), op-b never leads.
        deadline = time.monotonic() + 3 * INTERVAL + LEASE_SECONDS
        while time.monotonic() < deadline:
            assert status(kmock).get("leader") == "op-a"
            await asyncio.sleep(0.1)
        assert not second.logged("leading leader=op-b")
        assert (first.leader_gauge(), second.leader_gauge()) == (1.0, 0.0), "/metrics agrees"
        # The deletion cost follows the edge's viewers, with no Pod event.
        assert await eventually(lambda: deletion_cost(kmock, "demo-edge-1")) == \
            decisions.deletion_cost(5)
        await edge.heartbeat(NodeLoad(streams=1, viewers=500))
        await eventually(lambda: deletion_cost(kmock, "demo-edge-1") ==
                         decisions.deletion_cost(500), message="the cost never followed")

        killed = time.monotonic()
        first.kill()
        await eventually(lambda: status(kmock).get("leader") == "op-b", timeout=30,
                         message="the second replica never took over")
        failover = time.monotonic() - killed
        print(f"\noperator failover after SIGKILL of the leader: {failover:.2f} s "
              f"(bound {FAILOVER_BOUND:.1f} s)")
        assert failover <= FAILOVER_BOUND
        assert second.logged("leading leader=op-b")
        lease = kmock.objects["coordination.k8s.io/v1/leases", NS, "demo-operator"]
        assert lease["spec"]["holderIdentity"] == "op-b"
        assert lease["spec"]["leaseTransitions"] >= 1
        # The new leader acts: viewers change, the cost follows.
        await edge.heartbeat(NodeLoad(streams=1, viewers=1))
        await eventually(lambda: deletion_cost(kmock, "demo-edge-1") ==
                         decisions.deletion_cost(1), message="the new leader does not act")
        # A clean stop hands over at once: the lease is left without a holder.
        await asyncio.to_thread(second.stop)
        assert kmock.objects["coordination.k8s.io/v1/leases", NS, "demo-operator"][
            "spec"]["holderIdentity"] == ""
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
        await edge.close()


class _Lost:
    """The node's side of ``NodeRegistry.run``: records the keys it is told it lost."""

    def __init__(self) -> None:
        self.keys: list[StreamKey] = []
        self.frames: dict[StreamKey, float] = {}

    def load(self) -> NodeLoad:
        return NodeLoad()

    def last_frame(self, key: StreamKey) -> float | None:
        return self.frames.get(key)

    def ownership_lost(self, key: StreamKey, token: int, reason: str) -> None:
        self.keys.append(key)


async def _state(raw: aioredis.Redis, node_id: str, state: str) -> bool:
    return bool(await raw.hget(f"arcly:node:{node_id}", "state") == state)
