from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arcly.engine import InvalidStreamKey, ShutdownToken, StreamKey


async def test_cancelling_a_parent_cancels_children_but_not_the_reverse() -> None:
    parent = ShutdownToken()
    child = parent.child()
    grandchild = child.child()
    child.cancel()
    assert grandchild.cancelled and not parent.cancelled
    other = parent.child()
    parent.cancel()
    assert other.cancelled
    assert parent.child().cancelled, "a child of a cancelled token starts cancelled"


async def test_wait_returns_once_cancelled() -> None:
    token = ShutdownToken()
    waiter = asyncio.create_task(token.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    token.cancel()
    await asyncio.wait_for(waiter, 1)


async def test_guard_cancels_on_exception_and_on_return() -> None:
    token = ShutdownToken()
    with pytest.raises(RuntimeError), token.guard():
        raise RuntimeError("x")
    assert token.cancelled
    other = ShutdownToken()
    with other.guard():
        pass
    assert other.cancelled


@pytest.mark.parametrize("text", ["live/cam", "a/b", "A0/x.y-z_1", "l/" + "s" * 128])
def test_valid_keys_parse(text: str) -> None:
    assert str(StreamKey.parse(text)) == text


@pytest.mark.parametrize("text", ["live", "/cam", "live/", "live/../x", "live/a b", "li ve/x",
                                  "live/.hidden", "live/-x", "live/a/b", "live/" + "s" * 129,
                                  "live/cam\n", "live/caf\u00e9"])
def test_invalid_keys_are_refused(text: str) -> None:
    with pytest.raises(InvalidStreamKey):
        StreamKey.parse(text)


@given(st.text(max_size=40))
def test_any_accepted_key_is_safe_for_paths_and_logs(text: str) -> None:
    try:
        key = StreamKey.parse(text)
    except InvalidStreamKey:
        return
    for part in (key.app, key.stream):
        assert part[0].isascii() and part[0].isalnum()
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in part)
