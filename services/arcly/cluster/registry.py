"""The Redis registry's layout and what both of its sides share.

Two sides use it: each node (``node_registry.NodeRegistry``: its own ownership claims with
fencing, heartbeat and state) and the operator (``cluster_view.ClusterView``: every owner and
node, force-release, a node's state from its Pod). Key layout (all under a configurable prefix,
default ``arcly:``):

- ``{p}session:{node}`` — string: the node's session id, with a short PX TTL the node renews
  (Chubby/ZooKeeper/etcd sessions). A node whose session key is gone owns nothing any more.
- ``{p}owner:{app}/{stream}`` — string ``{node}|{token}|{session}``: who publishes the key, as
  long as that session lives (no TTL of its own: renewal costs per node, not per stream).
- ``{p}fence:{app}/{stream}`` — integer (INCR): the key's fencing token, grows with every claim.
- ``{p}stream:{app}/{stream}`` — hash: owner node, relay address, token, start time, the publish
  session's trace context.
- ``{p}idle`` — sorted set: ``{app}/{stream}|{token}`` scored by the time its owner last saw a
  frame, for streams without frames (one write when a stream goes idle, one when it comes back;
  the operator reads it with one command, whatever the number of streams).
- ``{p}node:{id}`` — hash, expires after 3 missed heartbeats: role, relay address, state
  (``ready``/``draining``), heartbeat time, live streams and viewers.
- ``{p}nodes`` — set of the ids of nodes that registered.
- ``{p}sweep`` — string with a TTL: which origin sweeps what dead sessions left, this interval.
- ``{p}events`` — pub/sub channel of JSON events: published, unpublished, released,
  node-draining.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from arcly.engine import ArclyError, StreamKey

from . import scripts
from .model import Owner

log = logging.getLogger("arcly.registry")


class RegistryUnavailable(ArclyError):
    """Redis cannot be reached; ownership cannot be decided."""


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    url: str = "redis://127.0.0.1:6379/0"
    password: str = ""  # overrides one in the URL (keeps it out of the URL in manifests)
    prefix: str = "arcly:"
    # A node's keys are free for others this long after its last session renewal (it renews
    # four times per TTL): the failover time after an origin dies, and how long a partitioned
    # origin (or one that cannot reach Redis) goes on before it ends its publishers.
    session_ttl: float = 1.5
    heartbeat: float = 2.0
    timeout: float = 2.0
    # How often one origin frees what dead sessions still name (claims take such keys over at
    # once anyway; this keeps Redis from growing where no operator runs).
    sweep_interval: float = 300.0

    @property
    def session_renew(self) -> float:
        return self.session_ttl / 4

    @property
    def node_ttl_ms(self) -> int:
        """A node record lapses after three missed heartbeats."""
        return int(self.heartbeat * 3000)


class Layout:
    """The names of the registry's keys under one prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def owner(self, key: StreamKey) -> str:
        return f"{self.prefix}owner:{key}"

    def fence(self, key: StreamKey) -> str:
        return f"{self.prefix}fence:{key}"

    def stream(self, key: StreamKey) -> str:
        return f"{self.prefix}stream:{key}"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def session(self, node_id: str) -> str:
        return f"{self.prefix}session:{node_id}"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}nodes"

    @property
    def idle(self) -> str:
        return f"{self.prefix}idle"

    @property
    def sweep(self) -> str:
        return f"{self.prefix}sweep"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def owner_prefix(self) -> str:
        return f"{self.prefix}owner:"


def idle_member(key: StreamKey, token: int) -> str:
    """A member of the idle set: the key with the token of the claim that went idle (an entry
    a later claim of the key does not match is stale)."""
    return f"{key}|{token}"


def parse_idle_member(member: object) -> tuple[StreamKey, int] | None:
    key, _, token = str(member).rpartition("|")
    if not token.isdigit():
        return None
    try:
        return StreamKey.parse(key), int(token)
    except ArclyError:
        return None


def owner_value(owner: Owner) -> str:
    """What the owner key holds for ``owner`` (compare-and-delete compares with it)."""
    if owner.session:
        return f"{owner.node_id}|{owner.token}|{owner.session}"
    return f"{owner.node_id}|{owner.token}"


def parse_owner(value: object) -> tuple[str, int, str] | None:
    """``{node}|{token}|{session}`` → (node, token, session); None for anything else. (An
    owner written by a node of chart 0.1, ``{node}|{token}``, has no session: "".)"""
    text = str(value) if value else ""
    parts = text.rsplit("|", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2]:
        return parts[0], int(parts[1]), parts[2]
    node, sep, token = text.rpartition("|")
    if sep and token.isdigit():
        return node, int(token), ""
    return None


class RegistryClient:
    """A connection to the registry plus what both sides do with it: look up a key's owner,
    publish events, notice (and log once) when Redis goes away and comes back."""

    def __init__(self, settings: RegistrySettings, *, actor: str) -> None:
        self.settings = settings
        self.actor = actor  # who we are in events: a node id, or "operator"
        self.keys = Layout(settings.prefix)
        self.redis = aioredis.Redis.from_url(
            settings.url, password=settings.password or None, socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout, decode_responses=True)
        self._available = True
        self._release_if = self.redis.register_script(scripts.RELEASE_IF)

    def mark_reachable(self, ok: bool, error: Exception | None = None) -> None:
        """Note whether Redis answered (logs each change once, not every failure)."""
        if ok and not self._available:
            log.info("registry reachable again url=%s", safe_url(self.settings.url))
        elif not ok and self._available:
            log.warning("registry unreachable url=%s error=%s", safe_url(self.settings.url),
                        error)
        self._available = ok

    async def owner(self, key: StreamKey) -> Owner | None:
        """Who publishes ``key`` and where to relay it from (None if nobody, or if the owner's
        session is gone: its keys are free)."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:  # one consistent read
                pipe.get(self.keys.owner(key))
                pipe.hgetall(self.keys.stream(key))
                value, record = await pipe.execute()
            parsed = parse_owner(value)
            session = await self.redis.get(self.keys.session(parsed[0])) \
                if parsed is not None and parsed[2] else None
        except RedisError as exc:
            self.mark_reachable(False, exc)
            raise RegistryUnavailable(f"cannot look up {key}: registry unavailable") from exc
        self.mark_reachable(True)
        if parsed is None or (parsed[2] and session != parsed[2]):
            return None
        if str(record.get("token", "")) != str(parsed[1]):
            record = {}  # a record of an earlier claim (chart 0.1 wrote it after the claim)
        return Owner(parsed[0], parsed[1], str(record.get("relay", "")),
                     str(record.get("trace", "")), session=parsed[2])

    async def owners(self) -> dict[StreamKey, Owner]:
        """Every owned key and its owner (without relay addresses: one SCAN, one MGET)."""
        prefix = self.keys.owner_prefix
        names = [name async for name in self.redis.scan_iter(match=f"{prefix}*", count=500)]
        values = await self.redis.mget(names) if names else []
        found: dict[StreamKey, Owner] = {}
        for name, value in zip(names, values, strict=True):
            parsed = parse_owner(value)
            if parsed is None:
                continue
            try:
                key = StreamKey.parse(str(name)[len(prefix):])
            except ArclyError:
                continue
            found[key] = Owner(parsed[0], parsed[1], "", session=parsed[2])
        return found

    async def sessions(self, node_ids: set[str]) -> dict[str, str]:
        """The live session of each of ``node_ids`` that has one."""
        ids = sorted(node_ids)
        values = await self.redis.mget([self.keys.session(n) for n in ids]) if ids else []
        return {node: str(value) for node, value in zip(ids, values, strict=True) if value}

    async def alive(self, owners: Mapping[StreamKey, Owner],
                    nodes: Mapping[str, object]) -> dict[StreamKey, bool]:
        """Whether each key's owner still holds it: its session lives (owners of chart 0.1,
        without sessions: its node record lives)."""
        live = await self.sessions({o.node_id for o in owners.values() if o.session})
        return {key: (live.get(o.node_id) == o.session) if o.session else o.node_id in nodes
                for key, o in owners.items()}

    async def idle(self) -> dict[tuple[StreamKey, int], float]:
        """Streams their owners marked idle: (key, token of that claim) → time of the last
        frame. One command however many streams are live."""
        found: dict[tuple[StreamKey, int], float] = {}
        entries = await self.redis.zrange(self.keys.idle, 0, -1, withscores=True)
        for member, score in cast("list[tuple[str, float]]", entries):
            parsed = parse_idle_member(member)
            if parsed is not None:
                found[parsed] = float(score)
        return found

    async def forget_stale_idle(self, owners: Mapping[StreamKey, Owner],
                                idle: Mapping[tuple[StreamKey, int], float]) -> int:
        """Drop idle marks of claims that are over (the key is free or held under another
        token: released, claimed again, its owner died). Returns how many."""
        stale = [idle_member(key, token) for key, token in idle
                 if key not in owners or owners[key].token != token]
        if stale:
            await self.redis.zrem(self.keys.idle, *stale)
        return len(stale)

    async def release_if(self, key: StreamKey, owner: Owner | None) -> Owner | None:
        """Release ``key`` if ``owner`` still holds it (None: whoever does), with its stream
        record and idle mark; the fence moves on. Returns the owner released (None: nothing
        was, or someone else holds it now)."""
        released = await self._release_if(
            keys=[self.keys.owner(key), self.keys.stream(key), self.keys.fence(key),
                  self.keys.idle],
            args=[owner_value(owner) if owner is not None else "", str(key)])
        parsed = parse_owner(released)
        return Owner(parsed[0], parsed[1], "", session=parsed[2]) if parsed else None

    async def node(self, node_id: str) -> dict[str, str]:
        """A node's record (empty when it has none)."""
        record = await self.redis.hgetall(self.keys.node(node_id))
        return {str(k): str(v) for k, v in record.items()}

    async def publish_event(self, kind: str, key: StreamKey | None, **fields: object) -> None:
        payload = json.dumps({"event": kind, "key": str(key) if key else None,
                              "node": self.actor, "at": time.time(), **fields})
        try:
            await self.redis.publish(self.keys.events, payload)
        except RedisError as exc:
            self.mark_reachable(False, exc)

    async def close(self) -> None:
        await self.redis.aclose()


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """One message of the events channel."""

    kind: str  # published, unpublished, released, node-draining
    key: StreamKey | None
    node: str
    token: int | None = None


def parse_event(data: str) -> RegistryEvent | None:
    try:
        raw = json.loads(data)
        key = StreamKey.parse(raw["key"]) if raw.get("key") else None
        token = raw.get("token")
        return RegistryEvent(str(raw["event"]), key, str(raw.get("node", "")),
                             int(token) if isinstance(token, int) else None)
    except (ValueError, KeyError, TypeError, ArclyError):
        return None


class RegistryEvents:
    """The events channel, listened to by one pub/sub connection per process: edges switch to
    a stream's new owner the moment it claims the key, origins learn that the operator released
    a key they held. Survives Redis outages (reconnects with backoff). Nothing is replayed, so
    nobody relies on events alone: origins check what they hold at every heartbeat, edges
    re-resolve with backoff."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self._listeners: list[Callable[[RegistryEvent], None]] = []

    def listen(self, callback: Callable[[RegistryEvent], None]) -> None:
        self._listeners.append(callback)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.25
        while not stop.is_set():
            pubsub = self.client.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.client.keys.events)
                backoff = 0.25
                while not stop.is_set():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(str(message["data"]))
            except (RedisError, OSError) as exc:
                self.client.mark_reachable(False, exc)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except TimeoutError:
                backoff = min(backoff * 2, 5.0)

    def _dispatch(self, data: str) -> None:
        event = parse_event(data)
        if event is None:
            return
        for callback in self._listeners:
            try:
                callback(event)
            except Exception:
                log.exception("registry event listener failed event=%s", event.kind)


def safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
