"""The operator's decisions as plain functions."""

from __future__ import annotations

from arcly.engine import StreamKey
from arcly_operator import decisions


def pod(ready: bool | None, *, role: str = "edge", deleting: bool = False) -> dict:  # type: ignore[type-arg]
    meta: dict = {"name": "p", "labels": {decisions.COMPONENT: role}}  # type: ignore[type-arg]
    if deleting:
        meta["deletionTimestamp"] = "2026-11-24T00:00:00Z"
    conditions = [] if ready is None else [{"type": "Ready", "status": str(ready)}]
    return {"metadata": meta, "status": {"conditions": conditions}}


def test_node_state_follows_pod_readiness_and_deletion() -> None:
    assert decisions.node_state(pod(True)) == "ready"
    assert decisions.node_state(pod(False)) == "draining"
    assert decisions.node_state(pod(None)) == "draining"
    assert decisions.node_state(pod(True, deleting=True)) == "draining"
    assert decisions.node_state(pod(True), deleted=True) == "gone"


def test_only_node_pods_have_a_role() -> None:
    assert decisions.pod_role(pod(True, role="origin")) == "origin"
    assert decisions.pod_role(pod(True, role="operator")) is None
    assert decisions.pod_role({"metadata": {}}) is None


def test_deletion_cost_orders_edges_by_load() -> None:
    costs = [int(decisions.deletion_cost(v)) for v in (0, 1, 10, 100, 10_000)]
    assert costs == sorted(costs) and costs[0] == 0 and len(set(costs)) == len(costs)
    assert decisions.deletion_cost(101) == decisions.deletion_cost(102), "no churn on noise"


def test_streams_to_reap_picks_orphans_and_idle_streams() -> None:
    live, idle, orphan = StreamKey("a", "live"), StreamKey("a", "idle"), StreamKey("a", "orphan")
    reclaimed = StreamKey("a", "reclaimed")
    owners = {live: ("o1", 1), idle: ("o1", 2), orphan: ("o9", 3), reclaimed: ("o2", 5)}
    # reclaimed went idle under token 4; its new claim (5) is not idle
    marks = {(live, 1): 995.0, (idle, 2): 900.0, (reclaimed, 4): 900.0,
             (StreamKey("a", "gone"), 6): 900.0}
    alive = {live: True, idle: True, orphan: False, reclaimed: True}  # o9's session lapsed
    victims = decisions.streams_to_reap(owners, marks, alive, now=1000, idle_timeout=30)
    assert [(v.key, v.kind) for v in victims] == [
        (idle, decisions.ReapKind.IDLE), (orphan, decisions.ReapKind.ORPHANED)]
    assert victims[1].reason == "orphaned: owner o9 is gone"


def test_cluster_status_counts_ready_nodes_and_viewers() -> None:
    nodes = {"o1": {"role": "origin", "state": "ready"},
             "e1": {"role": "edge", "state": "ready", "viewers": "7"},
             "e2": {"role": "edge", "state": "draining", "viewers": "3"}}
    status = decisions.cluster_status(nodes, 2, "2026-11-24T00:00:00Z", 4)
    assert status == {"readyOrigins": 1, "readyEdges": 1, "liveStreams": 2, "viewers": 10,
                      "reapedTotal": 4, "lastReap": "2026-11-24T00:00:00Z"}
