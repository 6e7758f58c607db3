"""The parsers of recording playback requests: byte ranges (RFC 9110 14), playback windows, and
the credentials a recorded playlist carries on to its URIs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from arcly.protocols.http.ranges import ByteRange, RangeNotSatisfiable, parse_range
from arcly.protocols.http.recordings import parse_window, rfc3339, with_query


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=0-99", ByteRange(0, 100)),
    ("bytes=100-", ByteRange(100, 1000)),
    ("bytes=-100", ByteRange(900, 1000)),
    ("bytes=-5000", ByteRange(0, 1000)),       # more than the file: all of it
    ("bytes=990-5000", ByteRange(990, 1000)),  # past the end: up to the end
    ("bytes=999-999", ByteRange(999, 1000)),
    ("Bytes = 5-9", ByteRange(5, 10)),
])
def test_a_single_range_is_what_the_client_asked_for(header: str, expected: ByteRange) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", [
    None, "", "bytes=", "bytes=-", "bytes=9-5", "bytes=a-b", "bytes=1-2-3", "items=0-9",
    "bytes=0-1,5-6", "bytes=+1-2", "bytes=0x10-", "bytes=" + "9" * 30 + "-",
])
def test_a_range_we_do_not_serve_is_ignored_and_the_whole_file_sent(header: str | None) -> None:
    assert parse_range(header, 1000) is None


@pytest.mark.parametrize(("header", "size"), [
    ("bytes=1000-", 1000), ("bytes=1000-2000", 1000), ("bytes=-0", 1000), ("bytes=0-", 0),
    ("bytes=-10", 0),
])
def test_a_range_past_the_end_is_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**6))
def test_a_satisfiable_range_always_lies_inside_the_file(first: int, last: int, size: int) -> None:
    for header in (f"bytes={first}-{last}", f"bytes={first}-", f"bytes=-{last}"):
        try:
            found = parse_range(header, size)
        except RangeNotSatisfiable:
            continue
        if found is not None:
            assert 0 <= found.start < found.stop <= size
            assert found.content_range(size) == f"bytes {found.start}-{found.stop - 1}/{size}"


@given(st.text(max_size=40))
def test_any_range_header_parses_or_is_refused_cleanly(header: str) -> None:
    try:
        parse_range(header, 500)
    except RangeNotSatisfiable:
        pass


def test_playback_windows_take_rfc3339_times_with_a_zone() -> None:
    assert parse_window({"start": "2027-01-15T08:00:00Z", "duration": "5"}) == \
        (1_800_000_000.0, 5.0)
    assert parse_window({"start": "2027-01-15T09:00:00.5+01:00", "duration": "0.5"}) == \
        (1_800_000_000.5, 0.5)
    # An unescaped "+" in a query string arrives as a space.
    assert parse_window({"start": "2027-01-15T09:00:00 01:00", "duration": "1"})[0] == \
        1_800_000_000.0
    assert rfc3339(1_800_000_000.25) == "2027-01-15T08:00:00.250Z"


@pytest.mark.parametrize(("query", "message"), [
    ({}, "start is required"),
    ({"start": "yesterday", "duration": "5"}, "not an RFC 3339 time"),
    ({"start": "2027-01-15T08:00:00", "duration": "5"}, "needs a time zone"),
    ({"start": "2027-01-15T08:00:00Z"}, "duration is required"),
    ({"start": "2027-01-15T08:00:00Z", "duration": "five"}, "not a number"),
    ({"start": "2027-01-15T08:00:00Z", "duration": "0"}, "more than 0"),
    ({"start": "2027-01-15T08:00:00Z", "duration": "nan"}, "more than 0"),
    ({"start": "2027-01-15T08:00:00Z", "duration": "1e9"}, "at most 86400"),
])
def test_bad_playback_windows_say_what_is_wrong(query: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(query)


def test_a_recorded_playlist_carries_the_credentials_to_every_uri() -> None:
    playlist = ("#EXTM3U\n#EXT-X-MAP:URI=\"init-1.mp4\"\n#EXTINF:2.000,\n1-0.m4s\n"
                "#EXT-X-ENDLIST\n")
    assert with_query(playlist, "?key=k") == (
        "#EXTM3U\n#EXT-X-MAP:URI=\"init-1.mp4?key=k\"\n#EXTINF:2.000,\n1-0.m4s?key=k\n"
        "#EXT-X-ENDLIST\n")
    assert with_query(playlist, "") == playlist
