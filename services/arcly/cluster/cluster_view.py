"""The operator's side of the registry: the whole cluster — every live node, stream records —
and the actions only the operator takes: a node's state from its Pod, releasing what a gone
node held, force-releasing idle or orphaned keys. (Reading every owner, session and idle mark
is shared with the nodes: ``RegistryClient``.)"""

from __future__ import annotations

from arcly.engine import StreamKey

from .model import NodeRole, NodeState, Owner
from .registry import RegistryClient, RegistrySettings


class ClusterView(RegistryClient):
    def __init__(self, settings: RegistrySettings) -> None:
        super().__init__(settings, actor="operator")

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

    async def force_release(self, key: StreamKey, reason: str,
                            owner: Owner | None = None) -> bool:
        """Release ``key`` — if ``owner`` (the one the decision was made on) still holds it;
        None: whoever does. The owner hears it on the events channel (the token says which
        claim) and ends the publish; a broadcaster that re-claimed the key meanwhile keeps it."""
        released = await self.release_if(key, owner)
        if released is None:
            return False
        await self.publish_event("released", key, reason=reason, token=released.token,
                                 owner=released.node_id)
        return True

    async def remove_node(self, node_id: str) -> list[StreamKey]:
        """A node is gone: forget it and release every key it held. Returns those keys."""
        released = [key for key, owner in (await self.owners()).items()
                    if owner.node_id == node_id and await self.force_release(
                        key, f"owner {node_id} is gone", owner)]
        await self.redis.delete(self.keys.node(node_id))
        await self.redis.srem(self.keys.nodes, node_id)
        return released
