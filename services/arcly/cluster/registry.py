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
  session's trace context, ``idle_since`` while no frame arrives.
- ``{p}node:{id}`` — hash, expires after 3 missed heartbeats: role, relay address, state
  (``ready``/``draining``), heartbeat time, live streams and viewers.
- ``{p}nodes`` — set of the ids of nodes that registered.
- ``{p}events`` — pub/sub channel of JSON events: published, unpublished, released,
  node-draining.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from arcly.engine import ArclyError, StreamKey

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
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def owner_prefix(self) -> str:
        return f"{self.prefix}owner:"


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

    def _mark(self, ok: bool, error: Exception | None = None) -> None:
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
            value, record = await asyncio.gather(self.redis.get(self.keys.owner(key)),
                                                 self.redis.hgetall(self.keys.stream(key)))
            parsed = parse_owner(value)
            session = await self.redis.get(self.keys.session(parsed[0])) \
                if parsed is not None and parsed[2] else None
        except RedisError as exc:
            self._mark(False, exc)
            raise RegistryUnavailable(f"cannot look up {key}: registry unavailable") from exc
        self._mark(True)
        if parsed is None or (parsed[2] and session != parsed[2]):
            return None
        return Owner(parsed[0], parsed[1], str(record.get("relay", "")),
                     str(record.get("trace", "")), session=parsed[2])

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
            self._mark(False, exc)

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
    a key they held. Survives Redis outages (reconnects with backoff; nothing is replayed, so
    listeners also poll, more slowly, for what they wait on)."""

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
                self.client._mark(False, exc)
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
