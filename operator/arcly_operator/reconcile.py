"""The leader's loop: level-triggered, so a replica that just took over catches up at once.

Every ``interval`` seconds, while this replica leads: each arcly Pod's node state is written to
the registry (Ready → ``ready``, deleting or not Ready → ``draining``); each Ready edge gets the
deletion cost of its *current* viewer count (viewer counts change in Redis, not on the Pod, so
Pod events alone would leave the cost at its Ready-time value); idle streams and streams whose
owner is gone are reaped; each ``ArclyCluster`` of this release gets its status. kopf's Pod
event handler does the same for one Pod the moment it changes; this loop is the safety net and
the only writer of status and deletion costs between events.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from arcly.cluster.cluster_view import ClusterView
from arcly.cluster.model import NodeRole, NodeState
from arcly.engine import EngineConfig

from . import decisions
from .kube import Kube, KubeError
from .telemetry import Telemetry

log = logging.getLogger("arcly.operator")
ARCLYCLUSTERS = "/apis/arcly.io/v1alpha1/namespaces/{ns}/arclyclusters"
# The finalizer kopf's timer put on ArclyClusters up to chart 0.1: nothing removes it any more
# but us, and it would hold up their deletion (and the namespace's).
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
PODS = "/api/v1/namespaces/{ns}/pods"


@dataclass(slots=True)
class Reconciler:
    kube: Kube
    cluster: ClusterView
    telemetry: Telemetry
    namespace: str
    labels: Mapping[str, str]  # the Pods (and ArclyClusters) of this release
    identity: str              # this replica, named in the status it writes
    reaped: int = 0
    last_reap: str | None = None
    patched_costs: int = 0
    runs: int = field(default=0)

    def _ours(self, obj: Mapping[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(labels.get(k) == v for k, v in self.labels.items())

    async def node_states_and_costs(self, pods: list[dict[str, Any]],
                                    nodes: Mapping[str, Mapping[str, str]]) -> None:
        for pod in pods:
            role = decisions.pod_role(pod)
            if role is None or not self._ours(pod):
                continue
            name = pod["metadata"]["name"]
            state = decisions.node_state(pod)
            record = nodes.get(name) or {}
            if record.get("state") != state:
                await self.cluster.set_node_state(name, role, state)
                self.telemetry.transitions.add(1, {"state": state.value, "role": role.value})
            if role is NodeRole.EDGE and state is NodeState.READY:
                await self._deletion_cost(pod, record)

    async def _deletion_cost(self, pod: Mapping[str, Any], record: Mapping[str, str]) -> None:
        cost = decisions.deletion_cost(int(float(record.get("viewers", 0))))
        annotations = pod["metadata"].get("annotations") or {}
        if annotations.get(decisions.DELETION_COST) == cost:
            return
        name = pod["metadata"]["name"]
        await self.kube.merge_patch(f"{PODS.format(ns=self.namespace)}/{name}", {
            "metadata": {"annotations": {decisions.DELETION_COST: cost}}})
        self.patched_costs += 1

    async def reap(self, nodes: Mapping[str, Mapping[str, str]], idle_timeout: float) -> int:
        owners = await self.cluster.owners()
        idle = await self.cluster.idle()
        alive = await self.cluster.alive(owners, nodes)
        now = datetime.datetime.now(datetime.UTC)
        await self.cluster.forget_stale_idle(owners, idle)
        victims = decisions.streams_to_reap({k: (o.node_id, o.token) for k, o in owners.items()},
                                            idle, alive, now=now.timestamp(),
                                            idle_timeout=idle_timeout)
        for victim in victims:
            # Only the owner decided on: a broadcaster that re-claimed the key meanwhile keeps it.
            if await self.cluster.force_release(victim.key, victim.reason, owners[victim.key]):
                self.reaped += 1
                self.last_reap = now.isoformat(timespec="seconds").replace("+00:00", "Z")
                self.telemetry.reaps.add(1, {"reason": victim.kind.value})
                log.info("reaped stream=%s reason=%r", victim.key, victim.reason)
        return len(owners) - len(victims)

    async def run_once(self) -> None:
        with self.telemetry.action("reconcile") as span:
            pods = await self.kube.list(PODS.format(ns=self.namespace), labels=self.labels)
            clusters = [c for c in await self.kube.list(
                ARCLYCLUSTERS.format(ns=self.namespace), labels=self.labels) if self._ours(c)]
            for item in clusters:
                await self._drop_old_finalizer(item)
            try:
                nodes = await self.cluster.nodes()
                await self.node_states_and_costs(pods, nodes)
                idle_timeout = float(next(
                    (c.get("spec", {}).get("idleTimeoutSeconds") for c in clusters
                     if c.get("spec", {}).get("idleTimeoutSeconds")),
                    EngineConfig().idle_timeout or 30.0))
                live = await self.reap(nodes, idle_timeout)
            except RedisError as exc:  # say so where people look, then let the loop log it
                await self._status(clusters, {"registry": f"unreachable: {exc}"[:200],
                                              "leader": self.identity})
                raise
            await self._status(clusters, {
                **decisions.cluster_status(nodes, live, self.last_reap, self.reaped),
                "registry": "ok", "leader": self.identity})
            span.set_attribute("arcly.pods", len(pods))
            self.runs += 1

    async def _status(self, clusters: list[dict[str, Any]], status: dict[str, Any]) -> None:
        for item in clusters:
            name = item["metadata"]["name"]
            await self.kube.merge_patch(
                f"{ARCLYCLUSTERS.format(ns=self.namespace)}/{name}/status", {"status": status})

    async def _drop_old_finalizer(self, item: Mapping[str, Any]) -> None:
        finalizers = item.get("metadata", {}).get("finalizers") or []
        if KOPF_FINALIZER not in finalizers:
            return
        name = item["metadata"]["name"]
        await self.kube.merge_patch(f"{ARCLYCLUSTERS.format(ns=self.namespace)}/{name}", {
            "metadata": {"resourceVersion": item["metadata"].get("resourceVersion"),
                         "finalizers": [f for f in finalizers if f != KOPF_FINALIZER]}})
        log.info("removed the finalizer of chart 0.1 arclycluster=%s", name)

    async def run(self, stop: asyncio.Event, leading: Callable[[], bool],
                  interval: float) -> None:
        """Reconcile every ``interval`` seconds while ``leading()``, until ``stop``."""
        while not stop.is_set():
            if not leading():
                try:
                    await asyncio.wait_for(stop.wait(), min(interval, 0.5))
                except TimeoutError:
                    pass
                continue
            try:
                await self.run_once()
            except (KubeError, RedisError, OSError, TimeoutError) as exc:
                log.warning("reconcile failed error=%s", exc)
            except Exception:
                log.exception("reconcile crashed; trying again next interval")
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

