"""Extension points of the kernel, as structural ``typing.Protocol``s.

Anything with the right methods plugs in: a protocol listener (``ProtocolHandler``), an
in-process frame producer (``MediaSource``), a cluster-wide key owner (``KeyOwnership``), an
``Observer`` of stream life, an ``AuthProvider`` and a recording ``Storage`` backend.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .frame import Frame
from .key import StreamKey

if TYPE_CHECKING:
    from .shutdown import ShutdownToken
    from .stream import PublishHandle, Subscription


class Action(enum.Enum):
    PUBLISH = "publish"
    PLAY = "play"


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """Who wants to do what: handed to the ``AuthProvider`` before a publish or play starts."""

    action: Action
    key: StreamKey
    protocol: str
    peer: str
    query: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuthGrant:
    """What an auth provider allowed beyond "yes": ``takeover`` lets this publisher replace a
    live publisher of the same key (never implied: hijack protection)."""

    takeover: bool = False


@runtime_checkable
class PublishRegistry(Protocol):
    """What a protocol handler sees of the kernel: publish, subscribe, authorize."""

    async def authorize(self, request: AuthRequest) -> AuthGrant | None: ...

    async def start_publish(self, key: StreamKey, *, protocol: str = "",
                            peer: str = "") -> PublishHandle: ...

    async def end_publish(self, key: StreamKey, reason: str = "ended") -> bool: ...

    async def subscribe(self, key: StreamKey, *, protocol: str = "", peer: str = "",
                        viewer: bool = True, follows_fallback: bool = True
                        ) -> Subscription: ...


@runtime_checkable
class ProtocolHandler(Protocol):
    """A listener (RTMP, HTTP, the relay server, ...). ``run`` returns once ``shutdown`` fires
    and its connections have wound down."""

    name: str

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None: ...


@runtime_checkable
class MediaSource(Protocol):
    """An in-process producer of frames (a file, a relay upstream, a test generator).
    ``next_frame`` returns ``None`` when the source is exhausted."""

    async def next_frame(self) -> Frame | None: ...


@runtime_checkable
class Upstream(Protocol):
    """Where a node gets streams it does not have (an edge: the owning origin's relay).
    ``open`` returns a source for ``key``, or None when nobody publishes it."""

    async def open(self, key: StreamKey) -> MediaSource | None: ...


@runtime_checkable
class KeyOwnership(Protocol):
    """Who owns a stream key. Local by default; the cluster plugs in a Redis lease here.
    ``claim`` returns a fencing token (monotonic per key) or raises ``StreamBusy``."""

    async def claim(self, key: StreamKey) -> int: ...

    async def release(self, key: StreamKey, token: int) -> None: ...


@runtime_checkable
class Observer(Protocol):
    """Told about stream life. Called on the event loop: must not block, must not raise."""

    def on_publish_start(self, key: StreamKey, protocol: str, peer: str) -> None: ...

    def on_publish_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None: ...

    def on_publish_refused(self, key: StreamKey, protocol: str, peer: str,
                           reason: str) -> None:
        """A publish could not start: the key is taken, or its ownership cannot be decided
        (auth refusals are the ``AuthProvider``'s to report)."""
        ...

    def on_play_start(self, key: StreamKey, protocol: str, peer: str) -> None: ...

    def on_play_first_frame(self, key: StreamKey, protocol: str, peer: str,
                            seconds: float) -> None:
        """A subscriber got its first frames ``seconds`` after it subscribed."""
        ...

    def on_handshake(self, protocol: str, peer: str, style: str, seconds: float) -> None:
        """A client finished its protocol handshake (``style``: e.g. simple/digest)."""
        ...

    def on_play_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None: ...

    def on_stream_reaped(self, key: StreamKey) -> None: ...

    def on_viewer_skipped(self, key: StreamKey, protocol: str, peer: str, dropped: int) -> None: ...


@runtime_checkable
class AuthProvider(Protocol):
    """Decides whether a publish or play may start; raises ``AuthError`` to refuse. May return
    an ``AuthGrant`` with extra rights (e.g. takeover of a live key)."""

    async def authorize(self, request: AuthRequest) -> AuthGrant | None: ...


@runtime_checkable
class StorageWriter(Protocol):
    """One file being written. Blocking calls: the recorder runs them off the event loop."""

    def write(self, data: bytes) -> None: ...

    def patch(self, offset: int, data: bytes) -> None:
        """Overwrite bytes already written (e.g. a header's duration at finalization)."""
        ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Storage(Protocol):
    """Where recordings go. ``name`` is a relative path built from a validated ``StreamKey``;
    opening an existing name replaces it."""

    def open(self, name: str) -> StorageWriter: ...


class NullObserver:
    """The observer that observes nothing."""

    def on_publish_start(self, key: StreamKey, protocol: str, peer: str) -> None:
        pass

    def on_publish_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        pass

    def on_publish_refused(self, key: StreamKey, protocol: str, peer: str,
                           reason: str) -> None:
        pass

    def on_play_start(self, key: StreamKey, protocol: str, peer: str) -> None:
        pass

    def on_play_first_frame(self, key: StreamKey, protocol: str, peer: str,
                            seconds: float) -> None:
        pass

    def on_handshake(self, protocol: str, peer: str, style: str, seconds: float) -> None:
        pass

    def on_play_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        pass

    def on_stream_reaped(self, key: StreamKey) -> None:
        pass

    def on_viewer_skipped(self, key: StreamKey, protocol: str, peer: str, dropped: int) -> None:
        pass


class AllowAll:
    """The auth provider that allows everything (the single-node default). Never grants
    takeover: a live key stays with its publisher."""

    async def authorize(self, request: AuthRequest) -> AuthGrant | None:
        return None


class LocalOwnership:
    """Key ownership within one process: the kernel's own table is the source of truth.

    Fencing tokens start from the wall clock in milliseconds and only grow, so they also
    identify a publish session across node restarts (HLS segment URIs are built from them)."""

    def __init__(self) -> None:
        self._tokens: dict[StreamKey, int] = {}
        self._held: set[StreamKey] = set()

    async def claim(self, key: StreamKey) -> int:
        from .errors import StreamBusy

        if key in self._held:
            raise StreamBusy(f"{key} is already being published")
        self._held.add(key)
        token = max(self._tokens.get(key, 0) + 1, time.time_ns() // 1_000_000)
        self._tokens[key] = token
        return token

    async def release(self, key: StreamKey, token: int) -> None:
        if self._tokens.get(key) == token:
            self._held.discard(key)
