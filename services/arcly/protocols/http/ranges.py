"""Byte ranges (RFC 9110 section 14), sans-I/O: which part of a file a ``Range`` header asks for.

One range is served (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``); a header this server does not
serve — another unit, several ranges, a malformed one — is ignored and the whole file is sent
(RFC 9110 14.2 allows that). A range that starts past the end is unsatisfiable (416).

>>> parse_range("bytes=0-99", 1000)
ByteRange(start=0, stop=100)
>>> parse_range("bytes=-100", 1000).content_range(1000)
'bytes 900-999/1000'
>>> parse_range("bytes=0-1,5-6", 1000) is None
True
"""

from __future__ import annotations

from dataclasses import dataclass

from arcly.engine import ArclyError

_MAX_DIGITS = 18


class RangeNotSatisfiable(ArclyError):
    """The range starts at or past the end of the file (answer 416)."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    stop: int  # exclusive

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


def _number(text: str) -> int | None:
    text = text.strip(" \t")
    if not text or len(text) > _MAX_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range of a ``size``-byte file that ``header`` asks for; None: send it whole.
    Raises ``RangeNotSatisfiable``."""
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip(" \t").lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.partition("-")
    if not dash:
        return None
    first, last = _number(first_text), _number(last_text)
    if first_text.strip(" \t") == "":  # bytes=-n: the last n bytes
        if last is None:
            return None
        if last == 0 or size == 0:
            raise RangeNotSatisfiable(f"no last {last} bytes of a {size}-byte file")
        return ByteRange(max(size - last, 0), size)
    if first is None or (last_text.strip(" \t") and (last is None or last < first)):
        return None  # malformed: ignored
    if first >= size:
        raise RangeNotSatisfiable(f"byte {first} is past the end of a {size}-byte file")
    stop = size if last is None else min(last + 1, size)
    return ByteRange(first, stop)
