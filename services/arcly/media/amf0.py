"""AMF0 (Action Message Format 0), as RTMP commands and ``onMetaData`` use it.

Decoding maps AMF0 onto Python: number→float, boolean→bool, string→str, object and ECMA
array→dict, strict array→list, null→None, undefined→``UNDEFINED``, date→``Date``.
Every length is checked against the buffer; nesting is capped, so hostile input raises
``ProtocolError`` rather than exhausting memory or the stack.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from arcly.engine.errors import ProtocolError

MAX_DEPTH = 32

_NUMBER, _BOOLEAN, _STRING, _OBJECT, _MOVIECLIP, _NULL, _UNDEFINED, _REFERENCE = range(8)
_ECMA_ARRAY, _OBJECT_END, _STRICT_ARRAY, _DATE, _LONG_STRING, _UNSUPPORTED = range(8, 14)
_XML, _TYPED_OBJECT, _AVMPLUS = 15, 16, 17

_F64 = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class _Undefined:
    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = _Undefined()


@dataclass(frozen=True, slots=True)
class Date:
    millis: float
    timezone: int = 0


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolError(f"AMF0: truncated at byte {self.pos} (need {n} more)")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def utf8(self, n: int) -> str:
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"AMF0: invalid UTF-8 string at byte {self.pos - n}") from exc

    def short_string(self) -> str:
        (n,) = _U16.unpack(self.take(2))
        return self.utf8(n)

    def value(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise ProtocolError("AMF0: nesting too deep")
        marker = self.take(1)[0]
        if marker == _NUMBER:
            return _F64.unpack(self.take(8))[0]
        if marker == _BOOLEAN:
            return self.take(1)[0] != 0
        if marker == _STRING:
            return self.short_string()
        if marker == _OBJECT:
            return self.properties(depth)
        if marker == _NULL:
            return None
        if marker in (_UNDEFINED, _UNSUPPORTED):
            return UNDEFINED
        if marker == _ECMA_ARRAY:
            self.take(4)  # approximate count; the end marker is what counts
            return self.properties(depth)
        if marker == _STRICT_ARRAY:
            (count,) = _U32.unpack(self.take(4))
            if count > len(self.data) - self.pos:  # every value takes at least one byte
                raise ProtocolError(f"AMF0: strict array of {count} items exceeds the message")
            return [self.value(depth + 1) for _ in range(count)]
        if marker == _DATE:
            (millis,) = _F64.unpack(self.take(8))
            (tz,) = struct.unpack(">h", self.take(2))
            return Date(millis, tz)
        if marker in (_LONG_STRING, _XML):
            (n,) = _U32.unpack(self.take(4))
            return self.utf8(n)
        if marker == _TYPED_OBJECT:
            self.short_string()
            return self.properties(depth)
        raise ProtocolError(f"AMF0: unsupported type marker {marker} at byte {self.pos - 1}")

    def properties(self, depth: int) -> dict[str, Any]:
        props: dict[str, Any] = {}
        while True:
            name = self.short_string()
            if not name:
                if self.take(1)[0] != _OBJECT_END:
                    raise ProtocolError(f"AMF0: missing object end at byte {self.pos - 1}")
                return props
            props[name] = self.value(depth + 1)


def decode(data: bytes) -> list[Any]:
    """Decode every AMF0 value in ``data``."""
    reader = _Reader(data)
    values = []
    while reader.pos < len(data):
        values.append(reader.value())
    return values


def _encode_string(out: bytearray, s: str) -> None:
    raw = s.encode("utf-8")
    if len(raw) > 0xFFFF:
        out.append(_LONG_STRING)
        out += _U32.pack(len(raw))
    else:
        out.append(_STRING)
        out += _U16.pack(len(raw))
    out += raw


def _encode_props(out: bytearray, props: dict[str, Any], depth: int) -> None:
    for name, item in props.items():
        raw = name.encode("utf-8")
        if not raw or len(raw) > 0xFFFF:
            raise ValueError(f"AMF0: property name of {len(raw)} bytes")
        out += _U16.pack(len(raw))
        out += raw
        _encode_value(out, item, depth + 1)
    out += b"\x00\x00\x09"


def _encode_value(out: bytearray, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("AMF0: nesting too deep")
    if value is None:
        out.append(_NULL)
    elif value is UNDEFINED:
        out.append(_UNDEFINED)
    elif isinstance(value, bool):
        out.append(_BOOLEAN)
        out.append(1 if value else 0)
    elif isinstance(value, int | float):
        out.append(_NUMBER)
        out += _F64.pack(float(value))
    elif isinstance(value, str):
        _encode_string(out, value)
    elif isinstance(value, Date):
        out.append(_DATE)
        out += _F64.pack(value.millis)
        out += struct.pack(">h", value.timezone)
    elif isinstance(value, EcmaArray):
        out.append(_ECMA_ARRAY)
        out += _U32.pack(len(value))
        _encode_props(out, value, depth)
    elif isinstance(value, dict):
        out.append(_OBJECT)
        _encode_props(out, value, depth)
    elif isinstance(value, list | tuple):
        out.append(_STRICT_ARRAY)
        out += _U32.pack(len(value))
        for item in value:
            _encode_value(out, item, depth + 1)
    else:
        raise TypeError(f"AMF0: cannot encode {type(value).__name__}")


class EcmaArray(dict[str, Any]):
    """A dict encoded as an AMF0 ECMA array (what ``onMetaData`` uses) instead of an object."""


def encode(*values: Any) -> bytes:
    """Encode ``values`` one after another."""
    out = bytearray()
    for value in values:
        _encode_value(out, value, 0)
    return bytes(out)
