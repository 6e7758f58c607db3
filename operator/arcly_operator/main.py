"""The kopf handlers: ``kopf run -m arcly_operator.main --namespace=NS --peering=NAME``.

- Pods of arcly nodes: Ready → ``ready`` in the registry; deleting or not Ready → ``draining``;
  gone → removed, and every key an origin held is released at once (broadcasters reconnect
  without waiting for the lease). Edge Pods carry a deletion cost from their viewer count, so
  scale-in removes the least-loaded edge first.
- ``ArclyCluster`` timer: reaps streams that are idle or whose owner is gone (the owning node
  sees its ownership lost and ends the publish) and reports the cluster in ``.status``.

Settings come from the environment: read once when the handlers are declared (the timer's
interval and the Pod label filter are part of the declaration), and once per operator run at
startup (kept in ``memo``: the registry URL, the API server for tests).
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf

from arcly.cluster.cluster_view import ClusterView
from arcly.cluster.model import NodeRole, NodeState
from arcly_operator import decisions, telemetry
from arcly_operator.settings import OperatorSettings

DECLARED = OperatorSettings.from_env()
_LABELS: dict[str, Any] = {"app.kubernetes.io/part-of": "arcly"}
if DECLARED.release:
    _LABELS["app.kubernetes.io/instance"] = DECLARED.release


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    telemetry.configure()
    memo.settings = OperatorSettings.from_env()
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    memo.cluster = ClusterView(memo.settings.registry())
    memo.telemetry = telemetry.Telemetry()
    memo.reaped = 0
    memo.last_reap = None


@kopf.on.login()
def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    kube_url = memo.settings.kube_url  # startup runs before authentication
    if kube_url:  # tests: an emulated API server
        return kopf.ConnectionInfo(server=kube_url, insecure=True, scheme="Bearer",
                                   token="test")
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.cluster.close()


@kopf.on.event("v1", "pods", labels=_LABELS)
async def pod_event(event: dict[str, Any], body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo,
                    logger: kopf.Logger, **_: Any) -> None:
    """Node lifecycle from Pod events (idempotent: the same Pod state writes the same record)."""
    role = decisions.pod_role(body)
    if role is None:
        return
    name = body["metadata"]["name"]
    cluster: ClusterView = memo.cluster
    tel: telemetry.Telemetry = memo.telemetry
    state = decisions.node_state(body, deleted=event.get("type") == "DELETED")
    if state is NodeState.GONE:
        with tel.action("release", node=name, role=role.value) as span:
            released = await cluster.remove_node(name)
            span.set_attribute("arcly.keys_released", len(released))
        tel.transitions.add(1, {"state": state.value, "role": role.value})
        if released:
            tel.releases.add(len(released), {"reason": "owner gone"})
            message = f"node {name} is gone; released {', '.join(map(str, released))}"
            logger.info(message)
            kopf.event(body, type="Normal", reason="StreamKeysReleased", message=message)
        return
    with tel.action("register" if state is NodeState.READY else "drain", node=name,
                    role=role.value):
        await cluster.set_node_state(name, role, state)
    tel.transitions.add(1, {"state": state.value, "role": role.value})
    if role is NodeRole.EDGE and state is NodeState.READY:
        record = await cluster.node(name)
        cost = decisions.deletion_cost(int(float(record.get("viewers", 0))))
        annotations = body["metadata"].get("annotations") or {}
        if annotations.get(decisions.DELETION_COST) != cost:
            patch.setdefault("metadata", {}).setdefault("annotations", {})[
                decisions.DELETION_COST] = cost


@kopf.timer("arcly.io", "v1alpha1", "arclyclusters", interval=DECLARED.reap_interval,
            idle=None)
async def reconcile(spec: kopf.Spec, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger,
                    **_: Any) -> None:
    """Reap idle and orphaned streams; publish the cluster's state in ``.status``."""
    cluster: ClusterView = memo.cluster
    tel: telemetry.Telemetry = memo.telemetry
    idle_timeout = float(spec.get("idleTimeoutSeconds", 30))
    with tel.action("reap") as span:
        nodes = await cluster.nodes()
        owners = await cluster.owners()
        records = await cluster.stream_records(list(owners))
        now = datetime.datetime.now(datetime.UTC)
        victims = decisions.streams_to_reap(
            {k: o.node_id for k, o in owners.items()}, records, set(nodes),
            now=now.timestamp(), idle_timeout=idle_timeout)
        for victim in victims:
            if await cluster.force_release(victim.key, victim.reason):
                memo.reaped += 1
                memo.last_reap = now.isoformat(timespec="seconds").replace("+00:00", "Z")
                tel.reaps.add(1, {"reason": victim.kind.value})
                logger.info(f"reaped {victim.key}: {victim.reason}")
        span.set_attribute("arcly.streams_reaped", len(victims))
    patch.setdefault("status", {}).update(decisions.cluster_status(
        nodes, len(owners) - len(victims), memo.last_reap, memo.reaped))
