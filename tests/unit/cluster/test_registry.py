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
from redis.exceptions import ConnectionError as RedisConnectionError

from arcly.cluster.cluster_view import ClusterView
from arcly.cluster.model import NodeLoad, NodeRole, NodeState
from arcly.cluster.node_registry import NodeRegistry
from arcly.cluster.registry import (
    RegistryEvent,
    RegistrySettings,
    RegistryUnavailable,
    safe_url,
)
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

    def ownership_lost(self, key: StreamKey, token: int, reason: str) -> None:
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
        assert held.lost == [(KEY, "released by the operator")]
        await second.claim(KEY)  # free for anyone else
        assert not await view.force_release(StreamKey("live", "nobody"), "idle")
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)


async def test_the_operator_releases_only_the_claim_it_decided_on(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, _, view = nodes
    held = Held()
    first._streams = held
    await first.claim(KEY)
    decided_on = (await view.owners())[KEY]
    await first.release(KEY, decided_on.token)
    token = await first.claim(KEY)  # the broadcaster came back meanwhile
    assert not await view.force_release(KEY, "idle", decided_on), "a newer claim is kept"
    assert (await view.owner(KEY)).token == token  # type: ignore[union-attr]
    # A release event for an older token does not touch the newer claim either.
    first._on_event(RegistryEvent("released", KEY, "operator", decided_on.token))
    assert held.lost == []
    assert await view.force_release(KEY, "idle", (await view.owners())[KEY])


async def test_a_release_redis_did_not_take_is_retried_and_the_node_may_claim_again(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    first, _, view = nodes
    token = await first.claim(KEY)
    release = first._release

    async def unreachable(**_: object) -> int:
        raise RedisConnectionError("connection reset")

    monkeypatch.setattr(first, "_release", unreachable)
    await first.release(KEY, token)  # Redis did not answer: the key still names our session
    assert (await view.owner(KEY)).token == token  # type: ignore[union-attr]
    again = await first.claim(KEY)  # our own leftover: granted again, at once
    assert again > token
    await first.release(KEY, again)
    monkeypatch.setattr(first, "_release", release)
    stop = asyncio.Event()
    running = asyncio.create_task(first.run(stop, Held()))
    try:  # the loop's next round releases it
        await eventually(lambda: _is_none(view.owner(KEY)), message="never released")
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)


async def _is_none(value: Any) -> bool:
    return await value is None


async def test_a_release_the_node_missed_is_caught_at_its_next_heartbeat(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, second, _ = nodes
    held = Held()
    first._streams = held
    kept, gone, taken = StreamKey("live", "kept"), StreamKey("live", "gone"), KEY
    for key in (kept, gone, taken):
        await first.claim(key)
    await raw.delete(first.keys.owner(gone))  # no event reached us (pub/sub reconnecting)
    await raw.set(first.keys.owner(taken), f"o2|{10**13}|{second.session}")
    await first.verify_held()
    assert set(held.lost) == {(gone, "released by the operator"), (taken, "ownership lost")}
    assert list(first._held) == [kept]


async def test_two_processes_with_one_node_id_do_not_both_keep_a_session(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, _, _ = nodes
    held = Held()
    first._streams = held
    await first.claim(KEY)
    await raw.set(first.keys.session("o1"), "0123456789abcdef")  # another "o1" started
    assert await first.renew_session(), "a PEXPIRE cannot tell whose session it extends ..."
    await first.verify_held()  # ... the heartbeat's check can
    assert held.lost == [(KEY, "session lost")] and not first.session


async def test_a_session_is_lost_on_time_even_if_no_renewal_returns(
        server: RedisServer, raw: aioredis.Redis) -> None:
    node = NodeRegistry(RegistrySettings(url=server.url, session_ttl=0.4), node_id="o9",
                        role=NodeRole.ORIGIN)
    held = Held()
    node._streams = held
    try:
        await node.start_session()
        await node.claim(KEY)
        # No renewal loop runs (as if every renewal hung in its socket): the session's own
        # timer ends the publish at the TTL.
        await eventually(lambda: held.lost, timeout=3, message="kept publishing")
        assert held.lost == [(KEY, "session lost")] and not node.session
    finally:
        await node.close()


async def test_restoring_after_data_loss_keeps_what_is_still_ours(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, _, _ = nodes
    held = Held()
    first._streams = held
    token = await first.claim(KEY)
    other = await first.claim(StreamKey("live", "other"))
    await raw.delete(first.keys.session("o1"), first.keys.owner(StreamKey("live", "other")))
    assert await first.renew_session(), "restored"
    assert held.lost == [], "a key that still names us is not lost"
    assert await raw.get(first.keys.owner(KEY)) == f"o1|{token}|{first.session}"
    assert await raw.get(first.keys.owner(StreamKey("live", "other"))) == \
        f"o1|{other}|{first.session}"


async def test_an_origin_sweeps_what_dead_sessions_left_once_per_interval(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, second, view = nodes
    dead = StreamKey("live", "dead")
    token = await second.claim(dead)
    await second.mark_idle(_Silent())
    await first.claim(KEY)
    await raw.zadd(first.keys.idle, {f"live/gone|{token}": 1.0})  # a claim that is over
    await raw.delete(second.keys.session("o2"))  # o2 died (kill -9): its keys stay behind
    assert await first.sweep() == 1
    assert set(await view.owners()) == {KEY}
    assert await raw.exists(first.keys.stream(dead)) == 0
    assert await view.idle() == {}
    await raw.set(second.keys.owner(dead), f"o2|{token}|{second.session}")
    assert await first.sweep() == 0, "one sweep per interval"


class _Silent(Held):
    def last_frame(self, key: StreamKey) -> float | None:
        return time.time() - 60


async def test_edges_keep_no_session(server: RedisServer) -> None:
    edge = NodeRegistry(RegistrySettings(url=server.url), node_id="e1", role=NodeRole.EDGE)
    stop = asyncio.Event()
    running = asyncio.create_task(edge.run(stop, Held()))
    try:
        await eventually(lambda: edge.node("e1"), message="no heartbeat")
        assert not edge.session and not await edge.sessions({"e1"})
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)
        await edge.deregister()
        await edge.close()


async def test_idle_streams_are_marked_once_and_unmarked_when_frames_return(
        nodes: tuple[NodeRegistry, NodeRegistry, ClusterView], raw: aioredis.Redis) -> None:
    first, second, view = nodes
    token = await first.claim(KEY)
    held = Held()
    held.frames[KEY] = time.time()
    await first.mark_idle(held)
    assert await view.idle() == {}
    held.frames[KEY] = time.time() - 60
    await first.mark_idle(held)
    await first.mark_idle(held)  # already marked: no second write
    assert await view.idle() == {(KEY, token): held.frames[KEY]}
    held.frames[KEY] = time.time()
    await first.mark_idle(held)
    assert await view.idle() == {}
    # Released while idle: the mark goes with the claim; force-released: likewise.
    held.frames[KEY] = time.time() - 60
    await first.mark_idle(held)
    await first.release(KEY, token)
    assert await view.idle() == {}
    token = await second.claim(KEY)
    await second.mark_idle(held)
    assert list(await view.idle()) == [(KEY, token)]
    assert await view.force_release(KEY, "idle")
    assert await view.idle() == {}
    assert await raw.zcard(first.keys.idle) == 0


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
