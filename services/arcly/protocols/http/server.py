"""The node's HTTP listener: reads one request head per connection and routes it.

Every route is one line in ``HttpServer._routes``; its handler lives in the module of its
concern (``flv``, ``hls``, ``api``, ``pages``, ``probes``). Accepting, the connection caps and
shutdown are the shared ``Listener``'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from arcly.engine import CloseReason, Engine, ProtocolError, PublishRegistry, ShutdownToken
from arcly.hls.service import HlsService
from arcly.protocols.listener import (
    Admission,
    Listener,
    ListeningHandler,
    close_writer,
    peer_ip,
    peer_name,
)

from .api import ManagementApi
from .exchange import Exchange, response
from .flv import FlvPlayback
from .hls import HlsRoutes
from .metrics import MetricsRoute
from .pages import serve_player, serve_static, serve_status
from .probes import LIVENESS_PATH, READINESS_PATH, Probes
from .request import MAX_HEAD, Request, parse_request
from .router import NotAllowed, Resolved, Router
from .settings import HttpSettings

log = logging.getLogger("arcly.http")

_PREFLIGHT = {"Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
              "Access-Control-Allow-Headers": "*"}


class HttpServer(ListeningHandler):
    """HTTP-FLV, HLS, the management API, pages and probes on one listener."""

    name = "http"

    def __init__(self, host: str, port: int, settings: HttpSettings | None = None, *,
                 engine: Engine, hls: HlsService | None = None,
                 admission: Admission | None = None,
                 node: Callable[[], dict[str, Any]] = dict, api_token: str = "",
                 metrics: Callable[[], bytes] | None = None) -> None:
        self.settings = settings or HttpSettings()
        self.admission = admission or Admission()
        self.listener = Listener(self.name, host, port, self.admission, read_limit=MAX_HEAD,
                                 backlog=self.admission.limits.listen_backlog)
        self.flv = FlvPlayback(self.settings, self.admission)
        self.hls = HlsRoutes(hls, self.admission) if hls is not None else None
        self.api = ManagementApi(engine, self.admission, node=node, token=api_token)
        self.probes = Probes(self.listener, self.admission)
        self.metrics = MetricsRoute(metrics)
        self.router = self._routes()

    def _routes(self) -> Router:
        router = Router()
        router.add("*", "/api/v1/{path*}", self.api.handle)
        router.add("GET", LIVENESS_PATH, self.probes.liveness)
        router.add("GET", READINESS_PATH, self.probes.readiness)
        router.add("GET", "/metrics", self.metrics.serve)
        router.add("GET", "/{app}/{stream}.flv", self.flv.play)
        if self.hls is not None:
            router.add("GET", "/{app}/{stream}/index.m3u8", self.hls.playlist)
            router.add("GET", "/{app}/{stream}/{segment}.ts", self.hls.segment)
        # Pages come after the media routes, so apps may be named "play" or "static".
        router.add("GET", "/", serve_status)
        router.add("GET", "/static/{name}", serve_static)
        router.add("GET", "/play/{app}/{stream}", serve_player)
        return router

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._handle(registry, reader, writer)

        async def goodbye() -> None:
            self.flv.close_all(CloseReason.SHUTDOWN)

        await self.listener.serve(on_client, shutdown, goodbye=goodbye)

    async def _handle(self, registry: PublishRegistry, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        peer = peer_name(writer)
        writer.transport.set_write_buffer_limits(high=self.settings.write_buffer_high)
        try:
            request = await self._read_request(reader, writer, peer)
            if request is not None:
                await self._dispatch(Exchange(request, reader, writer, peer=peer,
                                              ip=peer_ip(writer), registry=registry))
        except (ConnectionError, OSError):
            pass
        finally:
            await close_writer(writer)

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            peer: str) -> Request | None:
        """The request head, or None once the client got its error (or went away)."""
        try:
            async with asyncio.timeout(self.settings.header_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            writer.write(response(431, "request head too large\n"))
            return None
        except asyncio.IncompleteReadError:
            return None
        except TimeoutError:
            writer.write(response(408, "request timeout\n"))
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
            exchange.respond(204, extra=_PREFLIGHT)
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
