"""HTTP-FLV playback: ``GET /{app}/{stream}.flv``.

The response streams FLV: the file header, then metadata, sequence headers and the cached GOP,
then live tags until the stream ends (the response ends with it). One request per connection
(``Connection: close``), the way flv.js and mpegts.js use it.
"""

from __future__ import annotations

import asyncio

from arcly.engine import (
    Action,
    AuthError,
    AuthRequest,
    CloseReason,
    InvalidStreamKey,
    StreamKey,
    StreamNotFound,
    Subscription,
)
from arcly.media import flv
from arcly.protocols.egress import deliver, limit_send_buffer
from arcly.protocols.listener import Admission

from .exchange import Exchange, refuse_while_draining
from .settings import HttpSettings

_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nConnection: close\r\n"
         b"Cache-Control: no-cache\r\nAccess-Control-Allow-Origin: *\r\n\r\n")


class FlvPlayback:
    def __init__(self, settings: HttpSettings, admission: Admission) -> None:
        self.settings = settings
        self.admission = admission
        self._subs: set[Subscription] = set()

    def close_all(self, reason: str) -> None:
        """End every playback (node shutdown): each response ends after what it has."""
        for sub in list(self._subs):
            sub.close(reason)

    async def play(self, exchange: Exchange, params: dict[str, str]) -> None:
        if refuse_while_draining(exchange, self.admission):
            return
        peer = exchange.peer
        try:
            key = StreamKey(params["app"], params["stream"])
            await exchange.registry.authorize(AuthRequest(
                Action.PLAY, key, "http-flv", peer, exchange.request.query))
            sub = await exchange.registry.subscribe(key, protocol="http-flv", peer=peer)
            if not self.admission.admit_viewer(sub, peer):
                exchange.respond(503, "too many viewers on this stream\n",
                                 extra={"Retry-After": "5"})
                return
        except (InvalidStreamKey, StreamNotFound) as exc:
            exchange.respond(404, f"{exc}\n")
            return
        except AuthError as exc:
            exchange.respond(403, f"{exc}\n")
            return
        await self._stream(exchange, sub)

    async def _stream(self, exchange: Exchange, sub: Subscription) -> None:
        writer = exchange.writer
        exchange.keep_alive = False  # the connection is the stream's now
        self._subs.add(sub)
        limit_send_buffer(writer, self.settings.viewer_send_buffer)
        eof_watch = asyncio.create_task(_close_on_eof(exchange.reader, sub))
        reason: str = CloseReason.CLIENT_CLOSED
        try:
            gop = sub.stream.gop
            writer.write(_HEAD)
            if exchange.head_only:
                reason = "head request"
                return
            writer.write(flv.file_header(audio=gop.audio_config is not None or not gop.has_video,
                                         video=gop.has_video or gop.audio_config is None))
            reason = await deliver(sub, writer, flv.frame_tag,
                                   stall_timeout=self.settings.stall_timeout,
                                   coalesce=self.settings.write_coalesce,
                                   coalesce_max=self.settings.write_coalesce_max)
            if not writer.transport.is_closing():
                await writer.drain()
        finally:
            sub.close(reason)
            self._subs.discard(sub)
            eof_watch.cancel()


async def _close_on_eof(reader: asyncio.StreamReader, sub: Subscription) -> None:
    """A player that hangs up while the stream is quiet must not linger until the next
    frame: watch the request side for EOF."""
    try:
        while await reader.read(4096):
            pass
    except (ConnectionError, OSError):
        pass
    sub.close(CloseReason.CLIENT_CLOSED)
