"""A WHEP viewer: one subscription, one peer connection sending H.264 and Opus."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection

from arcly.engine import StreamKey, Subscription

from .feed import AudioFeed
from .session import Session, prefer
from .tracks import AudioTrack, VideoTrack

log = logging.getLogger("arcly.webrtc")


class WhepSession(Session):
    """Sends ``sub``'s stream to a browser: video from its own subscription, audio from the
    stream's shared Opus transcoder (``feed``; None: the stream has no AAC audio, or the offer
    takes no audio), joined once the connection is up so no stale audio queues up."""

    kind = "whep"

    def __init__(self, key: StreamKey, peer: str, pc: RTCPeerConnection, sub: Subscription,
                 *, kinds: set[str], connect_timeout: float,
                 on_closed: Callable[[Session], None],
                 leave_feed: Callable[[AudioFeed, AudioTrack], None]) -> None:
        super().__init__(key, peer, pc, connect_timeout=connect_timeout, on_closed=on_closed)
        self.sub = sub
        self.video = VideoTrack(sub)
        self.audio = AudioTrack() if "audio" in kinds else None
        self.feed: AudioFeed | None = None
        self._joined = False
        self._leave_feed = leave_feed
        if "video" in kinds:
            transceiver = pc.addTransceiver(self.video, direction="sendonly")
            prefer(transceiver, "video/H264")
            # The track stops on the stream's end, a codec it cannot send, or B-frames.
            self.video.on("ended", lambda: self.end(self.video.end_reason or "video ended"))
        else:
            self.spawn(self._discard_video(), "video discard")
        if self.audio is not None:
            transceiver = pc.addTransceiver(self.audio, direction="sendonly")
            prefer(transceiver, "audio/opus")
        self.spawn(self._watch_stream(), "stream watch")

    def attach(self, feed: AudioFeed | None) -> None:
        """The stream's audio feed (joined once connected)."""
        self.feed = feed
        if self.connected_at is not None:
            self.on_connected()

    def on_connected(self) -> None:
        if self.feed is not None and self.audio is not None and not self._joined:
            self._joined = True
            self.feed.add(self.audio)

    async def _discard_video(self) -> None:
        """An audio-only viewer: its subscription is read all the same (it would otherwise
        fill up and be cut as a slow viewer) and tells when the stream ends."""
        while await self.sub.next_batch():
            pass

    async def _watch_stream(self) -> None:
        await self.sub.done.wait()
        # Pending frames still go out; the end of the stream ends the session.
        self.end(self.sub.close_reason or "stream ended")

    async def release(self) -> None:
        self.sub.close(self.close_reason)
        if self.feed is not None and self.audio is not None:
            self._leave_feed(self.feed, self.audio)

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["video_frames"] = self.video.frames_sent
        if self.video.first_frame_at is not None:
            out["first_frame_ms"] = round((self.video.first_frame_at - self.started_at) * 1000)
        return out
