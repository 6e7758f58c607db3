"""Frames: one audio, video or data message as it travels from a publisher to every viewer."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .timeline import SegmentMark


class FrameKind(enum.IntEnum):
    """The FLV tag type / RTMP message type of a frame."""

    AUDIO = 8
    VIDEO = 9
    DATA = 18


# The kinds as module constants for per-frame code: looking up an Enum member
# (``FrameKind.VIDEO``) costs about 100 ns, a module global a few.
AUDIO = FrameKind.AUDIO
VIDEO = FrameKind.VIDEO
DATA = FrameKind.DATA


@dataclass(slots=True)
class Frame:
    """One media message. ``payload`` is the FLV tag body (codec header bytes included).

    ``keyframe`` marks a video frame a decoder can start from; ``config`` marks codec
    configuration (AVC/HEVC sequence header, AAC AudioSpecificConfig) or stream metadata,
    which the GOP cache keeps for the life of the stream.

    ``mark`` says which segment of the stream's timeline the frame belongs to (see
    ``arcly.engine.timeline``): stamped by the kernel of the node that receives the publish,
    carried as is by relays.

    ``encodings`` is the per-protocol wire form of this frame (an RTMP chunk run, an FLV tag),
    built once by the first viewer that needs it and shared by every other viewer: a frame's
    bytes are never copied per viewer.

    A frame is immutable once published (every viewer holds the same object); the class is
    not frozen only because a frozen dataclass costs three times as much to build, and one is
    built per media message. Only the kernel sets ``mark``, before anyone else sees it.
    """

    kind: FrameKind
    timestamp: int
    payload: bytes
    keyframe: bool = False
    config: bool = False
    mark: SegmentMark | None = field(default=None, compare=False)
    encodings: dict[object, bytes] = field(default_factory=dict, compare=False, repr=False)

    @property
    def size(self) -> int:
        return len(self.payload)
