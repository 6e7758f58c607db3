"""A cancellation token: shutdown is something tasks observe, not something done to them."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterator
from contextlib import contextmanager


class ShutdownToken:
    """A one-shot signal with parent/child links.

    Cancelling a token cancels all of its children (and theirs); cancelling a child leaves the
    parent alone. ``guard()`` cancels the token when its block exits, however it exits, so a
    task that leaves takes its siblings down with it.

    >>> token = ShutdownToken()
    >>> child = token.child()
    >>> token.cancel()
    >>> child.cancelled
    True
    """

    __slots__ = ("__weakref__", "_cancelled", "_children", "_event")

    def __init__(self) -> None:
        self._cancelled = False
        self._event: asyncio.Event | None = None
        self._children: weakref.WeakSet[ShutdownToken] = weakref.WeakSet()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        if self._event is not None:
            self._event.set()
        for child in list(self._children):
            child.cancel()

    def child(self) -> ShutdownToken:
        token = ShutdownToken()
        if self._cancelled:
            token.cancel()
        else:
            self._children.add(token)
        return token

    async def wait(self) -> None:
        """Return once the token is cancelled."""
        if self._cancelled:
            return
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()

    @contextmanager
    def guard(self) -> Iterator[ShutdownToken]:
        """Cancel this token when the block exits (return, exception or task cancellation)."""
        try:
            yield self
        finally:
            self.cancel()
