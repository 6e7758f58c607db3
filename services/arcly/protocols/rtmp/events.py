"""What an RTMP connection tells its adapter: small immutable events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arcly.engine.frame import FrameKind


class Event:
    """Base of every RTMP event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HandshakeDone(Event):
    digest: bool


@dataclass(frozen=True, slots=True)
class Connected(Event):
    """``connect`` was accepted (the core answers it itself)."""

    app: str
    tc_url: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PublishRequested(Event):
    stream_id: int
    name: str
    query: str
    publish_type: str


@dataclass(frozen=True, slots=True)
class PlayRequested(Event):
    stream_id: int
    name: str
    query: str
    start: float


@dataclass(frozen=True, slots=True)
class StreamClosed(Event):
    """``deleteStream``, ``closeStream`` or ``FCUnpublish``: the publish or play on that
    message stream is over."""

    stream_id: int
    command: str


@dataclass(slots=True)  # not frozen: one per media message, and frozen costs 3x
class MediaReceived(Event):
    """Audio, video or data for a publishing message stream (``@setDataFrame`` unwrapped,
    aggregates split)."""

    stream_id: int
    kind: FrameKind
    timestamp: int
    payload: bytes
