"""The Redis registry's layout and what both of its sides share.

Two sides use it: each node (``node_registry.NodeRegistry``: its own ownership claims with
fencing, heartbeat and state) and the operator (``cluster_view.ClusterView``: every owner and
node, force-release, a node's state from its Pod). Key layout (all under a configurable prefix,
default ``arcly:``):

- ``{p}owner:{app}/{stream}`` — string ``{node}|{token}`` with a PX lease: who publishes the key.
- ``{p}fence:{app}/{stream}`` — integer (INCR): the key's fencing token, grows with every claim.
- ``{p}stream:{app}/{stream}`` — hash, expires with the lease: owner node, relay address, token,
  started/last-frame times, the publish session's trace context.
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
    lease: float = 10.0
    heartbeat: float = 2.0
    timeout: float = 2.0

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

    @property
    def nodes(self) -> str:
        return f"{self.prefix}nodes"

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def owner_prefix(self) -> str:
        return f"{self.prefix}owner:"


def parse_owner(value: object) -> tuple[str, int] | None:
    """``{node}|{token}`` → (node, token); None for anything else."""
    text = str(value) if value else ""
    node, sep, token = text.rpartition("|")
    if not sep or not token.isdigit():
        return None
    return node, int(token)


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
        """Who publishes ``key`` and where to relay it from (None if nobody)."""
        try:
            value, record = await asyncio.gather(self.redis.get(self.keys.owner(key)),
                                                 self.redis.hgetall(self.keys.stream(key)))
        except RedisError as exc:
            self._mark(False, exc)
            raise RegistryUnavailable(f"cannot look up {key}: registry unavailable") from exc
        self._mark(True)
        parsed = parse_owner(value)
        if parsed is None:
            return None
        return Owner(parsed[0], parsed[1], str(record.get("relay", "")),
                     str(record.get("trace", "")))

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


def safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
