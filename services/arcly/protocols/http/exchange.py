"""One request and its response: what every HTTP handler gets.

Responses are whole (``Content-Length``) except streamed media, which writes its own head; every
response closes the connection (one request per connection, the way players use HTTP-FLV and
fetch HLS pieces) and allows any origin (players run on other sites).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from arcly.engine import PublishRegistry
from arcly.protocols.listener import Admission

from .request import Request

REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 409: "Conflict", 415: "Unsupported Media Type",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSON = "application/json"


def response(status: int, body: str | bytes = "", content_type: str = TEXT,
             extra: dict[str, str] | None = None, *, head_only: bool = False) -> bytes:
    """A whole response's bytes (its head only for a HEAD request)."""
    payload = body.encode() if isinstance(body, str) else body
    headers = {"Content-Type": content_type, "Content-Length": str(len(payload)),
               "Connection": "close", "Access-Control-Allow-Origin": "*",
               "Cache-Control": "no-cache", **(extra or {})}
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head if head_only else head + payload


class Exchange:
    """A parsed request, the connection it came on and the node's registry."""

    __slots__ = ("ip", "peer", "reader", "registry", "request", "writer")

    def __init__(self, request: Request, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, peer: str, ip: str,
                 registry: PublishRegistry) -> None:
        self.request = request
        self.reader = reader
        self.writer = writer
        self.peer = peer  # ip:port, for logs and sessions
        self.ip = ip
        self.registry = registry

    @property
    def head_only(self) -> bool:
        return self.request.method == "HEAD"

    def respond(self, status: int, body: str | bytes = "", content_type: str = TEXT,
                extra: dict[str, str] | None = None) -> None:
        """A whole response (no body on HEAD)."""
        self.writer.write(response(status, body, content_type, extra,
                                   head_only=self.head_only))

    def json(self, status: int, document: Any, extra: dict[str, str] | None = None) -> None:
        self.respond(status, json.dumps(document) + "\n", JSON, extra)


def refuse_while_draining(exchange: Exchange, admission: Admission) -> bool:
    """A draining node starts no new playback: answer 503 (try another node in a second) and
    return True."""
    if not admission.draining:
        return False
    exchange.respond(503, "node is draining\n", extra={"Retry-After": "1"})
    return True
