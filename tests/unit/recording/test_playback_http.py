"""Recording playback through the node's HTTP listener, in-process over loopback: the listing
and its API token, byte ranges, HLS VOD (recorded and made from the FLV), playback windows,
auth, bad parameters and paths that must not leave the recordings root."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from arcly.auth.providers import StaticKeys
from arcly.engine import AuthProvider, Engine, EngineConfig, FrameKind, ShutdownToken
from arcly.media import amf0, flv
from arcly.media.flv import make_frame
from arcly.protocols.http import HttpServer
from arcly.protocols.listener import Admission
from arcly.recording import FilesystemStorage, RecordingManager
from tests.support.wait import eventually
from tests.unit.recording.test_playback_index import (
    AAC_HEADER,
    AVC_HEADER,
    KEY,
    T0,
    Layout,
    write_recording,
)

FIRST, SECOND = "20270115-080000-1", "20270115-080011-2"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        document: dict[str, object] = json.loads(self.body)
        return document

    @property
    def text(self) -> str:
        return self.body.decode()


Request = Callable[..., Awaitable[Reply]]


async def _request(port: int, method: str, path: str, headers: dict[str, str]) -> Reply:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *header_lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in header_lines if line)
    body = b"" if method == "HEAD" else await asyncio.wait_for(reader.read(), 5)
    writer.close()
    if "Content-Length" in fields and method != "HEAD":
        assert len(body) == int(fields["Content-Length"])
    return Reply(int(status_line.split()[1]), fields, body)


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Request]]]:
    """Start a listener over recordings in ``tmp_path`` (two 10 s ones, 1 s apart)."""
    write_recording(tmp_path, T0, Layout(10), session=1)
    write_recording(tmp_path, T0 + 11, Layout(10), session=2)
    stops: list[tuple[ShutdownToken, asyncio.Task[None]]] = []

    async def start(*, api_token: str = "", auth: AuthProvider | None = None,
                    recording: bool = True) -> Request:
        engine = Engine(EngineConfig(idle_timeout=None), auth=auth)
        manager = RecordingManager(FilesystemStorage(tmp_path)) if recording else None
        server = HttpServer("127.0.0.1", 0, engine=engine, admission=Admission(),
                            api_token=api_token, recordings=manager)
        token = ShutdownToken()
        stops.append((token, asyncio.create_task(engine.serve([server], token))))
        await asyncio.wait_for(server.listener.ready.wait(), 10)
        port = server.listener.addresses[0][1]

        async def request(method: str, path: str, **headers: str) -> Reply:
            return await _request(port, method, path, headers)

        return request

    try:
        yield start
    finally:
        for token, task in stops:
            token.cancel()
            await asyncio.wait_for(task, 10)


def _file(root: Path, name: str) -> bytes:
    return (root / "live" / "cam" / name).read_bytes()


# -- the API ------------------------------------------------------------------------------------


async def test_the_listing_shows_each_recording_and_needs_the_api_token_when_set(
        serve: Callable[..., Awaitable[Request]], tmp_path: Path) -> None:
    request = await serve(api_token="s3cret")
    refused = await request("GET", "/api/v1/recordings/live/cam")
    assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    listed = (await request("GET", "/api/v1/recordings/live/cam",
                            Authorization="Bearer s3cret")).json()
    recordings = listed["recordings"]
    assert isinstance(recordings, list) and len(recordings) == 2
    first = recordings[0]
    assert first == {
        "name": f"{FIRST}.flv", "start": "2027-01-15T08:00:00.000Z",
        "duration": first["duration"], "size": len(_file(tmp_path, f"{FIRST}.flv")),
        "format": "flv", "live": False, "hls": "generated",
        "url": f"/recordings/live/cam/{FIRST}.flv",
        "hls_url": f"/recordings/live/cam/{FIRST}/index.m3u8",
        "playback_url": "/playback/live/cam.flv?start=2027-01-15T08:00:00.000Z&duration=11"}
    assert first["duration"] == pytest.approx(10.0, abs=0.05)
    assert recordings[1]["start"] == "2027-01-15T08:00:11.000Z"
    streams = (await request("GET", "/api/v1/recordings", Authorization="Bearer s3cret")).json()
    assert streams["streams"] == [{"key": "live/cam", "recordings": 2,
                                   "bytes": sum(r["size"] for r in recordings),  # type: ignore
                                   "latest": "2027-01-15T08:00:11.000Z",
                                   "url": "/api/v1/recordings/live/cam"}]
    for path in ("/api/v1/recordings/live/none", "/api/v1/recordings/bad%20app/x"):
        reply = await request("GET", path, Authorization="Bearer s3cret")
        assert reply.status in (200, 404) and reply.json().get("recordings", []) == []


async def test_a_node_that_does_not_record_says_so(
        serve: Callable[..., Awaitable[Request]]) -> None:
    request = await serve(recording=False)
    reply = await request("GET", "/api/v1/recordings/live/cam")
    assert (reply.status, reply.json()) == (404, {"error": "recording is off on this node"})
    assert (await request("GET", f"/recordings/live/cam/{FIRST}.flv")).status == 404


# -- files and ranges ---------------------------------------------------------------------------


async def test_a_recording_is_served_whole_or_by_range(
        serve: Callable[..., Awaitable[Request]], tmp_path: Path) -> None:
    request = await serve()
    data = _file(tmp_path, f"{FIRST}.flv")
    path = f"/recordings/live/cam/{FIRST}.flv"
    whole = await request("GET", path)
    assert (whole.status, whole.body) == (200, data)
    assert whole.headers["Content-Type"] == "video/x-flv"
    assert whole.headers["Accept-Ranges"] == "bytes" and "ETag" in whole.headers
    part = await request("GET", path, Range="bytes=100-4195")
    assert (part.status, part.body) == (206, data[100:4196])
    assert part.headers["Content-Range"] == f"bytes 100-4195/{len(data)}"
    tail = await request("GET", path, Range="bytes=-10")
    assert (tail.status, tail.body) == (206, data[-10:])
    beyond = await request("GET", path, Range=f"bytes={len(data)}-")
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"
    stale = await request("GET", path, Range="bytes=0-9", **{"If-Range": '"other"'})
    assert (stale.status, stale.body) == (200, data), "If-Range mismatch: the whole file"
    fresh = await request("GET", path, Range="bytes=0-9", **{"If-Range": whole.headers["ETag"]})
    assert (fresh.status, fresh.body) == (206, data[:10])
    head = await request("HEAD", path, Range="bytes=0-9")
    assert head.status == 206 and head.headers["Content-Length"] == "10"


async def test_paths_outside_the_recordings_are_never_served(
        serve: Callable[..., Awaitable[Request]], tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-secret"
    outside.mkdir()
    (outside / "index.m3u8").write_text("#EXTM3U\nsecret.ts\n")
    (outside / "x.flv").write_bytes(b"FLV secret")
    folder = tmp_path / "live" / "cam"
    (folder / "20270115-090000-7.flv").symlink_to(outside / "x.flv")
    (folder / "20270115-090000-8").symlink_to(outside)
    request = await serve()
    for path in ("/recordings/live/cam/..%2F..%2F..%2Fetc%2Fpasswd",
                 "/recordings/live/cam/../../x.flv", "/recordings/live/cam/.hidden.flv",
                 "/recordings/live/..%2Fcam/x.flv", "/recordings/..%2F../cam/x.flv",
                 "/recordings/live/cam/20270115-090000-7.flv",
                 "/recordings/live/cam/20270115-090000-8/index.m3u8",
                 f"/recordings/live/cam/{FIRST}/..%2F{SECOND}.flv",
                 f"/recordings/live/cam/{FIRST}/.index.m3u8",
                 f"/recordings/live/cam/{FIRST}/notes.txt"):
        reply = await request("GET", path)
        assert reply.status in (400, 404), (path, reply.status)
        assert b"secret" not in reply.body


# -- HLS VOD --------------------------------------------------------------------------------------


async def test_hls_vod_is_made_from_the_flv_with_the_credentials_carried_on(
        serve: Callable[..., Awaitable[Request]]) -> None:
    request = await serve(auth=StaticKeys(play_keys=frozenset({"viewer"})))
    base = f"/recordings/live/cam/{FIRST}"
    assert (await request("GET", f"{base}/index.m3u8")).status == 403
    playlist = await request("GET", f"{base}/index.m3u8?key=viewer")
    assert playlist.status == 200
    assert playlist.headers["Content-Type"] == "application/vnd.apple.mpegurl"
    uris = [line for line in playlist.text.splitlines() if not line.startswith("#")]
    assert uris == [f"0-{n}.ts?key=viewer" for n in range(5)]
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist.text and "#EXT-X-ENDLIST" in playlist.text
    segment = await request("GET", f"{base}/{uris[2]}")
    assert segment.status == 200 and segment.headers["Content-Type"] == "video/mp2t"
    assert len(segment.body) % 188 == 0 and segment.body[0] == 0x47
    assert (await request("GET", f"{base}/0-9.ts?key=viewer")).status == 404
    assert (await request("GET", f"{base}/0-2.ts")).status == 403


async def test_a_recorded_hls_vod_is_served_from_its_folder(
        serve: Callable[..., Awaitable[Request]], tmp_path: Path) -> None:
    folder = tmp_path / "live" / "cam" / SECOND
    folder.mkdir()
    (folder / "index.m3u8").write_text('#EXTM3U\n#EXT-X-MAP:URI="init-ab.mp4"\n#EXTINF:2.000,\n'
                                       "5-0.m4s\n#EXT-X-ENDLIST\n")
    (folder / "init-ab.mp4").write_bytes(b"\x00\x00\x00\x08ftyp")
    (folder / "5-0.m4s").write_bytes(bytes(range(256)) * 8)
    request = await serve()
    listed = (await request("GET", "/api/v1/recordings/live/cam")).json()
    assert [r["hls"] for r in listed["recordings"]] == ["generated", "recorded"]  # type: ignore
    base = f"/recordings/live/cam/{SECOND}"
    playlist = await request("GET", f"{base}/index.m3u8?key=k")
    assert 'URI="init-ab.mp4?key=k"' in playlist.text and "5-0.m4s?key=k" in playlist.text
    part = await request("GET", f"{base}/5-0.m4s", Range="bytes=0-15")
    assert (part.status, part.body) == (206, bytes(range(16)))
    assert part.headers["Content-Type"] == "video/iso.segment"
    assert (await request("GET", f"{base}/init-ab.mp4")).headers["Content-Type"] == "video/mp4"


# -- playback windows -----------------------------------------------------------------------------


async def test_a_playback_window_across_recordings_is_one_flv(
        serve: Callable[..., Awaitable[Request]]) -> None:
    request = await serve()
    reply = await request("GET", "/playback/live/cam.flv?start=2027-01-15T08:00:07Z&duration=5")
    assert reply.status == 200 and reply.headers["Content-Type"] == "video/x-flv"
    tags, rest = flv.parse_tags(reply.body, flv.parse_header(reply.body))
    assert rest == len(reply.body)
    duration = amf0.decode(tags[0].body)[1]["duration"]
    assert 5.0 <= duration < 5.0 + 2.0, "the window, from the keyframe before its start"
    video = [t for t in tags if t.tag_type == flv.TAG_VIDEO]
    assert flv.is_video_config(video[0].body) and flv.is_video_keyframe(video[1].body)
    assert max(t.timestamp for t in tags) < duration * 1000


@pytest.mark.parametrize(("query", "status", "message"), [
    ("", 400, "start is required"),
    ("?start=2027-01-15T08:00:07&duration=5", 400, "needs a time zone"),
    ("?start=2027-01-15T08:00:07Z&duration=-1", 400, "more than 0"),
    ("?start=2027-01-15T08:00:07Z", 400, "duration is required"),
    ("?start=2027-01-15T09:00:00Z&duration=5", 404, "no recording of live/cam covers"),
])
async def test_bad_or_uncovered_playback_windows_are_refused_clearly(
        serve: Callable[..., Awaitable[Request]], query: str, status: int, message: str) -> None:
    request = await serve()
    reply = await request("GET", f"/playback/live/cam.flv{query}")
    assert reply.status == status and message in reply.text


async def test_playback_needs_play_credentials_when_the_app_needs_them(
        serve: Callable[..., Awaitable[Request]]) -> None:
    request = await serve(auth=StaticKeys(play_keys=frozenset({"viewer"})))
    window = "start=2027-01-15T08:00:07Z&duration=5"
    for query in (window, f"{window}&key=wrong"):
        refused = await request("GET", f"/playback/live/cam.flv?{query}")
        assert refused.status == 403 and "key" in refused.text
    assert (await request("GET", f"/recordings/live/cam/{FIRST}.flv")).status == 403
    allowed = await request("GET", f"/playback/live/cam.flv?{window}&key=viewer")
    assert allowed.status == 200 and allowed.body.startswith(b"FLV")


async def test_a_recording_being_written_is_listed_live_with_an_event_playlist(
        tmp_path: Path) -> None:
    manager = RecordingManager(FilesystemStorage(tmp_path))
    engine = Engine(EngineConfig(idle_timeout=None), observer=manager)
    server = HttpServer("127.0.0.1", 0, engine=engine, admission=Admission(),
                        recordings=manager)
    token = ShutdownToken()
    task = asyncio.create_task(engine.serve([server, manager], token))
    await asyncio.wait_for(server.listener.ready.wait(), 10)
    port = server.listener.addresses[0][1]

    async def listing() -> list[dict[str, object]]:
        reply = await _request(port, "GET", "/api/v1/recordings/live/cam", {})
        return reply.json()["recordings"]  # type: ignore[return-value]

    try:
        handle = await engine.start_publish(KEY)
        await eventually(lambda: KEY in manager.recorders)  # recording from the first frame
        for ts, tag_type, body in [(0, flv.TAG_VIDEO, AVC_HEADER), (0, flv.TAG_AUDIO, AAC_HEADER),
                                   *Layout(6).events()]:
            handle.publish_frame(make_frame(FrameKind(tag_type), ts, body))
        live = await eventually(lambda: _live_long_enough(listing), timeout=10)
        assert live["live"] is True and live["hls"] == "generated"
        playlist = await _request(port, "GET", f"{live['hls_url']}", {})
        assert "#EXT-X-PLAYLIST-TYPE:EVENT" in playlist.text
        assert "#EXT-X-ENDLIST" not in playlist.text, "still being written"
        await engine.end_publish(KEY, "publisher disconnected")
        done = await eventually(lambda: _finished(listing), timeout=10)
        assert done["duration"] == pytest.approx(6.0, abs=0.05)
        playlist = await _request(port, "GET", f"{done['hls_url']}", {})
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist.text and "#EXT-X-ENDLIST" in playlist.text
    finally:
        token.cancel()
        await asyncio.wait_for(task, 10)


async def _live_long_enough(
        listing: Callable[[], Awaitable[list[dict[str, object]]]]) -> dict[str, object] | None:
    found = await listing()
    return found[0] if found and found[0]["live"] and \
        float(found[0]["duration"]) > 3.0 else None  # type: ignore[arg-type]


async def _finished(
        listing: Callable[[], Awaitable[list[dict[str, object]]]]) -> dict[str, object] | None:
    found = await listing()
    return found[0] if found and not found[0]["live"] else None
