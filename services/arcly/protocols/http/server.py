"""The node's HTTP listener: reads one request head per connection and routes it.

Every route is one line in ``HttpServer._routes``; its handler lives in the module of its
concern (``flv``, ``hls``, ``api``, ``pages``, ``probes``). Accepting, the connection caps and
shutdown are the shared ``Listener``'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from arcly.engine import CloseReason, Engine, ProtocolError, PublishRegistry, ShutdownToken
from arcly.hls.service import HlsService
from arcly.protocols.listener import (
    Admission,
    Listener,
    ListeningHandler,
    close_writer,
    peer_ip,
    peer_name,
    unread,
)

from .api import ManagementApi
from .exchange import Connection, Exchange, response, whole_head
from .flv import FlvPlayback
from .hls import HlsRoutes
from .metrics import MetricsRoute
from .pages import Pages, serve_static
from .probes import LIVENESS_PATH, READINESS_PATH, Probes
from .recordings import RecordingRoutes
from .request import MAX_HEAD, Request, parse_request
from .router import NotAllowed, Resolved, Router
from .settings import HttpSettings

if TYPE_CHECKING:  # aiortc is imported only by nodes that serve WebRTC
    from arcly.protocols.webrtc.service import WebRtcService
    from arcly.recording import RecordingManager

log = logging.getLogger("arcly.http")
SWEEP = 0.25  # seconds between looks for late request heads (timeouts are kept to this)
_PARSED = 1024  # heads kept parsed for the shortcut (then forgotten all at once) ...
_PARSED_HEAD = 1024  # ... of at most this many bytes each

_PREFLIGHT = {"Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
              "Access-Control-Allow-Headers": "*"}
# WHIP/WHEP only: pages on other sites may create and end sessions there (never a DELETE on
# the management API). Authorization is never covered by "*" (Fetch): list it.
_PREFLIGHT_WEBRTC = {"Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
                     "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
                     "Access-Control-Expose-Headers": "Location, Link, ETag, Accept-Patch",
                     "Access-Control-Max-Age": "600", "Accept-Post": "application/sdp"}


class HttpServer(ListeningHandler):
    """HTTP-FLV, HLS, the management API, pages and probes on one listener."""

    name = "http"

    def __init__(self, host: str, port: int, settings: HttpSettings | None = None, *,
                 engine: Engine, hls: HlsService | None = None,
                 admission: Admission | None = None,
                 node: Callable[[], dict[str, Any]] = dict, api_token: str = "",
                 metrics: Callable[[], bytes] | None = None,
                 webrtc: WebRtcService | None = None,
                 srt: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
                 recordings: RecordingManager | None = None) -> None:
        self.settings = settings or HttpSettings()
        self.admission = admission or Admission()
        self.listener = Listener(self.name, host, port, self.admission, read_limit=MAX_HEAD,
                                 backlog=self.admission.limits.listen_backlog,
                                 shortcut=self._shortcut if hls is not None else None)
        self.flv = FlvPlayback(self.settings, self.admission)
        self.hls = HlsRoutes(hls, self.admission) if hls is not None else None
        self.api = ManagementApi(engine, self.admission, node=node, token=api_token,
                                 webrtc=webrtc.summary if webrtc is not None else None,
                                 srt=srt, hls_viewers=hls.viewers if hls is not None else None)
        self.probes = Probes(self.listener, self.admission)
        self.metrics = MetricsRoute(metrics)
        self.webrtc = webrtc
        self.recordings = recordings  # recording playback (origins and single nodes)
        self.recorded = RecordingRoutes(recordings, self.api, self.settings, self.admission)
        self.pages = Pages(low_latency=hls is not None and hls.low_latency)
        # Connections waiting for a request head (by their stream), with its deadline, and
        # whether the connection is kept-alive between requests (idle: closed quietly at the
        # deadline, and at shutdown). One sweep closes the late ones (see ``_sweep``), not a
        # timer per request; the shortcut answers polls of the idle ones.
        self._waiting: dict[asyncio.StreamReader, Connection] = {}
        self.router = self._routes()
        self._quick = self.hls.quick_handlers() if self.hls is not None else frozenset()
        # Heads the shortcut parsed and routed lately, by their bytes: a thousand players of a
        # stream send the same playlist poll (and ask for the same new segment), byte for byte.
        # Shared read-only: only the shortcut uses them.
        self._parsed: dict[bytes, tuple[Request, Resolved]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _routes(self) -> Router:
        router = Router()
        # Before the management API's prefix route (first match wins); same token rules.
        router.add("GET", "/api/v1/recordings", self.recorded.streams)
        router.add("GET", "/api/v1/recordings/{app}/{stream}", self.recorded.listing)
        router.add("*", "/api/v1/{path*}", self.api.handle)
        router.add("GET", LIVENESS_PATH, self.probes.liveness)
        router.add("GET", READINESS_PATH, self.probes.readiness)
        router.add("GET", "/metrics", self.metrics.serve)
        router.add("GET", "/{app}/{stream}.flv", self.flv.play)
        if self.hls is not None:
            router.add("GET", "/{app}/{stream}/index.m3u8", self.hls.playlist)
            router.add("GET", "/{app}/{stream}/{segment}.ts", self.hls.segment)
            router.add("GET", "/{app}/{stream}/{segment}.m4s", self.hls.fragment)
            router.add("GET", "/{app}/{stream}/{segment}.mp4", self.hls.init)
        if self.webrtc is not None:
            router.add("POST", "/{app}/{stream}/whep", self.webrtc.whep)
            router.add("POST", "/{app}/{stream}/whip", self.webrtc.whip)
            router.add("DELETE PATCH", "/{app}/{stream}/whep/{session}", self.webrtc.session)
            router.add("DELETE PATCH", "/{app}/{stream}/whip/{session}", self.webrtc.session)
        if self.recordings is not None:
            router.add("GET", "/recordings/{app}/{stream}/{base}.flv", self.recorded.flv_file)
            router.add("GET", "/recordings/{app}/{stream}/{base}/{name}", self.recorded.vod)
            router.add("GET", "/playback/{app}/{stream}.flv", self.recorded.playback)
        # Pages come after the media routes, so apps may be named "play" or "static".
        router.add("GET", "/", self.pages.status)
        router.add("GET", "/static/{name}", serve_static)
        router.add("GET", "/play/{app}/{stream}", self.pages.player)
        if self.webrtc is not None:
            router.add("GET", "/publish/{app}/{stream}", self.pages.publisher)
        return router

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._handle(registry, reader, writer)

        async def goodbye() -> None:
            self.flv.close_all(CloseReason.SHUTDOWN)
            if self.webrtc is not None:
                await self.webrtc.close_all(CloseReason.SHUTDOWN)
            for connection in list(self._waiting.values()):
                # Kept-alive connections between requests (a held request is answered first,
                # within its blocking wait, as the handler's would be).
                if connection.idle and not connection.held:
                    connection.writer.close()

        sweeper = asyncio.create_task(self._sweep(), name=f"arcly-{self.name}-deadlines")
        try:
            await self.listener.serve(on_client, shutdown, goodbye=goodbye)
        finally:
            sweeper.cancel()

    async def _sweep(self) -> None:
        """Close the connections whose request head is late: a 408 first unless the connection
        was idle between requests (their reads then end). Every ``SWEEP`` seconds: a deadline
        is kept to within that, and a request costs a dict entry instead of a timer."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP)
            try:
                now = loop.time()
                late = [c for c in self._waiting.values() if c.due <= now]
                for connection in late:
                    writer, reader = connection.writer, connection.reader
                    del self._waiting[reader]  # the handler's read sees it gone: not served
                    if not writer.transport.is_closing():
                        if not connection.idle:
                            writer.write(response(408, "request timeout\n"))
                        writer.close()
                    # A close waits for unsent bytes, which a client that does not read never
                    # takes: end the read now, and the handler's close_writer aborts after its
                    # grace.
                    reader.feed_eof()
            except Exception:  # a bug here must not switch every deadline off
                log.exception("http: the request deadline sweep failed")

    async def _handle(self, registry: PublishRegistry, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        peer = peer_name(writer)
        ip = peer_ip(writer)
        writer.transport.set_write_buffer_limits(high=self.settings.write_buffer_high)
        connection = Connection(reader, writer, ip)
        try:
            while connection.served < self.settings.keepalive_requests:
                request = await self._read_request(connection, peer)
                if request is None:
                    break
                exchange = Exchange(request, reader, writer, peer=peer, ip=ip,
                                    registry=registry, connection=connection,
                                    keep_alive=self._may_keep(request, connection.served))
                connection.served += 1
                await self._dispatch(exchange)
                if not exchange.keep_alive or self.listener.stopping:
                    break
                # A client that sends requests but does not read the answers is cut. (Most
                # answers fit the socket: no wait, and no timer to arm.)
                transport = writer.transport
                if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[0]:
                    async with asyncio.timeout(self.settings.stall_timeout):
                        await writer.drain()
        except (ConnectionError, OSError, TimeoutError):
            pass
        except Exception:  # a bug in a handler: say so and close; the node goes on
            log.exception("http handler failed peer=%s", peer)
        finally:
            await close_writer(writer)

    def _shortcut(self, reader: asyncio.StreamReader, data: bytes) -> bool:
        """Answer ``data`` at once if it is all of one request an HLS player makes on a
        kept-alive connection (its playlist poll, a segment), nothing has to be waited for, and
        the connection's handler waits idle for it: no task switch and no ``Exchange`` for the
        bulk of a player's requests. A Low-Latency blocking reload is held instead, without a
        task (``HlsRoutes.hold``): reading pauses until it is answered, so a next request is
        answered after it. Anything else (or when in doubt) returns False and the handler
        reads it as usual: the first request of a connection, one that needs its
        authorization asked (see ``HlsRoutes.answer_now``), a head in pieces, pipelined
        requests, a client behind on reading, a stopping node."""
        connection = self._waiting.get(reader)
        if connection is None or not connection.idle or unread(reader) or len(data) < 4 \
                or data.find(b"\r\n\r\n") != len(data) - 4 or self.listener.stopping:
            return False
        transport = connection.writer.transport
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[0]:
            return False  # the handler waits for it to drain (and cuts a stalled client)
        parsed = self._parsed.get(data)
        if parsed is None:
            try:
                request = parse_request(data[:-4])
            except ProtocolError:
                return False  # the handler answers 400
            found = self.router.resolve(request.method, request.path)
            if type(found) is not Resolved or found.handler not in self._quick:
                return False
            parsed = (request, found)
            if len(data) <= _PARSED_HEAD:
                if len(self._parsed) >= _PARSED:
                    self._parsed.clear()
                self._parsed[data] = parsed
        request, found = parsed
        if not self._may_keep(request, connection.served):
            return False
        hls = self.hls
        assert hls is not None
        answer: tuple[bytes, bytes] | bool | None
        if "_HLS_msn" in request.query:  # a Low-Latency blocking reload
            answer = hls.hold(found.handler, request, found.params, connection, self._deliver)
            if answer is True:  # answered by ``deliver``; the next request waits for it
                connection.held = True
                cast(asyncio.Transport, transport).pause_reading()
                connection.due = self._now() + self.settings.keepalive_timeout + \
                    hls.hls.settings.blocking_wait
                return True
        else:
            answer = hls.answer_now(found.handler, request, found.params, connection)
        if answer is None or answer is False:
            return False
        # ``_write``, inlined: this runs for nearly every request of every player
        prefix, body = answer
        head = whole_head(prefix, len(body))
        transport.writelines((head,) if request.method == "HEAD" else (head, body))
        connection.served += 1
        connection.due = self._now() + self.settings.keepalive_timeout
        return True

    def _write(self, connection: Connection, head_only: bool, prefix: bytes,
               body: bytes) -> None:
        """A kept-alive answer (``head_prefix`` and body) from the shortcut: the connection
        then waits for its next request."""
        head = whole_head(prefix, len(body))
        connection.writer.transport.writelines((head,) if head_only else (head, body))
        connection.served += 1
        connection.due = self._now() + self.settings.keepalive_timeout

    def _deliver(self, connection: Connection, head_only: bool, prefix: bytes,
                 body: bytes) -> None:
        """How a held request is answered (``HlsRoutes.hold``): the response, then reading
        again."""
        connection.held = False
        transport = cast(asyncio.Transport, connection.writer.transport)  # a socket's
        if transport.is_closing():  # the client went meanwhile
            return
        self._write(connection, head_only, prefix, body)
        if self.listener.stopping:  # the goodbye left it open for this answer: now idle
            connection.writer.close()
        else:
            transport.resume_reading()

    def _now(self) -> float:
        """The event loop's clock. The loop is looked up once: asking for the running loop
        costs a getpid() system call, and this runs for every request."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    def forget_grants(self) -> None:
        """The auth providers changed: kept-alive HLS players are authorized again."""
        if self.hls is not None:
            self.hls.forget_grants()

    def _may_keep(self, request: Request, served: int) -> bool:
        """Whether the connection may take another request after this one: a bodiless GET or
        HEAD that asks for it (HTTP/1.1 unless ``Connection: close``; HTTP/1.0 with
        ``Connection: keep-alive``), while the node is not stopping or draining."""
        if (request.method not in ("GET", "HEAD") or self.listener.stopping
                or self.admission.draining or served + 1 >= self.settings.keepalive_requests):
            return False
        headers = request.headers
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            return False
        connection = headers.get("connection", "").lower()
        if request.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    async def _read_request(self, connection: Connection, peer: str) -> Request | None:
        """The request head, or None once the client got its error (or went away). After its
        first request a connection is idle: kept-alive, waiting for its next request (closed
        quietly when none comes within ``keepalive_timeout``, or when the node stops)."""
        reader, writer = connection.reader, connection.writer
        connection.idle = idle = connection.served > 0
        connection.due = self._now() + (
            self.settings.keepalive_timeout if idle else self.settings.header_timeout)
        self._waiting[reader] = connection
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            writer.write(response(431, "request head too large\n"))
            return None
        except asyncio.IncompleteReadError:  # the peer went, or the sweep closed it (late)
            return None
        finally:
            late = self._waiting.pop(reader, None) is None
        if late:  # the head came in the turn the sweep timed it out: it got its 408 already
            return None
        try:
            return parse_request(head[:-4])
        except ProtocolError as exc:
            log.info("http bad request peer=%s error=%s", peer, exc)
            writer.write(response(400, f"{exc}\n"))
            return None

    async def _dispatch(self, exchange: Exchange) -> None:
        method = exchange.request.method
        if method == "OPTIONS":  # CORS preflight: players on other sites may fetch media
            parts = exchange.request.path.strip("/").split("/")
            webrtc = self.webrtc is not None and len(parts) in (3, 4) and \
                parts[2] in ("whep", "whip")
            exchange.respond(204, extra=_PREFLIGHT_WEBRTC if webrtc else _PREFLIGHT)
            return
        found = self.router.resolve(method, exchange.request.path)
        if isinstance(found, Resolved):
            await found.handler(exchange, found.params)
        elif isinstance(found, NotAllowed):
            exchange.respond(405, "method not allowed\n", extra={"Allow": ", ".join(found.allow)})
        elif method in ("GET", "HEAD"):
            exchange.respond(404, "not found\n")
        else:
            exchange.respond(405, "method not allowed\n", extra={"Allow": "GET, HEAD"})


class MetricsServer(HttpServer):
    """``GET /metrics`` (and the probes) on a port of its own (``--metrics-listen``), so a
    public Service or Ingress in front of the HTTP port does not expose it."""

    name = "metrics"

    def _routes(self) -> Router:
        router = Router()
        router.add("GET", "/metrics", self.metrics.serve)
        router.add("GET", LIVENESS_PATH, self.probes.liveness)
        router.add("GET", READINESS_PATH, self.probes.readiness)
        return router
