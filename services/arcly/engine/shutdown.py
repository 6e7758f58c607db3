"""A cancellation token: shutdown is something tasks observe, not something done to them."""

from __future__ import annotations

import asyncio
import logging
import signal
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("arcly.engine")

# The signals orchestrators (systemd, Kubernetes, a terminal) stop a process with.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


@contextmanager
def signals_handled(on_signal: Callable[[signal.Signals], None],
                    signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Call ``on_signal(sig)`` on the running loop when one of ``signals`` arrives, for the
    duration of the block (where the loop cannot take signal handlers, say so and go on)."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError) as exc:
            log.error("cannot install signal handler signal=%s error=%s", sig.name, exc)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
