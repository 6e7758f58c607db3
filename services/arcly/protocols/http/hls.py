"""HLS over HTTP: ``GET /{app}/{stream}/index.m3u8`` (the live playlist) and what it names:
segments (``{segment}.ts`` or ``.m4s``), parts (``.m4s``) and init segments (``.mp4``). All are
authorized like any play; the playlist carries the request's credentials on to the URIs it
names. Low-Latency: ``_HLS_msn``/``_HLS_part`` hold a playlist request until that part exists
(400 when asked too far ahead, 503 when it does not come in time), and a request for the next
part (the preload hint) is held until it exists."""

from __future__ import annotations

import time
from collections.abc import Callable

from arcly.engine import InvalidStreamKey, StreamKey
from arcly.hls.service import BlockingReloadError, HlsService, not_in_time
from arcly.protocols.listener import Admission

from .exchange import (
    Connection,
    Exchange,
    authorize_play,
    head_prefix,
    refuse_while_draining,
    stream_key,
)
from .request import Request, quote_query
from .router import Handler

# How a held request is answered: (its connection, HEAD?, head prefix, body).
Deliver = Callable[[Connection, bool, bytes, bytes], None]


class HlsRoutes:
    def __init__(self, hls: HlsService, admission: Admission) -> None:
        self.hls = hls
        self.admission = admission
        self.epoch = 0  # grants of another epoch are void (see ``forget_grants``)
        self._cache_for: tuple[object, dict[str, str]] | None = None

    def forget_grants(self) -> None:
        """Kept-alive players are authorized again on their next request (the auth providers
        changed)."""
        self.epoch += 1

    def _playlist_cache(self) -> dict[str, str]:
        """The playlist's Cache-Control: it changes every part (Low-Latency: requests block
        for what is new) or every segment (let caches hold it for under half of one). Kept
        until the settings change (a config reload)."""
        settings = self.hls.settings
        if self._cache_for is None or self._cache_for[0] is not settings:
            value = "no-cache" if self.hls.low_latency else \
                f"max-age={int(settings.segment_seconds / 2)}"
            self._cache_for = (settings, {"Cache-Control": value})
        return self._cache_for[1]

    async def _admit(self, exchange: Exchange, params: dict[str, str]) -> StreamKey | None:
        # The credentials, without the blocking-reload position (it changes on every reload
        # and would defeat auth caches, e.g. a webhook's).
        query = exchange.request.query
        if query:
            query = {k: v for k, v in query.items() if not k.startswith("_HLS_")}
        connection = exchange.connection
        if connection is not None:  # asked again: what it was allowed lately holds no more
            connection.forget(params["app"], params["stream"])
        key = await authorize_play(exchange, params, "hls", query)
        if key is not None and connection is not None:
            connection.allow(key, query, time.monotonic() + REAUTHORIZE, self.epoch)
        return key

    def quick_handlers(self) -> frozenset[Handler]:
        """The handlers ``answer_now`` may answer for."""
        return frozenset((self.playlist, self.segment, self.fragment, self.init))

    def answer_now(self, handler: Handler, request: Request, params: dict[str, str],
                   connection: Connection) -> tuple[bytes, bytes] | None:
        """The answer to a request for ``handler`` (one of ``quick_handlers``), a kept-alive
        200 (its head up to the length, see ``head_prefix``, and its body), when it can be
        given at once: the connection was allowed to play this key with these credentials
        within ``REAUTHORIZE`` seconds, and the live playlist or the media is there. None:
        ``handler`` answers it (authorizing again, waiting for media, or refusing). A node
        that is draining answers 503 through ``handler``."""
        query = request.query
        if self.admission.draining or (query and any(k.startswith("_HLS_") for k in query)):
            return None  # blocking reloads wait, in the handler
        try:
            key = stream_key(params["app"], params["stream"])
        except InvalidStreamKey:
            return None
        if not connection.allowed(key, query, self.epoch):
            return None
        if handler == self.playlist:
            playlist = self.hls.playlist_now(key, query=quote_query(query) if query else "",
                                             client=_client(connection.ip, request))
            if playlist is None:
                return None
            answer = (head_prefix(200, "application/vnd.apple.mpegurl", self._playlist_cache(),
                                  keep_alive=True), playlist.encode())
        else:
            extension, content_type = _MEDIA[handler.__name__]
            data = self.hls.segment(key, params["segment"] + extension)
            if data is None:
                return None
            answer = (_MEDIA_HEADS[content_type], data)
        if request.method != "HEAD":
            self.hls.bytes_sent += len(answer[1])
        return answer

    def hold(self, handler: Handler, request: Request, params: dict[str, str],
             connection: Connection, deliver: Deliver) -> tuple[bytes, bytes] | bool:
        """A blocking playlist reload (``_HLS_msn``, ``_HLS_part``) of a kept-alive player
        allowed to play (see ``answer_now``), held without a task (``HlsService.hold``): its
        answer if it is there now; True if held, and ``deliver(connection, head_only, prefix,
        body)`` answers it later (the playlist, or a 503 when it does not come in time);
        False: ``handler`` answers it (a bad or unusual query, no grant, no media yet, too far
        ahead)."""
        query = request.query
        if handler != self.playlist or self.admission.draining or not query \
                or "_HLS_msn" not in query:
            return False
        credentials = {}
        for name, value in query.items():
            if not name.startswith("_HLS_"):
                credentials[name] = value
            elif name not in _BLOCKING:
                return False
        try:
            key = stream_key(params["app"], params["stream"])
            msn = _number(query["_HLS_msn"])
            part = _number(query.get("_HLS_part"))
        except (InvalidStreamKey, ValueError):
            return False
        if msn is None or not connection.allowed(key, credentials, self.epoch):
            return False
        head_only = request.method == "HEAD"

        def reply(playlist: str) -> tuple[bytes, bytes]:
            body = playlist.encode()
            if not head_only:
                self.hls.bytes_sent += len(body)
            return head_prefix(200, "application/vnd.apple.mpegurl", self._playlist_cache(),
                               keep_alive=True), body

        def answer(playlist: str | None) -> None:
            if playlist is None:
                deliver(connection, head_only, head_prefix(503, keep_alive=True),
                        f"{not_in_time(msn, part)}\n".encode())
            else:
                deliver(connection, head_only, *reply(playlist))

        held = self.hls.hold(key, msn, part, query=quote_query(credentials) if credentials
                             else "", client=_client(connection.ip, request), deliver=answer)
        return reply(held) if type(held) is str else bool(held)

    async def playlist(self, exchange: Exchange, params: dict[str, str]) -> None:
        if refuse_while_draining(exchange, self.admission):
            return
        key = await self._admit(exchange, params)
        if key is None:
            return
        request = exchange.request
        client = _client(exchange.ip, request)
        msn = part = None
        query = request.query
        if query:  # a player's poll mostly has none: no copy then
            query = dict(query)
            try:
                msn = _number(query.pop("_HLS_msn", None))
                part = _number(query.pop("_HLS_part", None))
            except ValueError:
                exchange.respond(400, "_HLS_msn and _HLS_part are numbers\n")
                return
            query.pop("_HLS_skip", None)  # delta updates are not offered (no CAN-SKIP-UNTIL)
            if part is not None and msn is None:
                exchange.respond(400, "_HLS_part needs _HLS_msn\n")
                return
        try:
            playlist = await self.hls.playlist(key, query=quote_query(query) if query else "",
                                               client=client, msn=msn, part=part)
        except BlockingReloadError as exc:
            exchange.respond(exc.status, f"{exc}\n")
            return
        if playlist is None:
            exchange.respond(404, f"{key} is not being published\n")
            return
        exchange.respond(200, playlist, "application/vnd.apple.mpegurl", self._playlist_cache())
        self._sent(exchange, len(playlist))

    async def segment(self, exchange: Exchange, params: dict[str, str]) -> None:
        await self._media(exchange, params, *_MEDIA["segment"])

    async def fragment(self, exchange: Exchange, params: dict[str, str]) -> None:
        """An fMP4 segment or part (``.m4s``)."""
        await self._media(exchange, params, *_MEDIA["fragment"])

    async def init(self, exchange: Exchange, params: dict[str, str]) -> None:
        await self._media(exchange, params, *_MEDIA["init"])

    async def _media(self, exchange: Exchange, params: dict[str, str], ext: str,
                     content_type: str) -> None:
        key = await self._admit(exchange, params)
        if key is None:
            return
        uri = params["segment"] + ext
        data = await self.hls.part(key, uri) if ext == ".m4s" else self.hls.segment(key, uri)
        if data is None:
            exchange.respond(404, "no such segment\n")
            return
        # A URI names one immutable piece of media (publish session + sequence [+ part], or
        # an init segment by the checksum of its bytes).
        exchange.respond(200, data, content_type, _IMMUTABLE)
        self._sent(exchange, len(data))

    def _sent(self, exchange: Exchange, size: int) -> None:
        if not exchange.head_only:
            self.hls.bytes_sent += size


_IMMUTABLE = {"Cache-Control": "public, max-age=86400, immutable"}
_BLOCKING = frozenset(("_HLS_msn", "_HLS_part", "_HLS_skip"))  # delta updates: not offered
# The media handlers: the extension their URIs end in and the type they are served as.
_MEDIA = {"segment": (".ts", "video/mp2t"), "fragment": (".m4s", "video/mp4"),
          "init": (".mp4", "video/mp4")}
_MEDIA_HEADS = {content_type: head_prefix(200, content_type, _IMMUTABLE, keep_alive=True)
               for _, content_type in _MEDIA.values()}
# A kept-alive player's play is authorized again after this many seconds (its polls and
# segments in between are answered without asking the auth provider, as SRS asks its on_play
# hook once per HLS session): a revoked or expired credential stops working within this long,
# the same allowance as the token providers' default clock skew.
REAUTHORIZE = 30.0


def _client(ip: str, request: Request) -> str:
    """Who asks, for the viewer estimate: address and user agent."""
    return f"{ip}|{request.headers.get('user-agent', '')[:128]}"


def _number(text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise ValueError(text)
    return int(text)
