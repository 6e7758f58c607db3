"""The Redis registry: stream-key ownership with leases and fencing tokens, node records,
stream records and events.

Key layout (all under a configurable prefix, default ``arcly:``):

- ``{p}owner:{app}/{stream}`` — string ``{node}|{token}`` with a PX lease: who publishes the key.
- ``{p}fence:{app}/{stream}`` — integer (INCR): the key's fencing token, grows with every claim.
- ``{p}stream:{app}/{stream}`` — hash, expires with the lease: owner node, relay address, token,
  started/last-frame times.
- ``{p}node:{id}`` — hash, expires after 3 missed heartbeats: role, relay address, state
  (``ready``/``draining``), heartbeat time, live streams and viewers.
- ``{p}nodes`` — set of the ids of nodes that registered.
- ``{p}events`` — pub/sub channel of JSON events: published, unpublished, released,
  node-draining.

A Redis outage never cuts a stream that is already flowing: renewals and heartbeats retry with
backoff and nodes re-register when Redis returns. A publish that cannot claim ownership while
Redis is down is refused (no split-brain ownership). An owner whose lease was taken over while
it could not renew learns so at its next renewal and ends its publish ("ownership lost").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from opentelemetry import metrics, trace
from redis.exceptions import RedisError

from arcly.engine import ArclyError, StreamBusy, StreamKey

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


class RegistryUnavailable(ArclyError):
    """Redis cannot be reached; ownership cannot be decided."""


class OwnershipLost(ArclyError):
    """Another node took this key over (our lease lapsed while Redis was unreachable)."""


@dataclass(frozen=True, slots=True)
class Owner:
    node_id: str
    token: int
    relay: str
    trace: str = ""  # the publish session's W3C traceparent


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "arcly:"
    lease: float = 10.0
    heartbeat: float = 2.0
    timeout: float = 2.0


class RedisRegistry:
    """One node's view of the registry. Implements the kernel's ``KeyOwnership``."""

    def __init__(self, settings: RegistrySettings, *, node_id: str, role: str,
                 relay_address: str = "") -> None:
        self.settings = settings
        self.node_id = node_id
        self.role = role
        self.relay_address = relay_address
        self.state = "ready"
        self.redis = aioredis.Redis.from_url(settings.url, socket_timeout=settings.timeout,
                                             socket_connect_timeout=settings.timeout,
                                             decode_responses=True)
        self._claim = self.redis.register_script(_CLAIM)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._held: dict[StreamKey, int] = {}
        self.on_lost: Callable[[StreamKey, str], None] | None = None
        self.counts: Callable[[], dict[str, int]] = dict
        # Wall-clock time of a held key's last frame, for its stream record.
        self.last_frame: Callable[[StreamKey], float | None] = lambda key: None
        self._available = True

    # -- key names ---------------------------------------------------------------------------

    def owner_key(self, key: StreamKey) -> str:
        return f"{self.settings.prefix}owner:{key}"

    def fence_key(self, key: StreamKey) -> str:
        return f"{self.settings.prefix}fence:{key}"

    def stream_key(self, key: StreamKey) -> str:
        return f"{self.settings.prefix}stream:{key}"

    def node_key(self, node_id: str) -> str:
        return f"{self.settings.prefix}node:{node_id}"

    @property
    def events_channel(self) -> str:
        return f"{self.settings.prefix}events"

    def _lease_ms(self) -> int:
        return int(self.settings.lease * 1000)

    def _mark(self, ok: bool, error: Exception | None = None) -> None:
        if ok and not self._available:
            log.info("registry reachable again url=%s", _safe_url(self.settings.url))
        elif not ok and self._available:
            log.warning("registry unreachable url=%s error=%s", _safe_url(self.settings.url),
                        error)
        self._available = ok

    # -- ownership (KeyOwnership) --------------------------------------------------------------

    async def claim(self, key: StreamKey) -> int:
        with _tracer.start_as_current_span("ownership claim", attributes={
                "arcly.stream.key": str(key), "arcly.node.id": self.node_id}) as span:
            token = await self._claim_key(key)
            span.set_attribute("arcly.fencing_token", token)
            return token

    async def _claim_key(self, key: StreamKey) -> int:
        try:
            token = await self._claim(keys=[self.owner_key(key), self.fence_key(key)],
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
            released = await self._release(keys=[self.owner_key(key), self.stream_key(key)],
                                           args=[f"{self.node_id}|{token}"])
        except RedisError as exc:
            self._mark(False, exc)
            log.warning("could not release stream=%s (the lease will lapse) error=%s", key, exc)
            return
        if released:
            await self.publish_event("unpublished", key, token=token)

    async def renew_all(self) -> None:
        """Extend the lease of every key we hold; report keys another node took over."""
        for key, token in list(self._held.items()):
            try:
                ok = await self._renew(keys=[self.owner_key(key), self.stream_key(key)],
                                       args=[f"{self.node_id}|{token}", self._lease_ms()])
                if not ok:
                    # Lapsed while Redis was away: retake it if nobody else claimed it and
                    # nobody released it on purpose (both move the fence past our token).
                    fence = await self.redis.get(self.fence_key(key))
                    value = f"{self.node_id}|{token}"
                    ok = (fence is None or int(fence) <= token) and bool(await self.redis.set(
                        self.owner_key(key), value, nx=True, px=self._lease_ms()))
                    if ok:
                        await self._write_stream(key, token, started=False)
            except RedisError as exc:
                self._mark(False, exc)
                return
            self._mark(True)
            last = self.last_frame(key) if ok else None
            if last is not None:
                try:
                    await self.redis.hset(self.stream_key(key), "last_frame_at", last)
                except RedisError as exc:
                    self._mark(False, exc)
                    return
            if not ok:
                self._held.pop(key, None)
                log.warning("ownership lost stream=%s token=%d", key, token)
                if self.on_lost is not None:
                    self.on_lost(key, "ownership lost")

    async def owner(self, key: StreamKey) -> Owner | None:
        """Who publishes ``key`` and where to relay it from (None if nobody)."""
        try:
            value, record = await asyncio.gather(self.redis.get(self.owner_key(key)),
                                                 self.redis.hgetall(self.stream_key(key)))
        except RedisError as exc:
            self._mark(False, exc)
            raise RegistryUnavailable(f"cannot look up {key}: registry unavailable") from exc
        self._mark(True)
        if not value or "|" not in value:
            return None
        node_id, _, token = str(value).rpartition("|")
        return Owner(node_id, int(token), str(record.get("relay", "")),
                     str(record.get("trace", "")))

    async def set_trace(self, key: StreamKey, traceparent: str) -> None:
        """Store the publish session's trace context with its stream record."""
        try:
            await self.redis.hset(self.stream_key(key), "trace", traceparent)
        except RedisError as exc:
            self._mark(False, exc)

    async def force_release(self, key: StreamKey, reason: str) -> bool:
        """Release ``key`` whoever holds it (the operator does this for dead origins and
        idle streams). The fence moves on, so the old owner cannot quietly retake the key: its
        next renewal reports "ownership lost" and it ends the publish."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.owner_key(key), self.stream_key(key))
            pipe.incr(self.fence_key(key))
            deleted, _ = await pipe.execute()
        if deleted:
            await self.publish_event("released", key, reason=reason)
        return bool(deleted)

    # -- cluster-wide views (the operator) ------------------------------------------------------

    async def owners(self) -> dict[StreamKey, Owner]:
        """Every owned key and its owner."""
        prefix = f"{self.settings.prefix}owner:"
        names = [name async for name in self.redis.scan_iter(match=f"{prefix}*", count=500)]
        values = await self.redis.mget(names) if names else []
        found: dict[StreamKey, Owner] = {}
        for name, value in zip(names, values, strict=True):
            if not value or "|" not in str(value):
                continue
            try:
                key = StreamKey.parse(str(name)[len(prefix):])
            except ArclyError:
                continue
            node, _, token = str(value).rpartition("|")
            found[key] = Owner(node, int(token), "")
        return found

    async def stream_records(self, keys: list[StreamKey]) -> dict[StreamKey, dict[str, str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(self.stream_key(key))
            records = await pipe.execute()
        return {key: {str(k): str(v) for k, v in record.items()}
                for key, record in zip(keys, records, strict=True)}

    async def nodes(self) -> dict[str, dict[str, str]]:
        """Records of live nodes (their heartbeat has not lapsed); forgets the lapsed ones."""
        ids = sorted(str(i) for i in await self.redis.smembers(f"{self.settings.prefix}nodes"))
        async with self.redis.pipeline(transaction=False) as pipe:
            for node_id in ids:
                pipe.hgetall(self.node_key(node_id))
            records = await pipe.execute()
        alive: dict[str, dict[str, str]] = {}
        for node_id, record in zip(ids, records, strict=True):
            if record and "heartbeat" in record:
                alive[node_id] = {str(k): str(v) for k, v in record.items()}
            elif not record:
                await self.redis.srem(f"{self.settings.prefix}nodes", node_id)
        return alive

    async def set_node_state(self, node_id: str, role: str, state: str) -> None:
        """The operator's word on a node, from its Pod: ready or draining."""
        name = self.node_key(node_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping={"state": state, "role": role})
            pipe.pexpire(name, int(self.settings.heartbeat * 3000))
            await pipe.execute()
        if state == "draining":
            await self.publish_event("node-draining", None, target=node_id)

    async def remove_node(self, node_id: str) -> list[StreamKey]:
        """A node is gone: forget it and release every key it held. Returns those keys."""
        released = [key for key, owner in (await self.owners()).items()
                    if owner.node_id == node_id]
        for key in released:
            await self.force_release(key, f"owner {node_id} is gone")
        await self.redis.delete(self.node_key(node_id))
        await self.redis.srem(f"{self.settings.prefix}nodes", node_id)
        return released

    async def _write_stream(self, key: StreamKey, token: int, *, started: bool) -> None:
        now = time.time()
        mapping: dict[str, str | int | float] = {
            "owner": self.node_id, "relay": self.relay_address, "token": token,
            "last_frame_at": now}
        if started:
            mapping["started_at"] = now
        name = self.stream_key(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping=mapping)  # type: ignore[arg-type]
            pipe.pexpire(name, self._lease_ms())
            await pipe.execute()

    # -- nodes and events ----------------------------------------------------------------------

    async def heartbeat(self) -> None:
        record: dict[str, str | int | float] = {
            "role": self.role, "relay": self.relay_address, "heartbeat": time.time()}
        record.update(self.counts())
        name = self.node_key(self.node_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping=record)  # type: ignore[arg-type]
            # The state is the node's own ("draining" on SIGTERM) or the operator's (from the
            # Pod's readiness): a heartbeat only fills it in when nobody has.
            if self.state == "draining":
                pipe.hset(name, "state", "draining")
            else:
                pipe.hsetnx(name, "state", self.state)
            pipe.pexpire(name, int(self.settings.heartbeat * 3000))
            pipe.sadd(f"{self.settings.prefix}nodes", self.node_id)
            await pipe.execute()

    async def node(self, node_id: str) -> dict[str, str]:
        record = await self.redis.hgetall(self.node_key(node_id))
        return {str(k): str(v) for k, v in record.items()}

    async def set_state(self, state: str) -> None:
        self.state = state
        try:
            await self.heartbeat()
            if state == "draining":
                await self.publish_event("node-draining", None)
        except RedisError as exc:
            self._mark(False, exc)

    async def publish_event(self, kind: str, key: StreamKey | None, **fields: object) -> None:
        payload = json.dumps({"event": kind, "key": str(key) if key else None,
                              "node": self.node_id, "at": time.time(), **fields})
        try:
            await self.redis.publish(self.events_channel, payload)
        except RedisError as exc:
            self._mark(False, exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat and lease renewal until ``stop``; survives Redis outages (backoff)."""
        backoff = self.settings.heartbeat
        while not stop.is_set():
            try:
                await self.heartbeat()
                await self.renew_all()
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
            await self.redis.delete(self.node_key(self.node_id))
            await self.redis.srem(f"{self.settings.prefix}nodes", self.node_id)
        except RedisError as exc:
            log.warning("could not deregister node=%s error=%s", self.node_id, exc)

    async def close(self) -> None:
        await self.redis.aclose()


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
