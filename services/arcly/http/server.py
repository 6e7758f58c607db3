"""The node's HTTP listener: HTTP-FLV playback and health probes.

``GET /{app}/{stream}.flv`` streams FLV: header, metadata, sequence headers, the cached GOP,
then live tags, until the stream ends (the response ends with it). One request per connection
(``Connection: close``), the way flv.js and mpegts.js use it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from arcly.engine import (
    Action,
    AuthError,
    AuthRequest,
    Engine,
    InvalidStreamKey,
    ProtocolError,
    PublishRegistry,
    ShutdownToken,
    StreamKey,
    StreamNotFound,
    Subscription,
)
from arcly.media import flv
from arcly.protocols.egress import DEFAULT_COALESCE, deliver, limit_send_buffer
from arcly.protocols.listener import (
    Admission,
    close_writer,
    peer_ip,
    peer_name,
    start_listener,
)

from .api import stream_detail, streams_document
from .player import openapi_document, player_page, static_file, status_page
from .request import MAX_HEAD, Request, parse_request, quote_query

if TYPE_CHECKING:
    from arcly.hls.service import HlsService

log = logging.getLogger("arcly.http")

# The probe endpoints every node serves (the Helm chart's probes must use these).
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"

_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class HttpSettings:
    header_timeout: float = 10.0
    write_buffer_high: int = 512 * 1024
    stall_timeout: float = 10.0
    viewer_send_buffer: int = 256 * 1024
    write_coalesce: float = DEFAULT_COALESCE  # 0: write every frame the moment it arrives


class HttpServer:
    """Serves HTTP-FLV and ``/healthz`` on one listener."""

    name = "http"

    def __init__(self, host: str, port: int, settings: HttpSettings | None = None, *,
                 hls: HlsService | None = None, engine: Engine | None = None,
                 admission: Admission | None = None, node: dict[str, str] | None = None,
                 api_token: str = "") -> None:
        self.api_token = api_token
        self.hls = hls
        self.engine = engine
        self.admission = admission or Admission()
        self.node = node or {}
        self.host = host
        self.port = port
        self.settings = settings or HttpSettings()
        self.addresses: list[tuple[str, int]] = []
        self.ready = asyncio.Event()
        self._connections: set[asyncio.Task[None]] = set()
        self._subs: set[Subscription] = set()
        self._stopping = False

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ip = peer_ip(writer)
            if not self.admission.open_connection(ip):
                writer.transport.abort()
                return
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                await self._handle(registry, reader, writer)
            finally:
                self._connections.discard(task)
                self.admission.close_connection(ip)

        server, self.addresses = await start_listener("http", self.host, self.port, on_client,
                                                      limit=MAX_HEAD)
        self.ready.set()
        try:
            await shutdown.wait()
        finally:
            self._stopping = True
            server.close()
            for sub in list(self._subs):
                sub.close("shutdown")
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=5.0)
            for task in list(self._connections):
                task.cancel()

    async def _handle(self, registry: PublishRegistry, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        peer = peer_name(writer)
        writer.transport.set_write_buffer_limits(high=self.settings.write_buffer_high)
        try:
            try:
                async with asyncio.timeout(self.settings.header_timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                self._respond(writer, 431, "request head too large\n")
                return
            except asyncio.IncompleteReadError:
                return
            except TimeoutError:
                self._respond(writer, 408, "request timeout\n")
                return
            try:
                request = parse_request(head[:-4])
            except ProtocolError as exc:
                log.info("http bad request peer=%s error=%s", peer, exc)
                self._respond(writer, 400, f"{exc}\n")
                return
            await self._route(registry, request, reader, writer, peer)
        except (ConnectionError, OSError):
            pass
        finally:
            await close_writer(writer)

    def _respond(self, writer: asyncio.StreamWriter, status: int, body: str | bytes = "",
                 content_type: str = "text/plain; charset=utf-8", head_only: bool = False,
                 extra: dict[str, str] | None = None) -> None:
        payload = body.encode() if isinstance(body, str) else body
        headers = {"Content-Type": content_type, "Content-Length": str(len(payload)),
                   "Connection": "close", "Access-Control-Allow-Origin": "*",
                   "Cache-Control": "no-cache", **(extra or {})}
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else payload))

    async def _route(self, registry: PublishRegistry, request: Request,
                     reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: str) -> None:
        if request.method == "OPTIONS":
            self._respond(writer, 204, extra={"Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                                              "Access-Control-Allow-Headers": "*"})
            return
        parts = request.path.strip("/").split("/")
        if parts[:2] == ["api", "v1"] and self.engine is not None:
            await self._api(request, parts[2:], writer, peer)
            return
        if request.method not in ("GET", "HEAD"):
            self._respond(writer, 405, "method not allowed\n", extra={"Allow": "GET, HEAD"})
            return
        head_only = request.method == "HEAD"
        if request.path in (LIVENESS_PATH, READINESS_PATH):
            # Liveness: the process serves. Readiness: it also takes new sessions.
            draining = request.path == READINESS_PATH and self.admission.draining
            ready = not self._stopping and not draining
            state = "ok" if ready else "stopping" if self._stopping else "draining"
            self._respond(writer, 200 if ready else 503, json.dumps({"status": state}) + "\n",
                          "application/json", head_only)
            return
        if self.admission.draining and (request.path.endswith((".flv", ".m3u8"))):
            self._respond(writer, 503, "node is draining\n", head_only=head_only,
                          extra={"Retry-After": "1"})
            return
        if len(parts) == 2 and parts[1].endswith(".flv"):
            await self._play_flv(registry, request, parts[0], parts[1][:-4], reader, writer,
                                 peer, head_only)
            return
        if len(parts) == 3 and self.hls is not None and (
                parts[2] == "index.m3u8" or parts[2].endswith(".ts")):
            await self._hls(registry, request, parts, writer, peer, head_only)
            return
        if request.path == "/":
            self._respond(writer, 200, status_page(), "text/html; charset=utf-8", head_only)
            return
        # Pages and scripts come after the media routes, so apps may be named "play"/"static".
        if len(parts) == 2 and parts[0] == "static" and parts[1].endswith(".js"):
            script = static_file(parts[1])
            if script is None:
                self._respond(writer, 404, "not found\n", head_only=head_only)
            else:
                self._respond(writer, 200, script, "text/javascript; charset=utf-8", head_only,
                              {"Cache-Control": "public, max-age=3600"})
            return
        if len(parts) == 3 and parts[0] == "play":
            try:
                key = StreamKey(parts[1], parts[2])
            except InvalidStreamKey as exc:
                self._respond(writer, 404, f"{exc}\n", head_only=head_only)
                return
            kind = "flv" if request.query.get("type") == "flv" else "hls"
            self._respond(writer, 200, player_page(key, kind=kind), "text/html; charset=utf-8",
                          head_only)
            return
        self._respond(writer, 404, "not found\n", head_only=head_only)

    def _api_allowed(self, request: Request, peer: str) -> bool:
        """With an API token, every API call needs ``Authorization: Bearer <token>``. Without
        one, reading is open and changes are accepted from loopback only."""
        if self.api_token:
            offered = request.headers.get("authorization", "")
            return hmac.compare_digest(offered.encode(), f"Bearer {self.api_token}".encode())
        return request.method in ("GET", "HEAD") or peer.startswith(("127.", "[::1]", "::1"))

    async def _api(self, request: Request, parts: list[str], writer: asyncio.StreamWriter,
                   peer: str) -> None:
        assert self.engine is not None
        head_only = request.method == "HEAD"
        if parts == ["openapi.json"] and request.method in ("GET", "HEAD"):
            self._respond(writer, 200, openapi_document(), "application/json", head_only)
            return
        if not self._api_allowed(request, peer):
            self._respond(writer, 401, json.dumps({"error": "unauthorized"}) + "\n",
                          "application/json", head_only,
                          {"WWW-Authenticate": 'Bearer realm="arcly"'})
            return
        if request.method == "DELETE" and len(parts) == 3 and parts[0] == "streams":
            await self._kick(parts, writer, peer)
            return
        if request.method not in ("GET", "HEAD"):
            self._respond(writer, 405, json.dumps({"error": "method not allowed"}) + "\n",
                          "application/json", extra={"Allow": "GET, HEAD, DELETE"})
            return
        document: dict[str, object] | None = None
        if parts == ["streams"]:
            document = streams_document(self.engine)
        elif parts == ["node"]:
            document = {**self.node, "draining": self.admission.draining,
                        "connections": self.admission.connections,
                        "limits_hit": dict(self.admission.refused),
                        "streams": len(self.engine.streams()),
                        "viewers": sum(len(s.subscribers) for s in self.engine.streams())}
        elif len(parts) == 3 and parts[0] == "streams":
            try:
                stream = self.engine.stream(StreamKey(parts[1], parts[2]))
            except InvalidStreamKey:
                stream = None
            if stream is not None:
                document = stream_detail(self.engine, stream)
        if document is None:
            self._respond(writer, 404, json.dumps({"error": "not found"}) + "\n",
                          "application/json", head_only)
            return
        self._respond(writer, 200, json.dumps(document) + "\n", "application/json", head_only)

    async def _kick(self, parts: list[str], writer: asyncio.StreamWriter, peer: str) -> None:
        """DELETE /api/v1/streams/{app}/{stream}: end the publish (the publisher is
        disconnected, viewers get the end of the stream)."""
        assert self.engine is not None
        try:
            key = StreamKey(parts[1], parts[2])
        except InvalidStreamKey:
            key = None
        if key is None or not await self.engine.end_publish(key, f"kicked via API by {peer}"):
            self._respond(writer, 404, json.dumps({"error": "not found"}) + "\n",
                          "application/json")
            return
        log.info("stream kicked stream=%s by=%s", key, peer)
        self._respond(writer, 200, json.dumps({"kicked": str(key)}) + "\n", "application/json")

    async def _hls(self, registry: PublishRegistry, request: Request, parts: list[str],
                   writer: asyncio.StreamWriter, peer: str, head_only: bool) -> None:
        assert self.hls is not None
        try:
            key = StreamKey(parts[0], parts[1])
            await registry.authorize(AuthRequest(Action.PLAY, key, "hls", peer, request.query))
        except InvalidStreamKey as exc:
            self._respond(writer, 404, f"{exc}\n", head_only=head_only)
            return
        except AuthError as exc:
            self._respond(writer, 403, f"{exc}\n", head_only=head_only)
            return
        if parts[2] == "index.m3u8":
            playlist = await self.hls.playlist(key, query=quote_query(request.query))
            if playlist is None:
                self._respond(writer, 404, f"{key} is not being published\n",
                              head_only=head_only)
                return
            # Playlists change every segment: let caches hold them for under half of one.
            max_age = int(self.hls.settings.segment_seconds / 2)
            self._respond(writer, 200, playlist, "application/vnd.apple.mpegurl", head_only,
                          {"Cache-Control": f"max-age={max_age}"})
            return
        data = self.hls.segment(key, parts[2])
        if data is None:
            self._respond(writer, 404, "no such segment\n", head_only=head_only)
            return
        # A segment URI names one immutable piece of media (publish session + sequence).
        self._respond(writer, 200, data, "video/mp2t", head_only,
                      {"Cache-Control": "public, max-age=86400, immutable"})

    async def _play_flv(self, registry: PublishRegistry, request: Request, app: str,
                        name: str, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, peer: str, head_only: bool) -> None:
        try:
            key = StreamKey(app, name)
            await registry.authorize(AuthRequest(Action.PLAY, key, "http-flv", peer,
                                                 request.query))
            sub = await registry.subscribe(key, protocol="http-flv", peer=peer)
            if len(sub.stream.subscribers) > self.admission.max_viewers_per_stream:
                sub.close("refused: too many viewers")
                self.admission.refuse("max_viewers_per_stream", f"peer={peer} stream={key}")
                self._respond(writer, 503, "too many viewers on this stream\n",
                              head_only=head_only, extra={"Retry-After": "5"})
                return
        except (InvalidStreamKey, StreamNotFound) as exc:
            self._respond(writer, 404, f"{exc}\n", head_only=head_only)
            return
        except AuthError as exc:
            self._respond(writer, 403, f"{exc}\n", head_only=head_only)
            return
        self._subs.add(sub)
        limit_send_buffer(writer, self.settings.viewer_send_buffer)
        eof_watch = asyncio.create_task(self._close_on_eof(reader, sub))
        reason = "client closed"
        try:
            gop = sub.stream.gop
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\n"
                         b"Connection: close\r\nCache-Control: no-cache\r\n"
                         b"Access-Control-Allow-Origin: *\r\n\r\n")
            if head_only:
                reason = "head request"
                return
            writer.write(flv.file_header(audio=gop.audio_config is not None or not gop.has_video,
                                         video=gop.has_video or gop.audio_config is None))
            reason = await deliver(sub, writer, flv.frame_tag,
                                   stall_timeout=self.settings.stall_timeout,
                                   coalesce=self.settings.write_coalesce)
            if not writer.transport.is_closing():
                await writer.drain()
        finally:
            sub.close(reason)
            self._subs.discard(sub)
            eof_watch.cancel()

    @staticmethod
    async def _close_on_eof(reader: asyncio.StreamReader, sub: Subscription) -> None:
        """A player that hangs up while the stream is quiet must not linger until the next
        frame: watch the request side for EOF."""
        try:
            while await reader.read(4096):
                pass
        except (ConnectionError, OSError):
            pass
        sub.close("client closed")
