"""A small router: method + path pattern → handler, first match wins.

A pattern is ``/``-separated segments:

- ``name`` — that literal segment;
- ``{name}`` — any one segment, captured;
- ``{name}.ext`` — one segment ending in ``.ext``, the part before it captured;
- ``{name*}`` — last only: the rest of the path (zero or more segments), captured joined.

Routes registered for ``GET`` answer ``HEAD`` too; ``*`` takes every method. Order matters:
media routes come before pages so an app may be called ``play`` or ``static``.

>>> router = Router()
>>> async def flv(exchange, params): ...
>>> router.add("GET", "/{app}/{stream}.flv", flv)
>>> router.resolve("HEAD", "/live/cam.flv").params
{'app': 'live', 'stream': 'cam'}
>>> router.resolve("POST", "/live/cam.flv").allow
('GET', 'HEAD')
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .exchange import Exchange

Handler = Callable[[Exchange, dict[str, str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Segment:
    literal: str | None = None  # a literal segment
    name: str = ""              # a capture
    suffix: str = ""            # {name}.ext: the ".ext"
    rest: bool = False          # {name*}

    @classmethod
    def parse(cls, text: str) -> _Segment:
        if not text.startswith("{"):
            return cls(literal=text)
        name, _, suffix = text[1:].partition("}")
        if name.endswith("*"):
            return cls(name=name[:-1], rest=True)
        return cls(name=name, suffix=suffix)


@dataclass(frozen=True, slots=True)
class Route:
    methods: frozenset[str]
    pattern: str
    handler: Handler
    segments: tuple[_Segment, ...]

    def match(self, parts: list[str]) -> dict[str, str] | None:
        """The captures, if ``parts`` match. The router only asks with as many parts as the
        pattern has segments (or, for a ``{name*}`` pattern, at least as many less one)."""
        params: dict[str, str] = {}
        for index, segment in enumerate(self.segments):
            if segment.rest:
                params[segment.name] = "/".join(parts[index:])
                return params
            part = parts[index]
            if segment.literal is not None:
                if part != segment.literal:
                    return None
            elif segment.suffix:
                if not part.endswith(segment.suffix):
                    return None
                params[segment.name] = part[:-len(segment.suffix)]
            else:
                params[segment.name] = part
        return params


class Resolved:
    """The handler of a path and its captures."""

    __slots__ = ("handler", "params")

    def __init__(self, handler: Handler, params: dict[str, str]) -> None:
        self.handler = handler
        self.params = params


@dataclass(frozen=True, slots=True)
class NotAllowed:
    """The path exists, not for this method: ``allow`` is what it takes."""

    allow: tuple[str, ...]


def split_path(path: str) -> list[str]:
    trimmed = path.strip("/")
    return trimmed.split("/") if trimmed else []


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []
        # The routes that can match a path of N segments, in the order they were added (a
        # player's request tries a few patterns, not every route of the node).
        self._by_length: dict[int, list[Route]] = {}
        self._longest = 0  # segments of the longest pattern

    def add(self, methods: str, pattern: str, handler: Handler) -> None:
        """Route ``methods`` (space-separated, or ``*``) on ``pattern`` to ``handler``."""
        wanted = set(methods.split())
        if "GET" in wanted:
            wanted.add("HEAD")
        segments = tuple(_Segment.parse(s) for s in split_path(pattern))
        if any(s.rest for s in segments[:-1]):
            raise ValueError(f"{pattern}: {{name*}} must be the last segment")
        self.routes.append(Route(frozenset(wanted), pattern, handler, segments))
        self._by_length.clear()
        self._longest = max(self._longest, len(segments))

    def _candidates(self, length: int) -> list[Route]:
        # Paths longer than every pattern can only match {name*} routes: one list for them
        # all (the cache holds a list per pattern length, whatever paths clients send).
        length = min(length, self._longest + 1)
        found = self._by_length.get(length)
        if found is None:
            found = self._by_length[length] = [
                r for r in self.routes if len(r.segments) == length
                or (r.segments and r.segments[-1].rest and len(r.segments) - 1 <= length)]
        return found

    def resolve(self, method: str, path: str) -> Resolved | NotAllowed | None:
        parts = split_path(path)
        allowed: set[str] = set()
        for route in self._candidates(len(parts)):
            params = route.match(parts)
            if params is None:
                continue
            if method in route.methods or "*" in route.methods:
                return Resolved(route.handler, params)
            allowed |= route.methods
        if allowed:
            order = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
            return NotAllowed(tuple(sorted(allowed, key=lambda m: (
                order.index(m) if m in order else len(order), m))))
        return None
