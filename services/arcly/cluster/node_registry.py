"""A node's side of the registry: ownership of the keys it publishes (leases and fencing
tokens; the kernel's ``KeyOwnership``), its stream records, its heartbeat and state.

A Redis outage never cuts a stream that is already flowing: renewals and heartbeats retry with
backoff and nodes re-register when Redis returns. A publish that cannot claim ownership while
Redis is down is refused (no split-brain ownership). An owner whose lease was taken over while
it could not renew learns so at its next renewal and ends its publish ("ownership lost").
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from opentelemetry import metrics, trace
from redis.exceptions import RedisError

from arcly.engine import StreamBusy, StreamKey

from .model import NodeLoad, NodeRole, NodeState
from .registry import RegistryClient, RegistrySettings, RegistryUnavailable

log = logging.getLogger("arcly.registry")
_tracer = trace.get_tracer("arcly.registry")
_conflicts = metrics.get_meter("arcly.registry").create_counter(
    "arcly.ownership.conflicts", unit="{claim}",
    description="publishes refused because another node owns the key")

# Claim: SET NX PX, then INCR the fence; returns the new token, or nothing if taken. Tokens
# never fall below the wall clock in ms, so they stay unique even if Redis lost its data (they
# name publish sessions, e.g. in HLS segment URIs).
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  if token < tonumber(ARGV[3]) then
    token = tonumber(ARGV[3])
    redis.call('SET', KEYS[2], token)
  end
  redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
  return token
end
return false
"""
# Renew only what we hold (compare, then extend).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
  return 1
end
return 0
"""
# Release only what we hold (compare-and-delete).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""


class HeldStreams(Protocol):
    """What a node tells its registry about itself while it runs (``NodeRegistry.run``)."""

    def load(self) -> NodeLoad:
        """Streams and viewers, for the heartbeat."""
        ...

    def last_frame(self, key: StreamKey) -> float | None:
        """Wall-clock time of a held key's last frame, for its stream record."""
        ...

    def ownership_lost(self, key: StreamKey, reason: str) -> None:
        """Another node took ``key`` over: end its publish here."""
        ...


class NodeRegistry(RegistryClient):
    """One node's view of the registry. Implements the kernel's ``KeyOwnership``."""

    def __init__(self, settings: RegistrySettings, *, node_id: str, role: NodeRole,
                 relay_address: str = "") -> None:
        super().__init__(settings, actor=node_id)
        self.node_id = node_id
        self.role = role
        self.relay_address = relay_address
        self.state = NodeState.READY
        self._claim = self.redis.register_script(_CLAIM)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._held: dict[StreamKey, int] = {}
        self._streams: HeldStreams | None = None  # the node's, once ``run`` starts
        self._load = NodeLoad()

    def _lease_ms(self) -> int:
        return int(self.settings.lease * 1000)

    def _value(self, token: int) -> str:
        return f"{self.node_id}|{token}"

    def advertise(self, relay_address: str) -> None:
        """Where edges dial this origin's relay (known once its listener is bound)."""
        self.relay_address = relay_address

    # -- ownership (KeyOwnership) --------------------------------------------------------------

    async def claim(self, key: StreamKey) -> int:
        with _tracer.start_as_current_span("ownership claim", attributes={
                "arcly.stream.key": str(key), "arcly.node.id": self.node_id}) as span:
            token = await self._claim_key(key)
            span.set_attribute("arcly.fencing_token", token)
            return token

    async def _claim_key(self, key: StreamKey) -> int:
        try:
            token = await self._claim(keys=[self.keys.owner(key), self.keys.fence(key)],
                                      args=[self.node_id, self._lease_ms(),
                                            time.time_ns() // 1_000_000])
        except RedisError as exc:
            self._mark(False, exc)
            raise RegistryUnavailable(f"cannot claim {key}: registry unavailable") from exc
        self._mark(True)
        if not token:
            _conflicts.add(1)
            owner = await self.owner(key)
            where = f" on node {owner.node_id}" if owner else ""
            raise StreamBusy(f"{key} is already being published{where}")
        token = int(token)
        self._held[key] = token
        await self._write_stream(key, token, started=True)
        await self.publish_event("published", key, token=token)
        return token

    async def release(self, key: StreamKey, token: int) -> None:
        self._held.pop(key, None)
        try:
            released = await self._release(keys=[self.keys.owner(key), self.keys.stream(key)],
                                           args=[self._value(token)])
        except RedisError as exc:
            self._mark(False, exc)
            log.warning("could not release stream=%s (the lease will lapse) error=%s", key, exc)
            return
        if released:
            await self.publish_event("unpublished", key, token=token)

    async def renew_all(self, held: HeldStreams | None = None) -> None:
        """Extend the lease of every key we hold; report keys another node took over."""
        for key, token in list(self._held.items()):
            try:
                ok = await self._renew(keys=[self.keys.owner(key), self.keys.stream(key)],
                                       args=[self._value(token), self._lease_ms()])
                if not ok:
                    # Lapsed while Redis was away: retake it if nobody else claimed it and
                    # nobody released it on purpose (both move the fence past our token).
                    fence = await self.redis.get(self.keys.fence(key))
                    ok = (fence is None or int(fence) <= token) and bool(await self.redis.set(
                        self.keys.owner(key), self._value(token), nx=True,
                        px=self._lease_ms()))
                    if ok:
                        await self._write_stream(key, token, started=False)
            except RedisError as exc:
                self._mark(False, exc)
                return
            self._mark(True)
            last = held.last_frame(key) if ok and held is not None else None
            if last is not None:
                try:
                    await self.redis.hset(self.keys.stream(key), "last_frame_at", last)
                except RedisError as exc:
                    self._mark(False, exc)
                    return
            if not ok:
                self._held.pop(key, None)
                log.warning("ownership lost stream=%s token=%d", key, token)
                if held is not None:
                    held.ownership_lost(key, "ownership lost")

    async def set_trace(self, key: StreamKey, traceparent: str) -> None:
        """Store the publish session's trace context with its stream record."""
        try:
            await self.redis.hset(self.keys.stream(key), "trace", traceparent)
        except RedisError as exc:
            self._mark(False, exc)

    async def _write_stream(self, key: StreamKey, token: int, *, started: bool) -> None:
        now = time.time()
        mapping: dict[str, str | int | float] = {
            "owner": self.node_id, "relay": self.relay_address, "token": token,
            "last_frame_at": now}
        if started:
            mapping["started_at"] = now
        name = self.keys.stream(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping=mapping)  # type: ignore[arg-type]
            pipe.pexpire(name, self._lease_ms())
            await pipe.execute()

    # -- heartbeat and state -------------------------------------------------------------------

    async def heartbeat(self, load: NodeLoad | None = None) -> None:
        """Write this node's record with ``load`` (omitted: the running node's load now)."""
        if load is None and self._streams is not None:
            load = self._streams.load()
        if load is not None:
            self._load = load
        record: dict[str, str | int | float] = {
            "role": self.role.value, "relay": self.relay_address, "heartbeat": time.time(),
            "streams": self._load.streams, "viewers": self._load.viewers}
        name = self.keys.node(self.node_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping=record)  # type: ignore[arg-type]
            # The state is the node's own ("draining" on SIGTERM) or the operator's (from the
            # Pod's readiness): a heartbeat only fills it in when nobody has.
            if self.state is NodeState.DRAINING:
                pipe.hset(name, "state", NodeState.DRAINING.value)
            else:
                pipe.hsetnx(name, "state", self.state.value)
            pipe.pexpire(name, self.settings.node_ttl_ms)
            pipe.sadd(self.keys.nodes, self.node_id)
            await pipe.execute()

    async def set_state(self, state: NodeState) -> None:
        self.state = state
        try:
            await self.heartbeat()
            if state is NodeState.DRAINING:
                await self.publish_event("node-draining", None)
        except RedisError as exc:
            self._mark(False, exc)

    async def run(self, stop: asyncio.Event, held: HeldStreams) -> None:
        """Heartbeat and lease renewal until ``stop``; survives Redis outages (backoff)."""
        self._streams = held
        backoff = self.settings.heartbeat
        while not stop.is_set():
            try:
                await self.heartbeat()
                await self.renew_all(held)
                self._mark(True)
                backoff = self.settings.heartbeat
            except RedisError as exc:
                self._mark(False, exc)
                backoff = min(backoff * 2, self.settings.lease / 2)
            interval = min(backoff, self.settings.lease / 3)
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    async def deregister(self) -> None:
        try:
            await self.redis.delete(self.keys.node(self.node_id))
            await self.redis.srem(self.keys.nodes, self.node_id)
        except RedisError as exc:
            log.warning("could not deregister node=%s error=%s", self.node_id, exc)
