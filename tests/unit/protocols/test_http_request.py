from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arcly.engine import ProtocolError
from arcly.protocols.http.request import parse_request


def test_parses_a_flv_request() -> None:
    req = parse_request(b"GET /live/cam.flv?token=a%20b HTTP/1.1\r\nHost: x\r\nUser-Agent: ffmpeg")
    assert (req.method, req.path, req.query, req.headers["host"]) == (
        "GET", "/live/cam.flv", {"token": "a b"}, "x")


@pytest.mark.parametrize("head", [
    b"GET /x", b"GET x HTTP/1.1", b"GET /x HTTP/2.0", b"G T /x HTTP/1.1",
    b"GET /x HTTP/1.1\r\nbad header", b"GET /%00 HTTP/1.1", b"GET /x HTTP/1.1\r\n: v",
    # Framing a proxy could read differently (smuggling on a kept-alive connection):
    b"GET /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 0",
    b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\ntransfer-encoding: identity",
    b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b", b"GET /x HTTP/1.1\r\nX-A: 1\x00",
    b"GET /a%aa HTTP/1.1", b"GET /x HTTP/1.1\r\nX A: 1", b"GET /x HTTP/1.1\r\n X-A: 1",
    b"GET /x\x7f HTTP/1.1", b"GET /x HTTP/1.1\r\nX-A: a\rb",
])
def test_malformed_heads_are_refused(head: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_request(head)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    try:
        parse_request(data)
    except ProtocolError:
        pass
