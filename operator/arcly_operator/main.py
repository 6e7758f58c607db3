"""The kopf handlers: ``kopf run --standalone -m arcly_operator.main --namespace=NS``.

Replicas elect one leader on a Kubernetes Lease (``leadership``); only the leader acts:

- Pod events of arcly nodes (the moment they happen): Ready → ``ready`` in the registry;
  deleting or not Ready → ``draining``; gone → removed, and every key an origin held is
  released at once (broadcasters reconnect without waiting for the lease). Edge Pods get a
  deletion cost from their viewer count, so scale-in removes the least-loaded edge first.
- The reconcile loop (``reconcile``, every ``ARCLY_OPERATOR_INTERVAL`` s): the same for every
  Pod, deletion costs refreshed from live viewer counts, idle and orphaned streams reaped, the
  cluster reported in each ``ArclyCluster``'s ``.status`` (``leader`` names the acting replica).

No handler runs on the ``ArclyCluster`` itself, so it carries no finalizer and an uninstall
never waits for the operator. Settings come from the environment: read once when the handlers
are declared (the Pod label filter is part of the declaration) and once per run at startup.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import kopf
from aiohttp import web

from arcly.cluster.cluster_view import ClusterView
from arcly.cluster.model import NodeRole, NodeState
from arcly_operator import decisions, telemetry
from arcly_operator.kube import Kube, KubeAccess
from arcly_operator.leadership import LeaderElector
from arcly_operator.reconcile import Reconciler
from arcly_operator.settings import OperatorSettings

log = logging.getLogger("arcly.operator")
DECLARED = OperatorSettings.from_env()
LABELS = DECLARED.pod_labels()


def _identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    current = OperatorSettings.from_env()
    memo.settings = current
    memo.installed = telemetry.configure()
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    memo.identity = _identity()
    memo.kube = Kube(KubeAccess.from_settings(current.kube_url))
    memo.cluster = ClusterView(current.registry())
    memo.elector = LeaderElector(
        memo.kube, namespace=current.namespace, name=current.lease_name,
        identity=memo.identity, duration=current.lease_seconds,
        renew_every=max(1.0, current.lease_seconds / 3), retry=current.lease_retry)
    memo.telemetry = telemetry.Telemetry(leading=lambda: memo.elector.is_leader)
    memo.reconciler = Reconciler(memo.kube, memo.cluster, memo.telemetry, current.namespace,
                                 current.pod_labels(), memo.identity)
    memo.stop = asyncio.Event()
    memo.tasks = [
        asyncio.create_task(memo.elector.run(memo.stop), name="leader-election"),
        asyncio.create_task(memo.reconciler.run(
            memo.stop, lambda: memo.elector.is_leader, current.reap_interval),
            name="reconcile")]
    memo.metrics = await _serve_metrics(current.metrics_listen, memo.installed)
    log.info("operator starting id=%s namespace=%s release=%s lease=%s/%s", memo.identity,
             current.namespace, current.release or "*", current.namespace, current.lease_name)


async def _serve_metrics(listen: str, installed: Any) -> web.AppRunner | None:
    """``GET /metrics`` (Prometheus text of the operator's instruments) on ``listen``."""
    if not listen or installed is None or installed.prometheus is None:
        return None

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=installed.prometheus_text(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]") or "0.0.0.0", int(port))
    await site.start()
    for bound in runner.addresses:
        log.info("listening protocol=metrics address=%s:%d", bound[0], bound[1])
    return runner


@kopf.on.probe(id="operator")
def alive(memo: kopf.Memo, **_: Any) -> str:
    """Part of kopf's liveness endpoint: a replica whose election or loop died is restarted."""
    for task in memo.tasks:
        if task.done() and not memo.stop.is_set():
            why = "cancelled" if task.cancelled() else repr(task.exception())
            raise RuntimeError(f"{task.get_name()} stopped: {why}")
    return "leader" if memo.elector.is_leader else "follower"


@kopf.on.login()
def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    kube_url = memo.settings.kube_url  # startup runs before authentication
    if kube_url:  # tests: an emulated API server
        return kopf.ConnectionInfo(server=kube_url, insecure=True, scheme="Bearer",
                                   token="test")
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.stop.set()
    await asyncio.gather(*memo.tasks, return_exceptions=True)  # the leader steps down
    if memo.metrics is not None:
        await memo.metrics.cleanup()
    await memo.cluster.close()
    await memo.kube.close()
    if memo.installed is not None:
        memo.installed.shutdown()


@kopf.on.event("v1", "pods", labels=LABELS)
async def pod_event(event: kopf.RawEvent, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo,
                    logger: kopf.Logger, **_: Any) -> None:
    """Node lifecycle from Pod events, on the leader (idempotent: the same Pod state writes the
    same record; the reconcile loop covers what a follower missed)."""
    role = decisions.pod_role(body)
    if role is None or not memo.elector.is_leader:
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
