"""HLS over HTTP: ``GET /{app}/{stream}/index.m3u8`` (the live playlist) and the segments it
names, ``GET /{app}/{stream}/{segment}.ts``. Both are authorized like any play; the playlist
carries the request's credentials on to its segment URIs."""

from __future__ import annotations

from arcly.engine import Action, AuthError, AuthRequest, InvalidStreamKey, StreamKey
from arcly.hls.service import HlsService
from arcly.protocols.listener import Admission

from .exchange import Exchange, refuse_while_draining
from .request import quote_query


class HlsRoutes:
    def __init__(self, hls: HlsService, admission: Admission) -> None:
        self.hls = hls
        self.admission = admission

    async def _admit(self, exchange: Exchange, params: dict[str, str]) -> StreamKey | None:
        try:
            key = StreamKey(params["app"], params["stream"])
            await exchange.registry.authorize(AuthRequest(
                Action.PLAY, key, "hls", exchange.peer, exchange.request.query))
        except InvalidStreamKey as exc:
            exchange.respond(404, f"{exc}\n")
            return None
        except AuthError as exc:
            exchange.respond(403, f"{exc}\n")
            return None
        return key

    async def playlist(self, exchange: Exchange, params: dict[str, str]) -> None:
        if refuse_while_draining(exchange, self.admission):
            return
        key = await self._admit(exchange, params)
        if key is None:
            return
        client = f"{exchange.ip}|{exchange.request.headers.get('user-agent', '')[:128]}"
        playlist = await self.hls.playlist(key, query=quote_query(exchange.request.query),
                                           client=client)
        if playlist is None:
            exchange.respond(404, f"{key} is not being published\n")
            return
        # Playlists change every segment: let caches hold them for under half of one.
        max_age = int(self.hls.settings.segment_seconds / 2)
        exchange.respond(200, playlist, "application/vnd.apple.mpegurl",
                         {"Cache-Control": f"max-age={max_age}"})
        self._sent(exchange, len(playlist))

    async def segment(self, exchange: Exchange, params: dict[str, str]) -> None:
        key = await self._admit(exchange, params)
        if key is None:
            return
        data = self.hls.segment(key, params["segment"] + ".ts")
        if data is None:
            exchange.respond(404, "no such segment\n")
            return
        # A segment URI names one immutable piece of media (publish session + sequence).
        exchange.respond(200, data, "video/mp2t",
                         {"Cache-Control": "public, max-age=86400, immutable"})
        self._sent(exchange, len(data))

    def _sent(self, exchange: Exchange, size: int) -> None:
        if not exchange.head_only:
            self.hls.bytes_sent += size
