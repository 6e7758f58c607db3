"""SRT stream ids as MediaMTX and SRS users write them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arcly.engine import StreamKey
from arcly.protocols.srt.streamid import StreamIdError, StreamRequest, parse

KEY = StreamKey("live", "cam1")


@pytest.mark.parametrize(("streamid", "expected"), [
    ("publish:live/cam1", StreamRequest(True, KEY)),
    ("read:live/cam1", StreamRequest(False, KEY)),
    ("publish:live/cam1:alice:s3cret", StreamRequest(True, KEY, {"user": "alice",
                                                                 "key": "s3cret"})),
    ("read:live/cam1:bob:pw:token=t&expires=9", StreamRequest(
        False, KEY, {"user": "bob", "key": "pw", "token": "t", "expires": "9"})),
    ("publish:live/cam1?key=abc", StreamRequest(True, KEY, {"key": "abc"})),
    ("#!::r=live/cam1,m=publish", StreamRequest(True, KEY)),
    ("#!::r=live/cam1", StreamRequest(False, KEY)),  # no mode: read
    ("#!::m=request,r=live/cam1,u=carol,s=sess1,h=example.com", StreamRequest(
        False, KEY, {"user": "carol"})),
    ("#!::r=live/cam1,m=publish,secret=x,token=y,expires=1", StreamRequest(
        True, KEY, {"secret": "x", "token": "y", "expires": "1"})),
    ("#!::r=live/cam1?key=k,m=publish", StreamRequest(True, KEY, {"key": "k"})),
    ("%23!::r=live/cam1,m=publish", StreamRequest(True, KEY)),  # ffmpeg: sent as escaped
])
def test_both_conventions(streamid: str, expected: StreamRequest) -> None:
    assert parse(streamid) == expected


@pytest.mark.parametrize(("streamid", "why"), [
    ("", "no stream id"),
    ("live/cam1", "does not start with publish: or read:"),
    ("play:live/cam1", "does not start with publish: or read:"),
    ("publish:cam1", "is not APP/STREAM"),
    ("publish:live/cam 1", "stream"),
    ("publish:live/cam1:alice", "USER:PASS"),
    ("#!::m=publish", "no resource"),
    ("#!::r=live/cam1,m=bidirectional", "is not publish or request"),
    ("#!::r=live/cam1,junk", "is not KEY=VALUE"),
    ("publish:live/" + "x" * 600, "longer than"),
])
def test_what_is_refused_says_why(streamid: str, why: str) -> None:
    with pytest.raises(StreamIdError, match=why):
        parse(streamid)


@given(st.text(max_size=600))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        parse(text)
    except StreamIdError:
        pass
