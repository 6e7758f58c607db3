"""The real kopf operator against kmock (a Kubernetes API emulator) and a real redis-server."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

os.environ.setdefault("ARCLY_OPERATOR_INTERVAL", "0.5")  # read when the handlers are declared

from kopf.testing import KopfRunner

import arcly_operator.main  # noqa: F401  (declares the handlers)
from arcly.cluster.model import NodeLoad, NodeRole
from arcly.cluster.node_registry import NodeRegistry
from arcly.cluster.registry import RegistrySettings
from arcly.engine import StreamKey
from arcly_operator import decisions
from tests.support.processes import RedisServer
from tests.support.wait import eventually as _eventually

pytestmark = pytest.mark.integration


async def eventually(check: Any, timeout: float = 15.0) -> Any:
    """kopf on two busy cores can take a while: a longer deadline than the default."""
    return await _eventually(check, timeout=timeout)
NS = "media"
LABELS = {"app.kubernetes.io/part-of": "arcly", "app.kubernetes.io/instance": "demo"}


def pod(name: str, role: str, *, ready: bool) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}",
                         "resourceVersion": "1",
                         "labels": {**LABELS, decisions.COMPONENT: role}},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


@pytest.fixture
async def cluster(kmock: Any) -> AsyncIterator[tuple[Any, aiohttp.ClientSession, RedisServer]]:
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
    redis_server = RedisServer()
    os.environ["ARCLY_OPERATOR_KUBE_URL"] = str(kmock.url).rstrip("/")
    os.environ["ARCLY_REDIS_URL"] = redis_server.url
    # The real operator, as `kopf run` starts it, in its own thread and event loop.
    # Cluster-wide here: kmock cannot list namespaces (GET /api/v1/namespaces), which kopf's
    # namespace observer does in namespaced mode. The handlers are the same either way.
    runner = KopfRunner(["run", "--all-namespaces", "--standalone", "-m", "arcly_operator.main"],
                        timeout=30)
    session = aiohttp.ClientSession(base_url=str(kmock.url))
    try:
        await asyncio.to_thread(runner.__enter__)
        yield kmock, session, redis_server
    finally:
        await asyncio.to_thread(runner.__exit__, None, None, None)
        await session.close()
        redis_server.stop()
        for name in ("ARCLY_OPERATOR_KUBE_URL", "ARCLY_REDIS_URL"):
            os.environ.pop(name, None)


async def test_operator_manages_node_lifecycle_releases_reaps_and_reports(
        cluster: tuple[Any, aiohttp.ClientSession, RedisServer]) -> None:
    kmock, api, redis_server = cluster
    node = NodeRegistry(RegistrySettings(url=redis_server.url), node_id="demo-origin-0",
                        role=NodeRole.ORIGIN, relay_address="10.0.0.1:7000")
    edge = NodeRegistry(RegistrySettings(url=redis_server.url), node_id="demo-edge-abc",
                        role=NodeRole.EDGE)
    raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        # The nodes run: heartbeats, and the origin owns two keys (one goes idle).
        await node.heartbeat()
        await edge.heartbeat(NodeLoad(streams=1, viewers=42))
        kept = StreamKey("live", "cam")
        idle = StreamKey("live", "quiet")
        await node.claim(kept)
        await node.claim(idle)
        await raw.hset(node.keys.stream(idle), "last_frame_at", time.time() - 3600)

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
        async def cost() -> str | None:
            obj = kmock.objects["v1/pods", NS, "demo-edge-abc"]
            return (obj.get("metadata", {}).get("annotations") or {}).get(
                decisions.DELETION_COST)
        assert await eventually(cost) == decisions.deletion_cost(42)

        # The cluster resource: its timer reaps the idle stream and reports status.
        await api.post(f"/apis/arcly.io/v1alpha1/namespaces/{NS}/arclyclusters", json={
            "apiVersion": "arcly.io/v1alpha1", "kind": "ArclyCluster",
            "metadata": {"name": "demo", "namespace": NS, "uid": "uid-demo",
                         "resourceVersion": "1"},
            "spec": {"idleTimeoutSeconds": 30}})

        async def reaped() -> bool:
            return await raw.get(node.keys.owner(idle)) is None
        await eventually(reaped)
        assert await raw.get(node.keys.owner(kept)) is not None, "the live stream is kept"

        async def status() -> dict[str, Any] | None:
            obj = kmock.objects["arcly.io/v1alpha1/arclyclusters", NS, "demo"]
            current = obj.get("status") or {}
            return current if current.get("reapedTotal") else None
        reported = await eventually(status)
        assert reported["readyOrigins"] == 1 and reported["readyEdges"] == 1
        assert reported["viewers"] == 42 and reported["liveStreams"] == 1
        assert reported["lastReap"].endswith("Z")

        # Deleting the origin Pod releases its keys at once (no wait for the lease).
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
        # The old owner cannot quietly retake a released key: its next renewal says so.
        lost = _Lost()
        await node.renew_all(lost)
        assert set(lost.keys) == {kept, idle}
        assert await raw.get(node.keys.owner(kept)) is None
    finally:
        await raw.aclose()
        await node.close()
        await edge.close()


class _Lost:
    """The node's side of ``renew_all``: records the keys it is told it lost."""

    def __init__(self) -> None:
        self.keys: list[StreamKey] = []

    def load(self) -> NodeLoad:
        return NodeLoad()

    def last_frame(self, key: StreamKey) -> float | None:
        return None

    def ownership_lost(self, key: StreamKey, reason: str) -> None:
        self.keys.append(key)


async def _state(raw: aioredis.Redis, node_id: str, state: str) -> bool:
    return bool(await raw.hget(f"arcly:node:{node_id}", "state") == state)
