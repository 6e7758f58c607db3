"""A node's side of the registry: its session, the ownership of the keys it publishes (fencing
tokens; the kernel's ``KeyOwnership``), its stream records, its heartbeat and state.

Ownership follows the node's **session** (the Chubby/ZooKeeper/etcd model): one short-TTL key
per node, renewed ``session_ttl / 4`` apart, and every key the node owns points at it. A claim
succeeds at once when the current owner's session is gone, so an origin's death frees its keys
within the TTL, and the renewal cost is one command per node, whatever it publishes.

A Redis outage shorter than the TTL cuts nothing. A node that cannot renew for longer than the
TTL (a partition, a stopped process) must assume its keys were taken: it ends every publish it
holds ("session lost") and starts a new session when Redis answers again. Fencing tokens grow
with every claim and travel with every relayed frame, so edges drop whatever a node that lost
its key still sends. A publish that cannot claim while Redis is down is refused (no split-brain
ownership).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Protocol

from opentelemetry import metrics
from redis.exceptions import NoScriptError, RedisError, ResponseError

from arcly.engine import CloseReason, StreamBusy, StreamKey

from .model import NodeLoad, NodeRole, NodeState
from .registry import (
    RegistryClient,
    RegistryEvent,
    RegistryEvents,
    RegistrySettings,
    RegistryUnavailable,
)

log = logging.getLogger("arcly.registry")
_conflicts = metrics.get_meter("arcly.registry").create_counter(
    "arcly.ownership.conflicts", unit="{claim}",
    description="publishes refused because another node owns the key")

# Claim. KEYS: owner, fence, our session key. ARGV: node, session, wall clock ms, key prefix.
# Refused while our own session is not the live one (we could not keep what we claim) or the
# current owner's session lives (an owner of chart 0.1, without session, while its key lives).
# Tokens never fall below the wall clock in ms, so they stay unique even if Redis lost its data
# (they name publish sessions, e.g. in HLS segment URIs). Reads the owner's session key, which
# is not in KEYS: fine on a single Redis, not on Redis Cluster.
_CLAIM = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return redis.error_reply('NOSESSION') end
local current = redis.call('GET', KEYS[1])
if current then
  local node, _, session = string.match(current, '^(.*)|(%d+)|(%w+)$')
  if not node then return false end
  if redis.call('GET', ARGV[4] .. 'session:' .. node) == session then return false end
end
local token = redis.call('INCR', KEYS[2])
if token < tonumber(ARGV[3]) then
  token = tonumber(ARGV[3])
  redis.call('SET', KEYS[2], token)
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token .. '|' .. ARGV[2])
return token
"""
# Release only what we hold (compare-and-delete).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""
# Renew our session: 1 extended, 0 gone (lapsed, or Redis lost its data), -1 someone else's.
_RENEW = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if current then return -1 end
return 0
"""
# Restore what we hold after Redis lost its data (restarted without persistence) while our
# session was still live by our clock: nobody could have claimed it, unless in the moment
# since. KEYS: session, then (owner, fence) per key. ARGV: session, ttl, then (value, token).
# Returns the indexes (1-based, per key) that someone else holds now.
_RESTORE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {-1} end
local lost = {}
for i = 2, #KEYS, 2 do
  local value, token = ARGV[i + 1], tonumber(ARGV[i + 2])
  if redis.call('SET', KEYS[i], value, 'NX') then
    if tonumber(redis.call('GET', KEYS[i + 1]) or 0) < token then
      redis.call('SET', KEYS[i + 1], token)
    end
  else
    table.insert(lost, i / 2)
  end
end
return lost
"""


class HeldStreams(Protocol):
    """What a node tells its registry about itself while it runs (``NodeRegistry.run``)."""

    def load(self) -> NodeLoad:
        """Streams and viewers, for the heartbeat."""
        ...

    def last_frame(self, key: StreamKey) -> float | None:
        """Wall-clock time of a held key's last frame (idle streams are marked for the
        operator)."""
        ...

    def ownership_lost(self, key: StreamKey, reason: str) -> None:
        """``key`` is not ours any more (session lost, released by the operator): end its
        publish here."""
        ...


class NodeRegistry(RegistryClient):
    """One node's view of the registry. Implements the kernel's ``KeyOwnership``."""

    def __init__(self, settings: RegistrySettings, *, node_id: str, role: NodeRole,
                 relay_address: str = "", idle_after: float = 5.0) -> None:
        super().__init__(settings, actor=node_id)
        self.node_id = node_id
        self.role = role
        self.relay_address = relay_address
        self.idle_after = idle_after  # a held stream without frames this long is marked idle
        self.state = NodeState.READY
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)
        self._renew = self.redis.register_script(_RENEW)
        self._restore = self.redis.register_script(_RESTORE)
        self.session = ""            # our session id; "" until the first start
        self._renewed_at = -1e18     # monotonic: our last successful renewal (or start)
        self._held: dict[StreamKey, int] = {}
        self._idle: set[StreamKey] = set()
        self._streams: HeldStreams | None = None  # the node's, once ``run`` starts
        self._load = NodeLoad()
        self.events = RegistryEvents(self)
        self.events.listen(self._on_event)

    def advertise(self, relay_address: str) -> None:
        """Where edges dial this origin's relay (known once its listener is bound)."""
        self.relay_address = relay_address

    def _value(self, token: int) -> str:
        return f"{self.node_id}|{token}|{self.session}"

    @property
    def session_alive(self) -> bool:
        """Whether our session may still be live in Redis (by our own clock)."""
        return time.monotonic() - self._renewed_at < self.settings.session_ttl

    # -- the session ---------------------------------------------------------------------------

    async def start_session(self) -> None:
        """A new session: new id, new key. Raises ``RedisError``."""
        session = secrets.token_hex(8)
        started = time.monotonic()
        await self.redis.set(self.keys.session(self.node_id), session,
                             px=int(self.settings.session_ttl * 1000))
        self.session, self._renewed_at = session, started
        log.info("registry session started node=%s session=%s ttl=%gs", self.node_id, session,
                 self.settings.session_ttl)

    async def renew_session(self) -> bool:
        """Extend our session; False when it is lost (then ``lose_session``). A session key
        that vanished while our clock says it cannot have lapsed means Redis lost its data: the
        session and what we hold are restored. Raises ``RedisError``."""
        sent = time.monotonic()
        renewed = await self._renew(keys=[self.keys.session(self.node_id)],
                                    args=[self.session, int(self.settings.session_ttl * 1000)])
        if renewed == 0 and self.session_alive:
            renewed = await self._restore_after_data_loss()
        if renewed == 1:
            self._renewed_at = sent
        return bool(renewed == 1)

    async def _restore_after_data_loss(self) -> int:
        held = list(self._held.items())
        keys = [self.keys.session(self.node_id)]
        args: list[str | int] = [self.session, int(self.settings.session_ttl * 1000)]
        for key, token in held:
            keys += [self.keys.owner(key), self.keys.fence(key)]
            args += [self._value(token), token]
        lost = await self._restore(keys=keys, args=args)
        if lost and lost[0] == -1:
            return -1
        for index in lost:
            key, _ = held[int(index) - 1]
            del self._held[key]
            if self._streams is not None:
                self._streams.ownership_lost(key, CloseReason.OWNERSHIP_LOST)
        for key, token in held:
            if key in self._held:
                await self._write_stream(key, token)
        log.warning("registry lost its data; session restored node=%s held=%d lost=%d",
                    self.node_id, len(self._held), len(lost))
        return 1

    def lose_session(self, why: str) -> None:
        """We cannot have kept our keys: end every publish we hold, forget them."""
        if self.session:
            log.warning("registry session lost node=%s session=%s reason=%s held=%d",
                        self.node_id, self.session, why, len(self._held))
        self.session = ""
        held, self._held = list(self._held), {}
        self._idle.clear()
        for key in held:
            if self._streams is not None:
                self._streams.ownership_lost(key, CloseReason.SESSION_LOST)

    # -- ownership (KeyOwnership) --------------------------------------------------------------

    async def claim(self, key: StreamKey) -> int:
        """Claim ``key``. While another node's session holds it, wait up to one session TTL
        for that session to lapse (a broadcaster that moved here from a dead origin is
        accepted the moment it does), then refuse with ``StreamBusy``."""
        deadline = time.monotonic() + self.settings.session_ttl
        while True:
            try:
                return await self._claim_once(key)
            except StreamBusy:
                if time.monotonic() >= deadline:
                    _conflicts.add(1)
                    raise
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    async def _claim_once(self, key: StreamKey) -> int:
        if not self.session or not self.session_alive:
            raise RegistryUnavailable(f"cannot claim {key}: no registry session (Redis away)")
        try:
            token = await self._claim(
                keys=[self.keys.owner(key), self.keys.fence(key),
                      self.keys.session(self.node_id)],
                args=[self.node_id, self.session, time.time_ns() // 1_000_000,
                      self.settings.prefix])
        except ResponseError as exc:
            if "NOSESSION" not in str(exc) or isinstance(exc, NoScriptError):
                raise RegistryUnavailable(f"cannot claim {key}: {exc}") from exc
            raise RegistryUnavailable(f"cannot claim {key}: our session lapsed") from exc
        except RedisError as exc:
            self._mark(False, exc)
            raise RegistryUnavailable(f"cannot claim {key}: registry unavailable") from exc
        self._mark(True)
        if not token:
            owner = await self.owner(key)
            where = f" on node {owner.node_id}" if owner else ""
            raise StreamBusy(f"{key} is already being published{where}")
        token = int(token)
        self._held[key] = token
        await self._write_stream(key, token)
        await self.publish_event("published", key, token=token)
        return token

    async def release(self, key: StreamKey, token: int) -> None:
        if self._held.get(key) != token:
            return  # not ours any more (session lost, released by the operator)
        del self._held[key]
        self._idle.discard(key)
        try:
            released = await self._release(keys=[self.keys.owner(key), self.keys.stream(key)],
                                           args=[self._value(token)])
        except RedisError as exc:
            self._mark(False, exc)
            log.warning("could not release stream=%s (free once our session lapses) "
                        "error=%s", key, exc)
            return
        if released:
            await self.publish_event("unpublished", key, token=token)

    def _on_event(self, event: RegistryEvent) -> None:
        """Someone else moved one of our keys on (the operator released it, a claim after our
        session lapsed): end its publish here."""
        if event.key is None or event.node == self.node_id:
            return
        token = self._held.get(event.key)
        if token is None or event.kind not in ("released", "published"):
            return
        if event.kind == "published" and (event.token or 0) <= token:
            return
        del self._held[event.key]
        self._idle.discard(event.key)
        log.warning("ownership lost stream=%s token=%d by=%s", event.key, token, event.node)
        if self._streams is not None:
            self._streams.ownership_lost(event.key, CloseReason.OWNERSHIP_LOST)

    async def set_trace(self, key: StreamKey, traceparent: str) -> None:
        """Store the publish session's trace context with its stream record."""
        try:
            await self.redis.hset(self.keys.stream(key), "trace", traceparent)
        except RedisError as exc:
            self._mark(False, exc)

    async def _write_stream(self, key: StreamKey, token: int) -> None:
        await self.redis.hset(self.keys.stream(key), mapping={
            "owner": self.node_id, "relay": self.relay_address, "token": token,
            "started_at": time.time()})

    async def mark_idle(self, held: HeldStreams) -> None:
        """Mark held streams without frames for ``idle_after`` (``idle_since``) and unmark
        them when frames come back: one command per change, none while streams flow."""
        now = time.time()
        for key in list(self._held):
            last = held.last_frame(key)
            idle = last is not None and now - last >= self.idle_after
            if idle and key not in self._idle:
                await self.redis.hset(self.keys.stream(key), "idle_since", last or now)
                self._idle.add(key)
            elif not idle and key in self._idle:
                await self.redis.hdel(self.keys.stream(key), "idle_since")
                self._idle.discard(key)

    # -- heartbeat and state -------------------------------------------------------------------

    async def heartbeat(self, load: NodeLoad | None = None) -> None:
        """Write this node's record with ``load`` (omitted: the running node's load now)."""
        if load is None and self._streams is not None:
            load = self._streams.load()
        if load is not None:
            self._load = load
        record: dict[str, str | int | float] = {
            "role": self.role.value, "relay": self.relay_address, "heartbeat": time.time(),
            "session": self.session, "streams": self._load.streams,
            "viewers": self._load.viewers}
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
        """Keep the session (a renewal every ``session_ttl / 4``), heartbeat and mark idle
        streams every ``heartbeat``, and listen to the events channel, until ``stop``."""
        self._streams = held
        events = asyncio.create_task(self.events.run(stop), name="registry-events")
        try:
            await self._keep_session(stop, held)
        finally:
            events.cancel()
            await asyncio.gather(events, return_exceptions=True)

    async def _keep_session(self, stop: asyncio.Event, held: HeldStreams) -> None:
        next_heartbeat = 0.0
        while not stop.is_set():
            try:
                if not self.session:
                    await self.start_session()
                elif not await self.renew_session():
                    self.lose_session("it lapsed in Redis")
                    continue
                self._mark(True)
                if time.monotonic() >= next_heartbeat:
                    next_heartbeat = time.monotonic() + self.settings.heartbeat
                    await self.heartbeat()
                    await self.mark_idle(held)
            except (RedisError, OSError) as exc:
                self._mark(False, exc)
            if self.session and not self.session_alive:
                self.lose_session("no renewal for longer than its TTL")
            try:
                await asyncio.wait_for(stop.wait(), self.settings.session_renew)
            except TimeoutError:
                pass

    async def deregister(self) -> None:
        try:
            await self.redis.delete(self.keys.node(self.node_id))
            await self.redis.srem(self.keys.nodes, self.node_id)
            if self.session:  # a clean stop frees our keys at once
                session_key = self.keys.session(self.node_id)
                await self._release(keys=[session_key, session_key], args=[self.session])
        except RedisError as exc:
            log.warning("could not deregister node=%s error=%s", self.node_id, exc)
