"""What the operator decides, as pure functions over plain data (easy to test, no I/O)."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from arcly.cluster.model import NodeRole, NodeState
from arcly.engine import StreamKey

COMPONENT = "app.kubernetes.io/component"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
NODE_ROLES = (NodeRole.ORIGIN, NodeRole.EDGE)


def pod_role(pod: Mapping[str, Any]) -> NodeRole | None:
    """``origin`` or ``edge`` for arcly node Pods, None for anything else."""
    role = (pod.get("metadata", {}).get("labels") or {}).get(COMPONENT)
    return NodeRole(role) if role in NODE_ROLES else None


def node_state(pod: Mapping[str, Any], *, deleted: bool = False) -> NodeState:
    """``gone`` once deleted; ``draining`` while being deleted or not Ready; else ``ready``."""
    if deleted:
        return NodeState.GONE
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return NodeState.DRAINING
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return NodeState.READY if ready else NodeState.DRAINING


def deletion_cost(viewers: int) -> str:
    """The Pod deletion cost for an edge with ``viewers``: the ReplicaSet controller removes
    the lowest cost first, so idle edges go before busy ones. Log-scaled and capped so small
    changes in viewers do not patch the Pod every few seconds."""
    if viewers <= 0:
        return "0"
    return str(min(1_000_000, int(10 * math.log2(1 + viewers))))


class ReapKind(enum.StrEnum):
    """Why the operator reaps a stream (the label of its reap metric)."""

    ORPHANED = "orphaned"  # the owning node is gone
    IDLE = "idle"          # no frame for longer than the idle timeout


@dataclass(frozen=True, slots=True)
class Victim:
    key: StreamKey
    kind: ReapKind
    reason: str  # for people: logs and the release event


def streams_to_reap(owners: Mapping[StreamKey, tuple[str, int]],
                    idle: Mapping[tuple[StreamKey, int], float],
                    alive: Mapping[StreamKey, bool], *, now: float,
                    idle_timeout: float) -> list[Victim]:
    """Keys whose owner is gone (its session lapsed: orphaned) or that their owner marked idle
    (``idle``: (key, token of the claim) → last frame) longer than ``idle_timeout`` ago.
    ``owners``: key → (node, token)."""
    victims = []
    for key, (node, token) in sorted(owners.items(), key=lambda item: str(item[0])):
        if not alive.get(key, False):
            victims.append(Victim(key, ReapKind.ORPHANED, f"orphaned: owner {node} is gone"))
            continue
        since = idle.get((key, token))
        if since is not None and now - since > idle_timeout:
            victims.append(Victim(key, ReapKind.IDLE,
                                  f"idle for more than {idle_timeout:g} s"))
    return victims


def cluster_status(nodes: Mapping[str, Mapping[str, str]], live_streams: int,
                   last_reap: str | None, reaped: int) -> dict[str, Any]:
    """The ``ArclyCluster`` status block (what ``kubectl get arclyclusters`` shows)."""
    def count(role: NodeRole) -> int:
        return sum(1 for n in nodes.values() if n.get("role") == role
                   and n.get("state", NodeState.READY) == NodeState.READY)

    status: dict[str, Any] = {
        "readyOrigins": count(NodeRole.ORIGIN),
        "readyEdges": count(NodeRole.EDGE),
        "liveStreams": live_streams,
        "viewers": sum(int(float(n.get("viewers", 0))) for n in nodes.values()
                       if n.get("role") == NodeRole.EDGE),
        "reapedTotal": reaped,
    }
    if last_reap:
        status["lastReap"] = last_reap
    return status
