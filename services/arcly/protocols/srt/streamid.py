"""SRT stream ids: which stream a caller wants, to publish or to read, and its credentials.

Two conventions, so encoders set up for MediaMTX or SRS keep their settings:

- MediaMTX's ``publish:{app}/{stream}[:user:pass][:query]`` and ``read:{app}/{stream}…``
  (a ``?query`` after the path works too);
- the SRT access-control syntax (``#!::`` then comma-separated ``key=value``; SRS uses it):
  ``r`` the resource (``app/stream``), ``m`` the mode (``publish``, or ``request`` — the
  default — to read), ``u`` the user; every other pair is a credential (``key``, ``token``,
  ``expires``, ``jwt``…), as SRS reads ``secret=…,token=…``.

Credentials become the same query every other protocol's auth providers read: a MediaMTX
password is the stream's ``key``.

>>> parse("publish:live/cam1:alice:s3cret").credentials
{'user': 'alice', 'key': 's3cret'}
>>> request = parse("#!::r=live/cam1,m=publish,token=abc,expires=1999999999")
>>> (request.publish, str(request.key), request.credentials["token"])
(True, 'live/cam1', 'abc')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from arcly.engine import InvalidStreamKey, ProtocolError, StreamKey

MAX_LENGTH = 512  # SRT's own limit on a stream id


class StreamIdError(ProtocolError):
    """A stream id this server cannot take (malformed, unknown mode, bad stream key)."""


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """What a caller asked for: ``publish`` (else read) ``key``, with ``credentials``."""

    publish: bool
    key: StreamKey
    credentials: dict[str, str] = field(default_factory=dict)


def parse(streamid: str) -> StreamRequest:
    """The request a stream id makes; ``StreamIdError`` says what is wrong with it."""
    if len(streamid) > MAX_LENGTH:
        raise StreamIdError(f"stream id longer than {MAX_LENGTH} characters")
    if not streamid:
        raise StreamIdError("no stream id: use publish:APP/STREAM, read:APP/STREAM or "
                            "#!::r=APP/STREAM,m=publish")
    if streamid.startswith(("%23!::", "%23%21%3A%3A")):
        # ffmpeg sends the stream id as written in its URL, where "#" must be "%23"
        streamid = unquote(streamid)
    if streamid.startswith("#!::"):
        return _access_control(streamid[4:])
    return _mediamtx(streamid)


def _key(path: str) -> StreamKey:
    app, sep, stream = path.strip("/").partition("/")
    if not sep:
        raise StreamIdError(f"stream {path!r} is not APP/STREAM")
    try:
        return StreamKey(app, stream)
    except InvalidStreamKey as exc:
        raise StreamIdError(str(exc)) from None


def _access_control(text: str) -> StreamRequest:
    pairs: dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise StreamIdError(f"stream id item {item[:40]!r} is not KEY=VALUE")
        pairs[name] = value.strip()
    resource = pairs.pop("r", "")
    if not resource:
        raise StreamIdError("stream id has no resource (r=APP/STREAM)")
    mode = pairs.pop("m", "request")
    if mode not in ("request", "publish"):
        raise StreamIdError(f"stream id mode {mode!r} is not publish or request")
    for ignored in ("h", "s", "t"):  # host, session id, type: nothing to do with them here
        pairs.pop(ignored, None)
    if "u" in pairs:
        pairs["user"] = pairs.pop("u")
    path, _, query = resource.partition("?")
    credentials = dict(parse_qsl(query))
    credentials.update(pairs)
    return StreamRequest(mode == "publish", _key(path), credentials)


def _mediamtx(text: str) -> StreamRequest:
    action, sep, rest = text.partition(":")
    if not sep or action not in ("publish", "read"):
        # (the id itself is not repeated: after a typo it may hold a password)
        raise StreamIdError("stream id does not start with publish: or read: (or #!:: for "
                            "the access-control syntax)")
    rest, _, query = rest.partition("?")
    parts = rest.split(":")
    credentials: dict[str, str] = {}
    if len(parts) >= 3:
        credentials["user"], credentials["key"] = parts[1], parts[2]
    elif len(parts) == 2:
        raise StreamIdError("stream id credentials must be USER:PASS")
    if len(parts) >= 4:
        query = ":".join(parts[3:]) + ("&" + query if query else "")
    for name, value in parse_qsl(query):
        credentials.setdefault(name, value)
    return StreamRequest(action == "publish", _key(parts[0]), credentials)
