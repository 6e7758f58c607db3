"""Both sides of the registry against a real redis-server: a node's ownership claims with
fencing, heartbeat and state; the operator's cluster view and force-release."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from arcly.cluster.cluster_view import ClusterView
from arcly.cluster.model import NodeLoad, NodeRole, NodeState
from arcly.cluster.node_registry import NodeRegistry
from arcly.cluster.registry import RegistrySettings, RegistryUnavailable, safe_url
from arcly.engine import StreamBusy, StreamKey
from tests.support.processes import RedisServer
from tests.support.wait import eventually

KEY = StreamKey("live", "cam")


class Held:
    """A node's streams as its registry asks about them."""

    def __init__(self) -> None:
        self.lost: list[tuple[StreamKey, str]] = []
        self.frames: dict[StreamKey, float] = {}

    def load(self) -> NodeLoad:
        return NodeLoad(streams=2, viewers=7)

    def last_frame(self, key: StreamKey) -> float | None:
        return self.frames.get(key)

    def ownership_lost(self, key: StreamKey, reason: str) -> None:
        self.lost.append((key, reason))


async def received(pubsub: PubSub, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The next ``count`` events on the channel (fewer if the deadline passes first)."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            events.append(json.loads(message["data"]))
    return events


@contextlib.asynccontextmanager
async def renewing(*registries: NodeRegistry) -> AsyncIterator[None]:
    """Renew sessions as a node's run loop does, for steps that outlast one session TTL."""
    async def renew() -> None:
        while True:
            for registry in registries:
                await registry.renew_session()
            await asyncio.sleep(registries[0].settings.session_renew)

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture(scope="module")
def server() -> AsyncIterator[RedisServer]:
    started = RedisServer()
    try:
        yield started  # type: ignore[misc]
    finally:
        started.stop()


@pytest.fixture
async def raw(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def nodes(server: RedisServer, raw: aioredis.Redis
                ) -> AsyncIterator[tuple[NodeRegistry, NodeRegistry, ClusterView]]:
    settings = RegistrySettings(url=server.url, session_ttl=2.0)
    first = NodeRegistry(settings, node_id="o1", role=NodeRole.ORIGIN, relay_address="h1:7000")
    second = NodeRegistry(settings, node_id="o2", role=NodeRole.ORIGIN, relay_address="h2:7000")
    view = ClusterView(settings)
    await first.start_session()
    await second.start_session()
    try:
        yield first, second, view
    finally:
        for client in (first, second, view):
            await client.close()


async def test_one_owner_per_key_with_growing_fencing_tokens(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, second, _ = nodes
    token = await first.claim(KEY)
    assert token >= time.time_ns() // 1_000_000 - 60_000, "tokens start at the wall clock"
    assert await raw.get(first.keys.owner(KEY)) == f"o1|{token}|{first.session}"
    assert await raw.pttl(first.keys.owner(KEY)) == -1, "no per-key TTL: sessions expire"
    async with renewing(first, second):  # the busy claim waits one TTL for o1 to lapse
        with pytest.raises(StreamBusy, match="already being published on node o1"):
            await second.claim(KEY)
    owner = await second.owner(KEY)
    assert owner is not None and (owner.node_id, owner.token, owner.relay) == (
        "o1", token, "h1:7000")
    await second.release(KEY, token)  # not second's to release
    assert (await first.owner(KEY)) is not None
    await first.release(KEY, token)
    assert await first.owner(KEY) is None
    again = await second.claim(KEY)
    assert again > token, "the fence only grows"


async def test_a_dead_owners_keys_are_free_at_once(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, second, view = nodes
    token = await first.claim(KEY)
    await raw.delete(first.keys.session("o1"))  # o1 died: its session lapsed
    assert await second.owner(KEY) is None, "a dead session owns nothing"
    owners = await view.owners()
    assert (await view.alive(owners, {}))[KEY] is False
    started = time.monotonic()
    taken = await second.claim(KEY)
    assert time.monotonic() - started < 0.5 and taken > token, "no lease to wait out"
    assert (await second.owner(KEY)).node_id == "o2"  # type: ignore[union-attr]


async def test_a_restarted_node_with_the_same_id_takes_its_keys_back(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], server: RedisServer) -> None:
    first, _, _ = nodes
    token = await first.claim(KEY)
    again = NodeRegistry(RegistrySettings(url=server.url), node_id="o1",
                         role=NodeRole.ORIGIN)
    try:
        await again.start_session()  # a new process: a new session (the old one lapses)
        assert await again.claim(KEY) > token
    finally:
        await again.close()


async def test_without_a_live_session_nothing_is_claimed_and_a_lapse_loses_everything(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, _, _ = nodes
    held = Held()
    first._streams = held
    token = await first.claim(KEY)
    # Redis lost its data (a restart without persistence) while our session was live by our
    # clock: claims are refused until the session is restored, with what we held.
    await raw.flushdb()
    with pytest.raises(RegistryUnavailable, match="session lapsed"):
        await first.claim(StreamKey("live", "other"))
    assert await first.renew_session(), "restored"
    assert await raw.get(first.keys.owner(KEY)) == f"o1|{token}|{first.session}"
    assert held.lost == []
    # The session lapsed by our own clock (a partition, a stopped process): everything held
    # is lost, even if Redis still says otherwise.
    first._renewed_at -= 10
    assert not first.session_alive
    await raw.delete(first.keys.session("o1"))
    assert not await first.renew_session(), "the renewal reports the loss"
    first.lose_session("test")
    assert held.lost == [(KEY, "session lost")]
    assert not first.session
    with pytest.raises(RegistryUnavailable, match="no registry session"):
        await first.claim(KEY)


async def test_the_operator_releasing_a_key_ends_its_publish_on_the_owner(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, second, view = nodes
    held = Held()
    stop = asyncio.Event()
    running = asyncio.create_task(first.run(stop, held))
    try:
        await first.claim(KEY)
        async def subscribed() -> bool:  # the owner listens to the events channel
            return bool((await raw.pubsub_numsub(first.keys.events))[0][1])

        await eventually(subscribed)
        assert await view.force_release(KEY, "idle")
        await eventually(lambda: held.lost, message="the owner never heard")
        assert held.lost == [(KEY, "ownership lost")]
        await second.claim(KEY)  # free for anyone else
        assert not await view.force_release(StreamKey("live", "nobody"), "idle")
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)


async def test_idle_streams_are_marked_once_and_unmarked_when_frames_return(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, _, view = nodes
    await first.claim(KEY)
    held = Held()
    held.frames[KEY] = time.time()
    await first.mark_idle(held)
    assert "idle_since" not in await raw.hgetall(first.keys.stream(KEY))
    held.frames[KEY] = time.time() - 60
    await first.mark_idle(held)
    assert float((await view.stream_records([KEY]))[KEY]["idle_since"]) == held.frames[KEY]
    held.frames[KEY] = time.time()
    await first.mark_idle(held)
    assert "idle_since" not in await raw.hgetall(first.keys.stream(KEY))


async def test_stream_records_carry_relay_times_and_trace(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView]) -> None:
    first, _, view = nodes
    token = await first.claim(KEY)
    await first.set_trace(KEY, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    owner = await view.owner(KEY)
    assert owner is not None and owner.trace.startswith("00-0af76519")
    record = (await view.stream_records([KEY]))[KEY]
    assert record["relay"] == "h1:7000" and int(record["token"]) == token
    assert float(record["started_at"]) <= time.time()
    assert await view.owners() == {KEY: type(owner)("o1", token, "", session=first.session)}


async def test_heartbeat_state_and_the_operators_word(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, second, view = nodes
    await first.heartbeat(NodeLoad(streams=1, viewers=3))
    record = await view.node("o1")
    assert (record["role"], record["relay"], record["state"], record["viewers"]) == (
        "origin", "h1:7000", "ready", "3")
    # The operator marks the node draining from its Pod; the node's heartbeat keeps that.
    await view.set_node_state("o1", NodeRole.ORIGIN, NodeState.DRAINING)
    await first.heartbeat()
    record = await view.node("o1")
    assert record["state"] == "draining" and record["viewers"] == "3", "last load kept"
    await view.set_node_state("o1", NodeRole.ORIGIN, NodeState.READY)
    # The node's own drain wins over the operator's "ready".
    await second.heartbeat()
    await second.set_state(NodeState.DRAINING)
    await view.set_node_state("o2", NodeRole.ORIGIN, NodeState.READY)
    await second.heartbeat()
    assert (await view.node("o2"))["state"] == "draining"
    assert 0 < await raw.pttl(first.keys.node("o1")) <= view.settings.node_ttl_ms


async def test_the_cluster_view_forgets_lapsed_nodes_and_releases_a_gone_nodes_keys(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, second, view = nodes
    await first.heartbeat()
    await second.heartbeat()
    await first.claim(KEY)
    await first.claim(StreamKey("live", "two"))
    await second.claim(StreamKey("live", "other"))
    await raw.delete(second.keys.node("o2"))  # its heartbeat lapsed
    assert set(await view.nodes()) == {"o1"}
    assert await raw.smembers(view.keys.nodes) == {"o1"}
    pubsub = raw.pubsub()
    await pubsub.subscribe(view.keys.events)
    try:
        released = await view.remove_node("o1")
        assert sorted(map(str, released)) == ["live/cam", "live/two"]
        events = await received(pubsub, 2)
        assert {(e["event"], e["key"], e["node"]) for e in events} == {
            ("released", "live/cam", "operator"), ("released", "live/two", "operator")}
        assert events[0]["reason"] == "owner o1 is gone"
    finally:
        await pubsub.aclose()
    assert set(await view.owners()) == {StreamKey("live", "other")}
    assert await view.node("o1") == {}


async def test_claims_publish_events_naming_the_node(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, _, _ = nodes
    pubsub = raw.pubsub()
    await pubsub.subscribe(first.keys.events)
    try:
        token = await first.claim(KEY)
        await first.release(KEY, token)
        events = await received(pubsub, 2)
    finally:
        await pubsub.aclose()
    assert [(e["event"], e["key"], e["node"], e["token"]) for e in events] == [
        ("published", "live/cam", "o1", token), ("unpublished", "live/cam", "o1", token)]


async def test_run_heartbeats_with_the_nodes_load_until_stopped(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView]) -> None:
    first, _, view = nodes
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop, Held()))
    record = await eventually(lambda: view.node("o1"), message="no heartbeat")
    assert record["viewers"] == "7"
    stop.set()
    await asyncio.wait_for(task, 5)
    session = first.session
    await first.deregister()
    assert await view.node("o1") == {} and "o1" not in await view.nodes()
    assert await view.sessions({"o1"}) == {} and session, "a clean stop frees its keys"


async def test_without_redis_a_claim_is_refused_not_guessed() -> None:
    unreachable = RegistrySettings(url="redis://127.0.0.1:1/0", timeout=0.5)
    node = NodeRegistry(unreachable, node_id="o1", role=NodeRole.ORIGIN)
    try:
        with pytest.raises(RegistryUnavailable, match="cannot claim live/cam: no registry"):
            await node.claim(KEY)
        with pytest.raises(RegistryUnavailable, match="cannot look up live/cam"):
            await node.owner(KEY)
    finally:
        await node.close()


def test_logged_urls_hide_the_password() -> None:
    assert safe_url("redis://:s3cret@redis:6379/0") == "redis://***@redis:6379/0"
    assert safe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
