"""What WHEP and WHIP sessions share: a peer connection, its lifetime, its end.

A session ends exactly once (``close``), for one reason: the client's DELETE, ICE/DTLS failing
or consent lapsing (the browser vanished), no connection within ``connect_timeout``, the stream
ending, or the node shutting down. Every task it starts is its own and is cancelled then.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.rtcrtpsender import RTCRtpSender

from arcly.engine import StreamKey

log = logging.getLogger("arcly.webrtc")


class Session:
    """One WHEP viewer or WHIP publisher."""

    kind = "session"

    def __init__(self, key: StreamKey, peer: str, pc: RTCPeerConnection, *,
                 connect_timeout: float, on_closed: Callable[[Session], None]) -> None:
        self.id = secrets.token_urlsafe(16)
        self.key = key
        self.peer = peer
        self.pc = pc
        self.loop = asyncio.get_running_loop()
        self.started_at = self.loop.time()
        self.connected_at: float | None = None
        self.closed = False
        self.close_reason = ""
        self._on_closed = on_closed
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Task[None] | None = None
        self._connect_timeout = connect_timeout
        pc.on("connectionstatechange", self._state_changed)

    @property
    def path(self) -> str:
        return f"/{self.key.app}/{self.key.stream}/{self.kind}/{self.id}"

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` for the life of the session."""
        task = asyncio.create_task(coro, name=f"{self.kind} {self.key} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("webrtc %s task failed stream=%s peer=%s error=%r", self.kind,
                        self.key, self.peer, task.exception())
            self.end("internal error")

    def watch_connect(self) -> None:
        self.spawn(self._connect_deadline(), "connect deadline")

    async def _connect_deadline(self) -> None:
        await asyncio.sleep(self._connect_timeout)
        if self.connected_at is None:
            self.end("no connection")

    async def _state_changed(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self.connected_at is None:
            self.connected_at = self.loop.time()
            log.info("webrtc %s connected stream=%s peer=%s setup_ms=%.0f", self.kind, self.key,
                     self.peer, (self.connected_at - self.started_at) * 1000)
            self.on_connected()
        elif state in ("failed", "closed"):
            self.end("connection failed" if state == "failed" else "connection closed")

    def on_connected(self) -> None:
        """Subclasses start what needs a connection."""

    def end(self, reason: str) -> asyncio.Task[None]:
        """End the session: the teardown runs once, as a task of its own (so a caller that is
        cancelled, or one of the session's own tasks, cannot cut it short)."""
        if self._closing is None:
            self.closed = True
            self.close_reason = reason
            self._closing = asyncio.create_task(self._tear_down(),
                                                name=f"{self.kind} {self.key} close")
        return self._closing

    async def close(self, reason: str) -> None:
        """End the session and wait for its teardown."""
        await asyncio.shield(self.end(reason))

    async def _tear_down(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        try:
            await self.release()
        except Exception:
            log.exception("webrtc %s release failed stream=%s peer=%s", self.kind, self.key,
                          self.peer)
        finally:
            try:
                await self.pc.close()
            except Exception as exc:  # aiortc's teardown of a half-open connection
                log.debug("webrtc close error=%r", exc)
            self._on_closed(self)
            log.info("webrtc %s end stream=%s peer=%s reason=%r duration_s=%.1f", self.kind,
                     self.key, self.peer, self.close_reason,
                     self.loop.time() - self.started_at)

    async def release(self) -> None:
        """Subclasses give back what they hold (subscription, publish, transcoder)."""

    def summary(self) -> dict[str, Any]:
        # No session id: with it, anyone who reads the API could end the session.
        return {"kind": self.kind, "stream": str(self.key), "peer": self.peer,
                "state": self.pc.connectionState,
                "age_s": round(self.loop.time() - self.started_at, 1)}


def prefer(transceiver: RTCRtpTransceiver, mime_type: str) -> bool:
    """Restrict ``transceiver`` to ``mime_type`` (and its RTX); False if aiortc has none."""
    capabilities = RTCRtpSender.getCapabilities(transceiver.kind)
    chosen = [c for c in capabilities.codecs if c.mimeType.lower() == mime_type.lower()]
    if not chosen:
        return False
    rtx = [c for c in capabilities.codecs if c.mimeType.lower().endswith("/rtx")]
    transceiver.setCodecPreferences(chosen + rtx)
    return True
