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
import random
import secrets
import time
from typing import Protocol

from opentelemetry import metrics
from redis.exceptions import RedisError, ResponseError

from arcly.engine import CloseReason, StreamBusy, StreamKey

from . import scripts
from .model import NodeLoad, NodeRole, NodeState
from .registry import (
    RegistryClient,
    RegistryEvent,
    RegistryEvents,
    RegistrySettings,
    RegistryUnavailable,
    idle_member,
)

log = logging.getLogger("arcly.registry")
_conflicts = metrics.get_meter("arcly.registry").create_counter(
    "arcly.ownership.conflicts", unit="{claim}",
    description="publishes refused because another node owns the key")

class HeldStreams(Protocol):
    """What a node tells its registry about itself while it runs (``NodeRegistry.run``)."""

    def load(self) -> NodeLoad:
        """Streams and viewers, for the heartbeat."""
        ...

    def last_frame(self, key: StreamKey) -> float | None:
        """Wall-clock time of a held key's last frame (idle streams are marked for the
        operator)."""
        ...

    def ownership_lost(self, key: StreamKey, token: int, reason: str) -> None:
        """``key`` is not ours any more (session lost, released by the operator, claimed
        elsewhere): end its publish of fencing ``token`` here."""
        ...


class NodeRegistry(RegistryClient):
    """One node's view of the registry. Implements the kernel's ``KeyOwnership`` (origins).

    Edges hold no session (they own nothing): they only heartbeat and listen to events."""

    def __init__(self, settings: RegistrySettings, *, node_id: str, role: NodeRole,
                 relay_address: str = "", idle_after: float = 5.0) -> None:
        super().__init__(settings, actor=node_id)
        self.node_id = node_id
        self.role = role
        self.relay_address = relay_address
        self.idle_after = idle_after  # a held stream without frames this long is marked idle
        self.state = NodeState.READY
        self._claim = self.redis.register_script(scripts.CLAIM)
        self._release = self.redis.register_script(scripts.RELEASE)
        self._set_field = self.redis.register_script(scripts.SET_FIELD)
        self._restore = self.redis.register_script(scripts.RESTORE)
        self.session = ""            # our session id; "" until the first start
        self._renewed_at = -1e18     # monotonic: when our last successful renewal was sent
        self._expiry: asyncio.TimerHandle | None = None
        self._held: dict[StreamKey, int] = {}
        self._unreleased: dict[StreamKey, int] = {}  # releases Redis did not take; retried
        self._idle: set[StreamKey] = set()
        self._streams: HeldStreams | None = None  # the node's, once ``run`` starts
        self._load = NodeLoad()
        self.events = RegistryEvents(self)
        self.events.listen(self._on_event)

    @property
    def keeps_session(self) -> bool:
        return self.role is not NodeRole.EDGE

    def advertise(self, relay_address: str) -> None:
        """Where edges dial this origin's relay (known once its listener is bound)."""
        self.relay_address = relay_address

    def _value(self, token: int, session: str | None = None) -> str:
        return f"{self.node_id}|{token}|{self.session if session is None else session}"

    @property
    def session_alive(self) -> bool:
        """Whether our session may still be live in Redis (by our own clock: Redis started its
        TTL after we sent the renewal, so it cannot lapse there before it does here)."""
        return bool(self.session) and \
            time.monotonic() - self._renewed_at < self.settings.session_ttl

    # -- the session ---------------------------------------------------------------------------

    async def start_session(self) -> None:
        """A new session: new id, new key. Raises ``RedisError``."""
        session = secrets.token_hex(8)
        started = time.monotonic()
        await self.redis.set(self.keys.session(self.node_id), session,
                             px=int(self.settings.session_ttl * 1000))
        self.session = session
        self._renewed(started)
        log.info("registry session started node=%s session=%s ttl=%gs", self.node_id, session,
                 self.settings.session_ttl)

    def _renewed(self, sent: float) -> None:
        """Our session was extended by a command sent at ``sent``: it lives (for Redis) at
        least until ``sent + ttl``; at that moment, unless renewed again, we lose it — on a
        timer, so a renewal stuck in a dead connection cannot keep us publishing past it."""
        self._renewed_at = sent
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = asyncio.get_running_loop().call_later(
            max(0.0, sent + self.settings.session_ttl - time.monotonic()), self._expired)

    def _expired(self) -> None:
        self._expiry = None
        if not self.session:
            return
        if self.session_alive:  # the timer fired a hair early
            self._renewed(self._renewed_at)
            return
        self.lose_session("no renewal for longer than its TTL")

    async def renew_session(self) -> bool:
        """Extend our session (one PEXPIRE: the cheapest renewal there is; the heartbeat checks
        that the key still holds our id). False when it is lost (then ``lose_session``). A
        session key that vanished while our clock says it cannot have lapsed means Redis lost
        its data: the session and what we hold are restored. Raises ``RedisError``."""
        session, sent = self.session, time.monotonic()
        renewed = await self.redis.pexpire(self.keys.session(self.node_id),
                                           int(self.settings.session_ttl * 1000))
        if self.session != session:
            # Lost while the renewal was on its way (our timer fired): free its keys now if
            # it still lives in Redis; the next round starts a new session.
            if renewed:
                await self._drop_session_key(session)
            return True
        if not renewed and not (self.session_alive and await self._restore_after_data_loss() == 1):
            return False
        if self.session == session:
            self._renewed(sent)
        return True

    async def _drop_session_key(self, session: str) -> None:
        session_key = self.keys.session(self.node_id)
        await self._release(keys=[session_key, session_key], args=[session])

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
            key, token = held[int(index) - 1]
            self._drop(key, token, CloseReason.OWNERSHIP_LOST)
        for key, token in held:
            if self._held.get(key) == token:
                await self._write_stream(key, token)
        self._unreleased.clear()  # Redis forgot them: nothing left to release
        self._idle.clear()        # nor to unmark; the next heartbeat marks again
        log.warning("registry lost its data; session restored node=%s held=%d lost=%d",
                    self.node_id, len(self._held), len(lost))
        return 1

    def lose_session(self, why: str) -> None:
        """We cannot have kept our keys: end every publish we hold, forget them."""
        if self.session:
            log.warning("registry session lost node=%s session=%s reason=%s held=%d",
                        self.node_id, self.session, why, len(self._held))
        self.session = ""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        held, self._held = list(self._held.items()), {}
        self._idle.clear()
        self._unreleased.clear()  # they lapse with the session
        for key, token in held:
            if self._streams is not None:
                self._streams.ownership_lost(key, token, CloseReason.SESSION_LOST)

    def _drop(self, key: StreamKey, token: int, reason: CloseReason) -> None:
        """``key`` (under ``token``) is not ours any more: forget it, end its publish."""
        if self._held.get(key) != token:
            return
        del self._held[key]
        self._idle.discard(key)
        if self._streams is not None:
            self._streams.ownership_lost(key, token, reason)

    # -- ownership (KeyOwnership) --------------------------------------------------------------

    async def claim(self, key: StreamKey) -> int:
        """Claim ``key``. While another node's session holds it, wait up to one session TTL
        for that session to lapse (a broadcaster that moved here from a dead origin is
        accepted the moment it does), then refuse with ``StreamBusy``."""
        deadline = time.monotonic() + self.settings.session_ttl
        while True:
            token = await self._claim_once(key)
            if token is not None:
                return token
            if time.monotonic() >= deadline:
                _conflicts.add(1)
                owner = await self.owner(key)
                where = f" on node {owner.node_id}" if owner else ""
                raise StreamBusy(f"{key} is already being published{where}")
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    async def _claim_once(self, key: StreamKey) -> int | None:
        """One claim: the token, or None while another live session owns ``key``."""
        session = self.session
        if not self.session_alive:
            raise RegistryUnavailable(f"cannot claim {key}: no registry session (Redis away)")
        try:
            token = await self._claim(
                keys=[self.keys.owner(key), self.keys.fence(key),
                      self.keys.session(self.node_id), self.keys.stream(key)],
                args=[self.node_id, session, time.time_ns() // 1_000_000,
                      self.settings.prefix, self.relay_address, time.time()])
        except ResponseError as exc:
            if "NOSESSION" not in str(exc):
                raise RegistryUnavailable(f"cannot claim {key}: {exc}") from exc
            raise RegistryUnavailable(f"cannot claim {key}: our session lapsed") from exc
        except RedisError as exc:
            self.mark_reachable(False, exc)
            raise RegistryUnavailable(f"cannot claim {key}: registry unavailable") from exc
        self.mark_reachable(True)
        if not token:
            return None
        token = int(token)
        if self.session != session:  # lost while the claim was on its way: it names a dead
            raise RegistryUnavailable(f"cannot claim {key}: our session lapsed")  # session
        self._unreleased.pop(key, None)
        self._held[key] = token
        await self.publish_event("published", key, token=token)
        if self._held.get(key) != token:  # claimed elsewhere or lost while we announced it
            raise RegistryUnavailable(f"cannot claim {key}: lost it while claiming")
        return token

    async def release(self, key: StreamKey, token: int) -> None:
        if self._held.get(key) != token:
            return  # not ours any more (session lost, released by the operator)
        del self._held[key]
        was_idle = key in self._idle
        self._idle.discard(key)
        if not await self._release_now(key, token, was_idle):
            self._unreleased[key] = token
            log.warning("could not release stream=%s (retried while our session lives)", key)

    async def _release_now(self, key: StreamKey, token: int, was_idle: bool = True) -> bool:
        """Release one key we held; False when Redis did not answer."""
        try:
            released = await self._release(keys=[self.keys.owner(key), self.keys.stream(key)],
                                           args=[self._value(token)])
            if was_idle:
                await self.redis.zrem(self.keys.idle, idle_member(key, token))
        except RedisError as exc:
            self.mark_reachable(False, exc)
            return False
        if released:
            await self.publish_event("unpublished", key, token=token)
        return True

    async def _retry_releases(self) -> None:
        for key, token in list(self._unreleased.items()):
            if self._unreleased.get(key) == token and await self._release_now(key, token):
                self._unreleased.pop(key, None)

    def _on_event(self, event: RegistryEvent) -> None:
        """Someone else moved one of our keys on: the operator released it (the event names
        the token it released), or another node claimed it (a newer token, after our session
        lapsed). End its publish here."""
        if event.key is None or event.node == self.node_id:
            return
        token = self._held.get(event.key)
        if token is None:
            return
        if event.kind == "released" and event.token in (None, token):
            log.warning("stream released by the operator stream=%s token=%d", event.key, token)
            self._drop(event.key, token, CloseReason.RELEASED)
        elif event.kind == "published" and (event.token or 0) > token:
            log.warning("ownership lost stream=%s token=%d by=%s", event.key, token, event.node)
            self._drop(event.key, token, CloseReason.OWNERSHIP_LOST)

    async def verify_held(self) -> None:
        """Compare our session and what we hold with Redis (one MGET): events are not
        replayed after a reconnect, so a release or claim we did not hear of is caught here."""
        session = self.session
        held = dict(self._held)
        if not self.session_alive:
            return
        values = await self.redis.mget(
            [self.keys.session(self.node_id), *(self.keys.owner(k) for k in held)])
        if self.session != session:
            return
        if values[0] != session:
            if values[0] is not None:  # renewals extended someone else's session
                self.lose_session("another process holds this node id's session (two nodes "
                                  "with one --node-id?)")
            return  # gone: the next renewal restores it, or loses it
        for (key, token), value in zip(held.items(), values[1:], strict=True):
            if value == self._value(token, session):
                continue
            if self._held.get(key) != token:
                continue  # released or re-claimed meanwhile
            log.warning("ownership lost stream=%s token=%d (the registry says %s)", key, token,
                        value or "nobody")
            self._drop(key, token,
                       CloseReason.RELEASED if value is None else CloseReason.OWNERSHIP_LOST)

    async def set_trace(self, key: StreamKey, traceparent: str) -> None:
        """Store the publish session's trace context with its stream record (while we own
        the key: never recreates a released record)."""
        token = self._held.get(key)
        if token is None:
            return
        try:
            await self._set_field(keys=[self.keys.owner(key), self.keys.stream(key)],
                                  args=[self._value(token), "trace", traceparent])
        except RedisError as exc:
            self.mark_reachable(False, exc)

    async def _write_stream(self, key: StreamKey, token: int) -> None:
        await self.redis.hset(self.keys.stream(key), mapping={
            "owner": self.node_id, "relay": self.relay_address, "token": token,
            "started_at": time.time()})

    async def mark_idle(self, held: HeldStreams) -> None:
        """Mark held streams without frames for ``idle_after`` in the idle set and unmark them
        when frames come back: one command per change, none while streams flow."""
        now = time.time()
        went_idle: dict[str, float] = {}
        came_back: dict[str, StreamKey] = {}
        for key, token in self._held.items():
            last = held.last_frame(key)
            idle = last is not None and now - last >= self.idle_after
            if idle and key not in self._idle:
                went_idle[idle_member(key, token)] = last or now
                self._idle.add(key)
            elif not idle and key in self._idle:
                came_back[idle_member(key, token)] = key
                self._idle.discard(key)
        try:
            if went_idle:
                await self.redis.zadd(self.keys.idle, went_idle)
            if came_back:
                await self.redis.zrem(self.keys.idle, *came_back)
        except RedisError:
            # Unknown whether Redis took them: count them as marked, so a stream whose frames
            # come back is unmarked again (a ZREM of a missing member is harmless; a mark left
            # behind would get a live stream reaped).
            self._idle.update(came_back.values())
            raise

    async def sweep(self) -> int:
        """Free what dead sessions still name, and idle marks of claims that are over. Their
        keys are claimable at once anyway; this keeps Redis from growing where no operator runs
        (stream names per broadcast). One origin at a time, every ``sweep_interval``. Returns
        how many keys were freed."""
        interval_ms = int(self.settings.sweep_interval * 1000)
        if not await self.redis.set(self.keys.sweep, self.node_id, nx=True, px=interval_ms):
            return 0
        owners = await self.owners()
        alive = await self.alive(owners, {})
        freed = 0
        for key, owner in owners.items():  # owners of chart 0.1 (no session) expire by TTL
            if owner.session and not alive[key] and await self.release_if(key, owner):
                freed += 1
        stale = await self.forget_stale_idle(owners, await self.idle())
        if freed or stale:
            log.info("registry sweep freed=%d stale_idle=%d", freed, stale)
        return freed

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
        async with self.redis.pipeline(transaction=False) as pipe:  # one round trip
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
            self.mark_reachable(False, exc)

    async def run(self, stop: asyncio.Event, held: HeldStreams) -> None:
        """Keep the session (a renewal every ``session_ttl / 4``; origins), heartbeat, check
        and mark held streams every ``heartbeat``, sweep every ``sweep_interval``, and listen
        to the events channel, until ``stop``."""
        self._streams = held
        events = asyncio.create_task(self.events.run(stop), name="registry-events")
        try:
            await self._keep_session(stop, held)
        finally:
            events.cancel()
            await asyncio.gather(events, return_exceptions=True)

    async def _keep_session(self, stop: asyncio.Event, held: HeldStreams) -> None:
        next_heartbeat = 0.0
        next_sweep = time.monotonic() + self.settings.sweep_interval * random.random()
        interval = self.settings.session_renew if self.keeps_session else self.settings.heartbeat
        while not stop.is_set():
            try:
                await self._round(held, time.monotonic() >= next_heartbeat,
                                  self.keeps_session and time.monotonic() >= next_sweep)
                if time.monotonic() >= next_heartbeat:
                    next_heartbeat = time.monotonic() + self.settings.heartbeat
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.settings.sweep_interval
            except (RedisError, OSError) as exc:
                self.mark_reachable(False, exc)
            except Exception:  # never let the loop die: without it, nothing is renewed
                log.exception("registry loop failed; trying again")
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass

    async def _round(self, held: HeldStreams, heartbeat: bool, sweep: bool) -> None:
        if self.keeps_session:
            if not self.session:
                await self.start_session()
            elif not await self.renew_session():
                self.lose_session("it lapsed in Redis")
                return
        self.mark_reachable(True)
        if self._unreleased:
            await self._retry_releases()
        if heartbeat:
            await self.heartbeat()
            await self.verify_held()
            await self.mark_idle(held)
        if sweep:
            await self.sweep()

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        await super().close()

    async def deregister(self) -> None:
        try:
            await self.redis.delete(self.keys.node(self.node_id))
            await self.redis.srem(self.keys.nodes, self.node_id)
            if self.session:  # a clean stop frees our keys at once
                session_key = self.keys.session(self.node_id)
                await self._release(keys=[session_key, session_key], args=[self.session])
        except RedisError as exc:
            log.warning("could not deregister node=%s error=%s", self.node_id, exc)
