"""Stream keys: ``app/stream``, validated before they reach a path, a registry key or a log line."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidStreamKey

_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _check(kind: str, value: str) -> str:
    if not _PART.fullmatch(value):
        raise InvalidStreamKey(f"invalid {kind} name {value[:64]!r}")
    return value


@dataclass(frozen=True, slots=True)
class StreamKey:
    """``app/stream``. Both parts match ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``.

    >>> StreamKey.parse("live/cam1")
    StreamKey(app='live', stream='cam1')
    """

    app: str
    stream: str

    def __post_init__(self) -> None:
        _check("app", self.app)
        _check("stream", self.stream)

    @classmethod
    def parse(cls, text: str) -> StreamKey:
        app, sep, stream = text.partition("/")
        if not sep:
            raise InvalidStreamKey(f"stream key {text[:64]!r} is not app/stream")
        return cls(app, stream)

    def __str__(self) -> str:
        return f"{self.app}/{self.stream}"
