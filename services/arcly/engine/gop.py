"""The GOP cache: what a new viewer needs to start decoding at once."""

from __future__ import annotations

from .frame import AUDIO, VIDEO, Frame


class GopCache:
    """Codec configuration + metadata for the life of the stream, plus every frame since the
    last video keyframe, capped by frame count and bytes. Past a cap it holds configuration
    only until the next keyframe, so memory stays bounded whatever the publisher sends.
    """

    __slots__ = (
        "audio_config",
        "bytes",
        "frames",
        "has_video",
        "max_bytes",
        "max_frames",
        "metadata",
        "overflowed",
        "video_config",
    )

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.metadata: Frame | None = None
        self.video_config: Frame | None = None
        self.audio_config: Frame | None = None
        self.frames: list[Frame] = []
        self.bytes = 0
        self.overflowed = False
        self.has_video = False

    def add(self, frame: Frame) -> None:
        kind = frame.kind
        if frame.config:
            if kind is VIDEO:
                self.video_config = frame
                self.has_video = True
            elif kind is AUDIO:
                self.audio_config = frame
            else:
                self.metadata = frame
            return
        if kind is VIDEO:
            self.has_video = True
            if frame.keyframe:
                self.frames = [frame]
                self.bytes = len(frame.payload)
                self.overflowed = False
                return
        if self.overflowed or not self.frames:
            # Nothing to attach to until a keyframe opens a GOP.
            return
        self.frames.append(frame)
        self.bytes += len(frame.payload)
        if len(self.frames) > self.max_frames or self.bytes > self.max_bytes:
            self.frames = []
            self.bytes = 0
            self.overflowed = True

    def configuration(self) -> list[Frame]:
        return [f for f in (self.metadata, self.video_config, self.audio_config) if f is not None]

    def snapshot(self) -> list[Frame]:
        """Configuration first, then the cached GOP (which starts with a keyframe)."""
        return self.configuration() + self.frames
