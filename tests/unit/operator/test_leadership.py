"""Who may write itself into the leader Lease (the decision, without an API server)."""

from __future__ import annotations

import datetime

from arcly_operator.leadership import Observed, lease_body, may_take

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
