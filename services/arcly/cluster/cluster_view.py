"""The operator's side of the registry: the whole cluster — every owned key, every live node —
and the actions only the operator takes: a node's state from its Pod, releasing what a gone
node held, force-releasing idle or orphaned keys."""

from __future__ import annotations

from collections.abc import Mapping

from arcly.engine import ArclyError, StreamKey

from .model import NodeRole, NodeState, Owner
from .registry import RegistryClient, RegistrySettings, parse_owner


class ClusterView(RegistryClient):
    def __init__(self, settings: RegistrySettings) -> None:
        super().__init__(settings, actor="operator")

    async def owners(self) -> dict[StreamKey, Owner]:
        """Every owned key and its owner."""
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

    async def stream_records(self, keys: list[StreamKey]) -> dict[StreamKey, dict[str, str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(self.keys.stream(key))
            records = await pipe.execute()
        return {key: {str(k): str(v) for k, v in record.items()}
                for key, record in zip(keys, records, strict=True)}

    async def nodes(self) -> dict[str, dict[str, str]]:
        """Records of live nodes (their heartbeat has not lapsed); forgets the lapsed ones."""
        ids = sorted(str(i) for i in await self.redis.smembers(self.keys.nodes))
        async with self.redis.pipeline(transaction=False) as pipe:
            for node_id in ids:
                pipe.hgetall(self.keys.node(node_id))
            records = await pipe.execute()
        alive: dict[str, dict[str, str]] = {}
        for node_id, record in zip(ids, records, strict=True):
            if record and "heartbeat" in record:
                alive[node_id] = {str(k): str(v) for k, v in record.items()}
            elif not record:
                await self.redis.srem(self.keys.nodes, node_id)
        return alive

    async def set_node_state(self, node_id: str, role: NodeRole, state: NodeState) -> None:
        """The operator's word on a node, from its Pod: ready or draining."""
        name = self.keys.node(node_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping={"state": state.value, "role": role.value})
            pipe.pexpire(name, self.settings.node_ttl_ms)
            await pipe.execute()
        if state is NodeState.DRAINING:
            await self.publish_event("node-draining", None, target=node_id)

    async def force_release(self, key: StreamKey, reason: str) -> bool:
        """Release ``key`` whoever holds it (dead origins, idle streams). The fence moves on,
        so the old owner cannot quietly retake the key: its next renewal reports "ownership
        lost" and it ends the publish."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.owner(key), self.keys.stream(key))
            pipe.incr(self.keys.fence(key))
            deleted, _ = await pipe.execute()
        if deleted:
            await self.publish_event("released", key, reason=reason)
        return bool(deleted)

    async def remove_node(self, node_id: str) -> list[StreamKey]:
        """A node is gone: forget it and release every key it held. Returns those keys."""
        released = [key for key, owner in (await self.owners()).items()
                    if owner.node_id == node_id]
        for key in released:
            await self.force_release(key, f"owner {node_id} is gone")
        await self.redis.delete(self.keys.node(node_id))
        await self.redis.srem(self.keys.nodes, node_id)
        return released
