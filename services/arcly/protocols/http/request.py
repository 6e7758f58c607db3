"""Parsing an HTTP/1.x request head, sans-I/O, with hard limits."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode

from arcly.engine.errors import ProtocolError

MAX_HEAD = 16 * 1024
MAX_HEADERS = 64
_SINGLE = frozenset({"content-length", "transfer-encoding", "host"})
# RFC 9110 tokens (methods, header names), control characters: compiled once, not a Python
# loop per character (every request of every player goes through here).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch
_CONTROL = re.compile(r"[\x00-\x1f\x7f]").search
_BAD_VALUE = re.compile(r"[\r\n\x00]").search


class Request:
    """A parsed request head (a plain slotted class: one is built per request of every
    player, and a frozen dataclass costs three times as much to build)."""

    __slots__ = ("headers", "method", "path", "query", "version")

    def __init__(self, method: str, path: str, query: dict[str, str], version: str,
                 headers: dict[str, str] | None = None) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = {} if headers is None else headers

    def __repr__(self) -> str:
        return (f"Request({self.method!r}, {self.path!r}, query={self.query!r}, "
                f"version={self.version!r}, headers={self.headers!r})")


def parse_request(head: bytes) -> Request:
    """Parse everything up to (not including) the blank line that ends the head."""
    if len(head) > MAX_HEAD:
        raise ProtocolError(f"HTTP: request head over {MAX_HEAD} bytes")
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise ProtocolError("HTTP: undecodable request head") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise ProtocolError("HTTP: malformed request line")
    method, target, version = parts
    if not _TOKEN(method):
        raise ProtocolError("HTTP: malformed method")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise ProtocolError(f"HTTP: unsupported version {version[:16]!r}")
    if not target.startswith("/"):
        raise ProtocolError("HTTP: request target must be an absolute path")
    raw_path, _, raw_query = target.partition("?")
    try:
        path = unquote(raw_path, errors="strict") if "%" in raw_path else raw_path
    except UnicodeDecodeError:
        raise ProtocolError("HTTP: percent-encoded path is not UTF-8") from None
    if _CONTROL(path):
        raise ProtocolError("HTTP: control characters in path")
    headers: dict[str, str] = {}
    if len(lines) - 1 > MAX_HEADERS:
        raise ProtocolError(f"HTTP: more than {MAX_HEADERS} headers")
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN(name):
            raise ProtocolError("HTTP: malformed header line")
        if _BAD_VALUE(value):
            raise ProtocolError("HTTP: control characters in a header value")
        lowered = name.lower()
        if lowered in headers and lowered in _SINGLE:
            # Two framing headers could be read differently by a proxy in front (request
            # smuggling on a kept-alive connection): refuse.
            raise ProtocolError(f"HTTP: repeated {name} header")
        headers[lowered] = value.strip()
    query = dict(parse_qsl(raw_query, keep_blank_values=True)) if raw_query else {}
    return Request(method, path, query, version, headers)


def quote_query(query: dict[str, str]) -> str:
    """The query string again (for carrying a playlist's credentials to its segments)."""
    return urlencode(query)
