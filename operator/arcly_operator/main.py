"""The kopf handlers: ``kopf run -m arcly_operator.main --namespace=NS --peering=NAME``.

- Pods of arcly nodes: Ready → ``ready`` in the registry; deleting or not Ready → ``draining``;
  gone → removed, and every key an origin held is released at once (broadcasters reconnect
  without waiting for the lease). Edge Pods carry a deletion cost from their viewer count, so
  scale-in removes the least-loaded edge first.
- ``ArclyCluster`` timer: reaps streams that are idle or whose owner is gone (the owning node
  sees its ownership lost and ends the publish) and reports the cluster in ``.status``.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf

from arcly.cluster.registry import RedisRegistry, RegistrySettings
from arcly_operator import decisions, telemetry
from arcly_operator.settings import OperatorSettings

SETTINGS = OperatorSettings.from_env()
_LABELS: dict[str, Any] = {"app.kubernetes.io/part-of": "arcly"}
if SETTINGS.release:
    _LABELS["app.kubernetes.io/instance"] = SETTINGS.release


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    kube_url = OperatorSettings.from_env().kube_url
    if kube_url:  # tests: an emulated API server
        return kopf.ConnectionInfo(server=kube_url, insecure=True, scheme="Bearer",
                                   token="test")
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    telemetry.configure()
    current = OperatorSettings.from_env()
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    memo.registry = RedisRegistry(
        RegistrySettings(url=current.redis_url, prefix=current.redis_prefix),
        node_id="operator", role="operator")
    memo.telemetry = telemetry.Telemetry()
    memo.reaped = 0
    memo.last_reap = None


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.registry.close()


@kopf.on.event("v1", "pods", labels=_LABELS)
async def pod_event(event: dict[str, Any], body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo,
                    logger: kopf.Logger, **_: Any) -> None:
    """Node lifecycle from Pod events (idempotent: the same Pod state writes the same record)."""
    role = decisions.pod_role(body)
    if role is None:
        return
    name = body["metadata"]["name"]
    registry: RedisRegistry = memo.registry
    tel: telemetry.Telemetry = memo.telemetry
    state = decisions.node_state(body, deleted=event.get("type") == "DELETED")
    if state == "gone":
        with tel.action("release", node=name, role=role) as span:
            released = await registry.remove_node(name)
            span.set_attribute("arcly.keys_released", len(released))
        tel.transitions.add(1, {"state": "gone", "role": role})
        if released:
            tel.releases.add(len(released), {"reason": "owner gone"})
            message = f"node {name} is gone; released {', '.join(map(str, released))}"
            logger.info(message)
            kopf.event(body, type="Normal", reason="StreamKeysReleased", message=message)
        return
    with tel.action("register" if state == "ready" else "drain", node=name, role=role):
        await registry.set_node_state(name, role, state)
    tel.transitions.add(1, {"state": state, "role": role})
    if role == "edge" and state == "ready":
        record = await registry.node(name)
        cost = decisions.deletion_cost(int(float(record.get("viewers", 0))))
        annotations = body["metadata"].get("annotations") or {}
        if annotations.get(decisions.DELETION_COST) != cost:
            patch.setdefault("metadata", {}).setdefault("annotations", {})[
                decisions.DELETION_COST] = cost


@kopf.timer("arcly.io", "v1alpha1", "arclyclusters", interval=SETTINGS.reap_interval,
            idle=None)
async def reconcile(spec: kopf.Spec, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger,
                    **_: Any) -> None:
    """Reap idle and orphaned streams; publish the cluster's state in ``.status``."""
    registry: RedisRegistry = memo.registry
    tel: telemetry.Telemetry = memo.telemetry
    idle_timeout = float(spec.get("idleTimeoutSeconds", 30))
    with tel.action("reap") as span:
        nodes = await registry.nodes()
        owners = await registry.owners()
        records = await registry.stream_records(list(owners))
        now = datetime.datetime.now(datetime.UTC)
        victims = decisions.streams_to_reap(
            {k: o.node_id for k, o in owners.items()}, records, set(nodes),
            now=now.timestamp(), idle_timeout=idle_timeout)
        for victim in victims:
            if await registry.force_release(victim.key, victim.reason):
                memo.reaped += 1
                memo.last_reap = now.isoformat(timespec="seconds").replace("+00:00", "Z")
                tel.reaps.add(1, {"reason": victim.reason.split(":")[0]})
                logger.info(f"reaped {victim.key}: {victim.reason}")
        span.set_attribute("arcly.streams_reaped", len(victims))
    patch.setdefault("status", {}).update(decisions.cluster_status(
        nodes, len(owners) - len(victims), memo.last_reap, memo.reaped))
