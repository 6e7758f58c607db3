"""One request and its response: what every HTTP handler gets.

Responses are whole (``Content-Length``) except streamed media, which writes its own head and
keeps the connection to itself until it ends (HTTP-FLV). A whole response to a bodiless GET or
HEAD keeps the connection open for the next request (HTTP/1.1 keep-alive: a Low-Latency HLS
player asks several times a second); every response allows any origin (players run on other
sites).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

from arcly.engine import (
    Action,
    AuthError,
    AuthRequest,
    InvalidStreamKey,
    PublishRegistry,
    StreamKey,
)
from arcly.protocols.listener import Admission

from .request import Request

REASONS = {200: "OK", 201: "Created", 204: "No Content", 206: "Partial Content",
           400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 409: "Conflict", 411: "Length Required",
           413: "Content Too Large", 415: "Unsupported Media Type",
           416: "Range Not Satisfiable",
           422: "Unprocessable Content", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSON = "application/json"


def response(status: int, body: str | bytes = "", content_type: str = TEXT,
             extra: dict[str, str] | None = None, *, head_only: bool = False,
             keep_alive: bool = False) -> bytes:
    """A whole response's bytes (its head only for a HEAD request)."""
    head, payload = response_parts(status, body, content_type, extra, keep_alive=keep_alive)
    return head if head_only else head + payload


def response_parts(status: int, body: str | bytes = "", content_type: str = TEXT,
                   extra: dict[str, str] | None = None, *,
                   keep_alive: bool = False) -> tuple[bytes, bytes]:
    """A whole response's head and body (sent without joining them: media is not copied)."""
    payload = body.encode() if isinstance(body, str) else body
    prefix = head_prefix(status, content_type, extra, keep_alive=keep_alive)
    return whole_head(prefix, len(payload)), payload


def whole_head(prefix: bytes, length: int) -> bytes:
    """A ``head_prefix`` ended with the body's length."""
    return b"%sContent-Length: %d\r\n\r\n" % (prefix, length)


def head_prefix(status: int, content_type: str = TEXT, extra: dict[str, str] | None = None,
                *, keep_alive: bool = False) -> bytes:
    """A whole response's head up to its ``Content-Length`` line (which ends it): built once
    per shape, not once per request."""
    shape = (status, content_type, keep_alive, tuple(extra.items()) if extra else ())
    prefix = _PREFIXES.get(shape)
    if prefix is None:
        headers = {"Content-Type": content_type, "Cache-Control": "no-cache", **(extra or {})}
        prefix = response_head(status, headers, keep_alive=keep_alive)[:-2]
        if len(_PREFIXES) >= 1024:  # shapes with per-request values (Location, ETag): bounded
            _PREFIXES.clear()
        _PREFIXES[shape] = prefix
    return prefix


_PREFIXES: dict[tuple[object, ...], bytes] = {}


def response_head(status: int, headers: dict[str, str], *, keep_alive: bool = False) -> bytes:
    """A response head: the status line, ``headers``, then the connection and CORS headers
    every answer carries (a body of its own follows, e.g. a file streamed in chunks)."""
    headers = {"Connection": "keep-alive" if keep_alive else "close",
               "Access-Control-Allow-Origin": "*", **headers}
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Connection:
    """One client connection's state between its requests: how many it was answered, when
    the next head is due, and the plays it was allowed lately (see ``allow``)."""

    __slots__ = ("due", "grants", "held", "idle", "ip", "reader", "served", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ip: str = "") -> None:
        self.reader = reader
        self.writer = writer
        self.ip = ip
        self.served = 0       # requests answered
        self.due = 0.0        # loop time by which the next request head must have come
        self.idle = False     # waiting between requests (not for the first one)
        self.held = False     # its request is held by the HLS shortcut: answered later
        # key -> (credentials, until, epoch): a few keys (a browser's players share one
        # connection to a host), the oldest grant forgotten first
        self.grants: dict[StreamKey, tuple[dict[str, str], float, int]] = {}

    def allow(self, key: StreamKey, credentials: Mapping[str, str], until: float,
              epoch: int) -> None:
        """Remember that this connection may play ``key`` with ``credentials`` until the
        monotonic time ``until``, while the auth providers' ``epoch`` lasts (its next
        requests need not be authorized again)."""
        self.grants.pop(key, None)
        if len(self.grants) >= MAX_GRANTS:
            del self.grants[next(iter(self.grants))]
        self.grants[key] = (dict(credentials), until, epoch)

    def forget(self, app: str, stream: str) -> None:
        """Drop the grant of ``app/stream`` (its play is being asked again)."""
        for key in [k for k in self.grants if k.app == app and k.stream == stream]:
            del self.grants[key]

    def allowed(self, key: StreamKey, credentials: Mapping[str, str], epoch: int) -> bool:
        grant = self.grants.get(key)
        return (grant is not None and grant[0] == credentials and grant[2] == epoch
                and time.monotonic() < grant[1])


MAX_GRANTS = 8


class Exchange:
    """A parsed request, the connection it came on and the node's registry."""

    __slots__ = ("connection", "ip", "keep_alive", "peer", "reader", "registry", "request",
                 "writer")

    def __init__(self, request: Request, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, peer: str, ip: str,
                 registry: PublishRegistry, keep_alive: bool = False,
                 connection: Connection | None = None) -> None:
        self.connection = connection
        self.request = request
        self.reader = reader
        self.writer = writer
        self.peer = peer  # ip:port, for logs and sessions
        self.ip = ip
        self.registry = registry
        # The connection takes another request after this response (a handler that streams
        # turns it off: the connection is the stream's).
        self.keep_alive = keep_alive

    @property
    def head_only(self) -> bool:
        return self.request.method == "HEAD"

    def respond(self, status: int, body: str | bytes = "", content_type: str = TEXT,
                extra: dict[str, str] | None = None) -> None:
        """A whole response (no body on HEAD)."""
        head, payload = response_parts(status, body, content_type, extra,
                                       keep_alive=self.keep_alive)
        self.writer.writelines((head,) if self.head_only else (head, payload))

    def json(self, status: int, document: Any, extra: dict[str, str] | None = None) -> None:
        self.respond(status, json.dumps(document) + "\n", JSON, extra)


def refuse_while_draining(exchange: Exchange, admission: Admission) -> bool:
    """A draining node starts no new playback: answer 503 (try another node in a second) and
    return True."""
    if not admission.draining:
        return False
    exchange.respond(503, "node is draining\n", extra={"Retry-After": "1"})
    return True


_KEYS: dict[tuple[str, str], StreamKey] = {}


def stream_key(app: str, stream: str) -> StreamKey:
    """``StreamKey(app, stream)``, validated once per name (every request of every player
    names one); raises ``InvalidStreamKey``."""
    key = _KEYS.get((app, stream))
    if key is None:
        key = StreamKey(app, stream)
        if len(_KEYS) >= 4096:  # names come from clients: keep it bounded
            _KEYS.clear()
        _KEYS[app, stream] = key
    return key


async def authorize_play(exchange: Exchange, params: dict[str, str], protocol: str,
                         query: dict[str, str] | None = None) -> StreamKey | None:
    """The key named by ``params`` once the client may play it over ``protocol`` (``query``:
    the credentials, the request's own by default); else None, the refusal sent (404 for a bad
    key, 403 for auth)."""
    try:
        key = stream_key(params["app"], params["stream"])
        await exchange.registry.authorize(AuthRequest(
            Action.PLAY, key, protocol, exchange.peer,
            exchange.request.query if query is None else query))
    except InvalidStreamKey as exc:
        exchange.respond(404, f"{exc}\n")
        return None
    except AuthError as exc:
        exchange.respond(403, f"{exc}\n")
        return None
    return key
