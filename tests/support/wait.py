"""Waiting for a condition with a deadline, instead of sleeping a fixed time and hoping.

``wait_until`` polls a plain function (for tests that drive processes from the test thread);
``eventually`` polls a function or coroutine function from async tests. Both return the first
truthy result and fail with ``message`` (and the last result) when the deadline passes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               message: str = "condition never held") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (after {timeout:g} s; last: {result!r})")
        time.sleep(interval)


async def eventually(check: Callable[[], T | Awaitable[T]], timeout: float = 10.0,
                     interval: float = 0.05, message: str = "condition never held") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (after {timeout:g} s; last: {result!r})")
        await asyncio.sleep(interval)
