"""One active operator among its replicas: leader election on a Kubernetes ``Lease``.

Why a Lease and not kopf's peering: kopf pauses every peer of equal priority (replicas of one
Deployment share their arguments, so they freeze each other), and its timers put a finalizer on
the resource they run on, which can hang ``helm uninstall``. A Lease is what controller-runtime
and client-go use: ``kubectl get lease`` shows who leads, and nothing blocks a deletion.

The protocol is client-go's: the leader renews ``spec.renewTime`` every ``renew_every``
seconds; the others watch the record, and take it over once it has not changed for
``duration`` seconds *as they observed it* (their own clock, so clock skew between nodes does
not matter). Writes are merge patches naming the ``resourceVersion`` they read, which the API
server applies only to that version, so of two candidates only one wins. A leader that cannot
renew within its renew deadline (two thirds of ``duration``) stops acting before anyone may
take over; one that stops cleanly empties the holder so a follower takes over at its next try.
Failover after a crash: at most ``duration + 2 * retry`` seconds (+ request latency).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .kube import Conflict, Kube

log = logging.getLogger("arcly.operator")


@dataclass(frozen=True, slots=True)
class Observed:
    """A lease record as a candidate last saw it, and when (its own monotonic clock)."""

    holder: str
    renew_time: str
    at: float


def micro_time(now: datetime.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(name: str, namespace: str, holder: str, duration: int, transitions: int,
               now: datetime.datetime, acquired: str | None = None,
               resource_version: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    stamp = micro_time(now)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                     "acquireTime": acquired or stamp, "renewTime": stamp,
                     "leaseTransitions": transitions}}


def may_take(lease: dict[str, Any], me: str, observed: Observed | None, now: float,
             duration: float) -> bool:
    """Whether ``me`` may write itself into ``lease``: it holds it already, nobody does, or the
    holder has not renewed for ``duration`` seconds since we first saw that record."""
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if holder in ("", me):
        return True
    if observed is None or observed.holder != holder or \
            observed.renew_time != spec.get("renewTime", ""):
        return False  # the record changed (or is new to us): the holder is alive
    return now - observed.at >= duration


class LeaderElector:
    """``is_leader`` is true only while our last successful renewal is younger than
    ``renew_deadline`` (two thirds of ``duration``, client-go's ratio): a leader that cannot
    reach the API server stops acting *before* a follower may take over, even if a request
    hangs."""

    def __init__(self, kube: Kube, *, namespace: str, name: str, identity: str,
                 duration: float = 15.0, renew_every: float = 5.0, retry: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.renew_deadline = duration * 2 / 3
        self.renew_every = min(renew_every, self.renew_deadline / 2)
        self.retry = retry
        self.clock = clock
        self.on_change = on_change
        self._leading = False  # as last decided; ``is_leader`` also checks the deadline
        self._announced = False
        self._observed: Observed | None = None
        self._renewed_at = -1e18  # our clock, when our last renewal succeeded

    @property
    def is_leader(self) -> bool:
        return self._leading and self.clock() - self._renewed_at < self.renew_deadline

    @property
    def path(self) -> str:
        return (f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/"
                f"{self.name}")

    def _set(self, leader: bool) -> None:
        changed = leader != self._leading
        if changed or not self._announced:
            self._announced = True
            log.info("%s leader=%s lease=%s/%s", "leading" if leader else "following",
                     self.identity, self.namespace, self.name)
        if changed:
            self._leading = leader
            if self.on_change is not None:
                self.on_change(leader)

    async def try_once(self) -> bool:
        """Acquire or renew once; returns whether we lead now."""
        now = self.clock()
        wall = datetime.datetime.now(datetime.UTC)
        lease = await self.kube.get(self.path)
        if lease is None:
            body = lease_body(self.name, self.namespace, self.identity, int(self.duration), 0,
                              wall)
            try:
                await self.kube.create(
                    f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases", body)
            except Conflict:
                return False  # another candidate created it first
            self._renewed_at = now
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        renew = spec.get("renewTime", "")
        if self._observed is None or (self._observed.holder, self._observed.renew_time) != (
                holder, renew):
            self._observed = Observed(holder, renew, now)
        if not may_take(lease, self.identity, self._observed, now, self.duration):
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (holder != self.identity)
        body = lease_body(self.name, self.namespace, self.identity, int(self.duration),
                          transitions, wall,
                          acquired=spec.get("acquireTime") if holder == self.identity else None,
                          resource_version=lease.get("metadata", {}).get("resourceVersion"))
        try:
            await self.kube.merge_patch(self.path, body)
        except Conflict:
            return False  # the record changed under us: someone else wrote it first
        self._renewed_at = now
        return True

    def _budget(self) -> float:
        """How long one attempt may take: a leader must know before its deadline passes."""
        if not self._leading:
            return max(self.retry, 1.0) * 2
        return max(0.5, self.renew_deadline - (self.clock() - self._renewed_at))

    async def run(self, stop: asyncio.Event) -> None:
        """Lead or follow until ``stop``; then give the lease up if we hold it. Any failure
        of an attempt (the API server away, a broken response) is logged and retried."""
        try:
            while not stop.is_set():
                ok = True
                try:
                    leading = await asyncio.wait_for(self.try_once(), self._budget())
                except Exception as exc:  # the elector must never die
                    ok = False
                    log.warning("lease %s/%s not renewed error=%r", self.namespace, self.name,
                                exc)
                    leading = self.is_leader  # past the renew deadline: no longer
                self._set(leading)
                wait = self.renew_every if leading and ok else self.retry
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except TimeoutError:
                    pass
        finally:
            if self.is_leader:
                await self._release()
            self._set(False)

    async def _release(self) -> None:
        """Step down now (a clean shutdown): an empty holder lets a follower take over at its
        next try instead of after the lease duration."""
        try:
            lease = await asyncio.wait_for(self.kube.get(self.path), self.retry * 2)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != \
                    self.identity:
                return
            await asyncio.wait_for(self.kube.merge_patch(self.path, {
                "metadata": {"resourceVersion": lease["metadata"].get("resourceVersion")},
                "spec": {"holderIdentity": ""}}), self.retry * 2)
        except Exception as exc:  # shutting down; the lease lapses anyway
            log.warning("could not release lease %s/%s error=%r", self.namespace, self.name,
                        exc)
