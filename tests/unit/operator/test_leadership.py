"""Who may write itself into the leader Lease (the decision, without an API server)."""

from __future__ import annotations

import asyncio
import copy
import datetime

import aiohttp

from arcly_operator.kube import Conflict
from arcly_operator.leadership import LeaderElector, Observed, lease_body, may_take
from tests.support.wait import eventually

NOW = datetime.datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=datetime.UTC)


def lease(holder: str, renew: str = "t1") -> dict:  # type: ignore[type-arg]
    body = lease_body("l", "ns", holder, 15, 0, NOW)
    body["spec"]["renewTime"] = renew
    return body


def test_anyone_may_take_an_empty_lease_and_the_holder_may_renew() -> None:
    assert may_take(lease(""), "b", None, now=0, duration=15)
    assert may_take(lease("a"), "a", None, now=0, duration=15)


def test_a_live_holder_keeps_the_lease() -> None:
    seen = Observed("a", "t1", at=100.0)
    assert not may_take(lease("a", "t1"), "b", None, now=200, duration=15), "first sight"
    assert not may_take(lease("a", "t1"), "b", seen, now=114.9, duration=15)
    assert not may_take(lease("a", "t2"), "b", seen, now=200, duration=15), "it renewed"


def test_a_silent_holder_is_replaced_after_the_duration_on_our_clock() -> None:
    seen = Observed("a", "t1", at=100.0)
    assert may_take(lease("a", "t1"), "b", seen, now=115.0, duration=15)


def test_lease_times_are_microtime() -> None:
    spec = lease_body("l", "ns", "a", 15, 2, NOW, resource_version="7")
    assert spec["spec"]["renewTime"] == "2026-11-26T12:00:00.123456Z"
    assert spec["spec"]["leaseTransitions"] == 2 and spec["metadata"]["resourceVersion"] == "7"


class FakeLeases:
    """An API server's Lease semantics: create fails if it exists; a patch naming a stale
    resourceVersion fails with 409; every write bumps the version; requests can be made to
    fail like a server that went away."""

    def __init__(self) -> None:
        self.lease: dict | None = None  # type: ignore[type-arg]
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise aiohttp.ServerDisconnectedError()

    async def get(self, path: str) -> dict | None:  # type: ignore[type-arg]
        self._check()
        found = copy.deepcopy(self.lease)
        await asyncio.sleep(0)  # let the other candidate read the same version
        return found

    async def create(self, path: str, body: dict) -> dict:  # type: ignore[type-arg]
        self._check()
        if self.lease is not None:
            raise Conflict(409, "AlreadyExists")
        self.version += 1
        self.lease = {**body, "metadata": {**body["metadata"],
                                           "resourceVersion": str(self.version)}}
        return copy.deepcopy(self.lease)

    async def merge_patch(self, path: str, body: dict) -> dict:  # type: ignore[type-arg]
        self._check()
        assert self.lease is not None
        wanted = body.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != self.lease["metadata"]["resourceVersion"]:
            raise Conflict(409, "the object has been modified")
        self.version += 1
        self.lease["spec"].update(body.get("spec", {}))
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(api: FakeLeases, name: str, clock: Clock) -> LeaderElector:
    return LeaderElector(api, namespace="ns", name="l", identity=name,  # type: ignore[arg-type]
                         duration=15, renew_every=5, retry=2, clock=clock)


async def test_of_two_candidates_racing_for_a_free_lease_exactly_one_wins() -> None:
    api, clock = FakeLeases(), Clock()
    await elector(api, "seed", clock).try_once()
    assert api.lease is not None
    api.lease["spec"]["holderIdentity"] = ""  # released: both may try
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    conflicts = api.version
    results = await asyncio.gather(a.try_once(), b.try_once())
    assert sorted(results) == [False, True], "the stale resourceVersion loses (409)"
    assert api.version == conflicts + 1, "one write won, the other was refused"
    assert api.lease["spec"]["holderIdentity"] in ("a", "b")


async def test_a_leader_that_cannot_renew_stops_leading_before_anyone_may_take_over() -> None:
    api, clock = FakeLeases(), Clock()
    leader, follower = elector(api, "a", clock), elector(api, "b", clock)
    assert await leader.try_once()
    leader._set(True)
    assert not await follower.try_once()
    api.down = True  # the API server goes away; the leader keeps failing
    clock.now += 9.9
    assert leader.is_leader
    clock.now += 0.2  # past the renew deadline (10 s of 15)
    assert not leader.is_leader, "stops acting on its own clock, without a response"
    api.down = False
    clock.now += 4.0  # 14.1 s: the follower still waits
    assert not await follower.try_once()
    clock.now += 1.0  # 15.1 s since the follower saw the last renewal
    assert await follower.try_once()


async def test_the_election_survives_a_broken_api_server_and_hands_over_on_stop() -> None:
    api = FakeLeases()
    candidate = LeaderElector(api, namespace="ns", name="l",  # type: ignore[arg-type]
                              identity="a", duration=3, renew_every=0.1, retry=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(candidate.run(stop))
    await eventually(lambda: candidate.is_leader)
    api.down = True  # ServerDisconnectedError is not an OSError: it must not end the loop
    await asyncio.sleep(0.3)
    assert not running.done()
    api.down = False
    await eventually(lambda: candidate.is_leader)
    stop.set()
    await asyncio.wait_for(running, 5)
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == ""
