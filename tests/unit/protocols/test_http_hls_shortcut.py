"""The HTTP listener's shortcut for HLS players: a kept-alive player's playlist polls and
segment fetches are answered from the read callback, byte for byte as the handler answers
them, and only while nothing has to be asked or waited for."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from arcly.engine import (
    Action,
    AuthError,
    AuthGrant,
    AuthRequest,
    Engine,
    EngineConfig,
    PublishHandle,
    ShutdownToken,
    StreamKey,
)
from arcly.hls.service import HlsService, HlsSettings, HlsVariant
from arcly.protocols.http import HttpServer
from arcly.protocols.http import hls as hls_routes
from arcly.protocols.http import server as http_server
from arcly.protocols.listener import Admission
from tests.support.wait import eventually
from tests.unit.hls.test_service import session

KEY = StreamKey("live", "cam")
PLAYLIST = f"/{KEY}/index.m3u8"


class Switch:
    """Allows plays until told not to; counts what it was asked."""

    def __init__(self) -> None:
        self.allow = True
        self.asked: list[dict[str, str]] = []

    async def authorize(self, request: AuthRequest) -> AuthGrant | None:
        if request.action is Action.PLAY:
            self.asked.append(dict(request.query))
            if not self.allow:
                raise AuthError(f"play {request.key}: revoked")
        return None


@dataclass
class Node:
    server: HttpServer
    service: HlsService
    auth: Switch
    admission: Admission
    port: int
    segments: list[str]
    quick: list[Any]  # what the shortcut answered


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    auth = Switch()
    service = HlsService(HlsSettings(segment_seconds=2.0, variant=HlsVariant.MPEGTS,
                                     on_publish=True))
    engine = Engine(EngineConfig(segment_target=2.0, idle_timeout=None), observer=service,
                    auth=auth)
    admission = Admission()
    server = HttpServer("127.0.0.1", 0, engine=engine, hls=service, admission=admission)
    token = ShutdownToken()
    serving = asyncio.create_task(engine.serve([server, service], token))
    await asyncio.wait_for(server.listener.ready.wait(), 10)
    handle = await engine.start_publish(KEY, protocol="rtmp")
    await eventually(lambda: (s := engine.stream(KEY)) is not None and len(s.subscribers) == 1)
    for frame in session(4):
        handle.publish_frame(frame)
    playlist = await eventually(lambda: service.playlist_now(KEY))
    quick: list[Any] = []
    routes = server.hls
    assert routes is not None
    answer_now = routes.answer_now

    def spy(*args: Any) -> Any:
        answer = answer_now(*args)
        if answer is not None:
            quick.append(answer)
        return answer

    routes.answer_now = spy  # type: ignore[method-assign]
    segments = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    try:
        yield Node(server, service, auth, admission, server.listener.addresses[0][1], segments,
                   quick)
    finally:
        await engine.end_publish(KEY, "test over")
        token.cancel()
        await asyncio.wait_for(serving, 10)


async def _answer(reader: asyncio.StreamReader, head_only: bool = False) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    body = b"" if head_only else await asyncio.wait_for(reader.readexactly(length), 5)
    return head, body


def _get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\nUser-Agent: player\r\n\r\n".encode()


async def _alone(port: int, path: str, method: str = "GET") -> tuple[bytes, bytes]:
    """The answer on a connection of its own (its first request: the handler's)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_get(path, method))
        return await _answer(reader, method == "HEAD")
    finally:
        writer.close()


async def test_a_players_polls_are_answered_at_once_as_the_handler_answers_them(
        node: Node) -> None:
    segment = f"/{KEY}/{node.segments[-1]}"
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        answers = []
        for path, method in ((PLAYLIST, "GET"), (segment, "GET"), (PLAYLIST, "GET"),
                             (segment, "HEAD")):
            writer.write(_get(path, method))
            answers.append(await _answer(reader, method == "HEAD"))
        assert len(node.quick) == 3, "all but the connection's first request"
        assert len(node.auth.asked) == 1, "the connection's play was asked once"
        assert answers[0] == answers[2]
        assert answers[1][1].startswith(b"G") and len(answers[1][1]) % 188 == 0  # MPEG-TS
        assert b"Content-Length: 0" not in answers[3][0] and answers[3][1] == b""
        # Byte for byte what the handler answers on a connection of its own.
        assert answers[1] == await _alone(node.port, segment)
        assert answers[2] == await _alone(node.port, PLAYLIST)
        assert answers[3] == await _alone(node.port, segment, "HEAD")
    finally:
        writer.close()


async def test_a_kept_alive_player_is_asked_again_after_a_while_and_for_new_credentials(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hls_routes, "REAUTHORIZE", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        async def status(path: str) -> bytes:
            writer.write(_get(path))
            return (await _answer(reader))[0].split(b" ")[1]

        assert await status(f"{PLAYLIST}?key=a") == b"200"
        assert await status(f"{PLAYLIST}?key=a") == b"200"
        assert node.auth.asked == [{"key": "a"}]
        assert await status(f"{PLAYLIST}?key=b") == b"200"  # other credentials: asked
        assert node.auth.asked == [{"key": "a"}, {"key": "b"}]
        node.auth.allow = False  # revoked: the grant holds for its last half second
        assert await status(f"{PLAYLIST}?key=b") == b"200"
        await asyncio.sleep(0.6)
        assert await status(f"{PLAYLIST}?key=b") == b"403"
        assert len(node.auth.asked) == 3
    finally:
        writer.close()


async def test_pipelined_and_split_requests_go_to_the_handler_in_order(node: Node) -> None:
    segment = f"/{KEY}/{node.segments[-1]}"
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        writer.write(_get(PLAYLIST))
        playlist = await _answer(reader)
        writer.write(_get(segment) + _get(PLAYLIST))  # two requests in one read
        media = await _answer(reader)
        assert await _answer(reader) == playlist
        # A head in two reads, the second of which would be a whole request on its own.
        writer.write(f"GET {segment} HTTP/1.1\r\nX-Note: ".encode())
        await asyncio.sleep(0.05)
        writer.write(_get(PLAYLIST))
        assert await _answer(reader) == media
        assert node.quick == [], "the shortcut answers only a read that is one whole request"
        writer.write(_get(PLAYLIST))  # and a whole one again
        assert await _answer(reader) == playlist and len(node.quick) == 1
    finally:
        writer.close()


async def test_a_draining_node_answers_polls_503_and_bad_heads_get_400(node: Node) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        writer.write(_get(PLAYLIST))
        await _answer(reader)
        node.admission.draining = True
        writer.write(_get(PLAYLIST))
        head, _ = await _answer(reader)
        assert head.startswith(b"HTTP/1.1 503 ") and node.quick == []
        assert await asyncio.wait_for(reader.read(), 5) == b"", "and closed"
    finally:
        writer.close()
    node.admission.draining = False
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        writer.write(_get(PLAYLIST))
        await _answer(reader)
        writer.write(f"GET {PLAYLIST} HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.read(), 5)
        assert head.startswith(b"HTTP/1.1 400 ") and node.quick == []
    finally:
        writer.close()


async def _status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    writer.write(_get(path))
    return (await _answer(reader))[0].split(b" ")[1]


async def test_a_refusal_or_an_auth_reload_voids_what_the_connection_was_allowed(
        node: Node) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        assert await _status(reader, writer, PLAYLIST) == b"200"
        node.auth.allow = False
        # The handler asks again (a segment the shortcut cannot give) and is refused: the
        # shortcut must not go on answering what the handler refuses.
        assert await _status(reader, writer, f"/{KEY}/0-999.ts") == b"403"
        assert await _status(reader, writer, PLAYLIST) == b"403"
        node.auth.allow = True
        assert await _status(reader, writer, PLAYLIST) == b"200"
        assert await _status(reader, writer, PLAYLIST) == b"200"
        asked = len(node.auth.asked)
        node.server.forget_grants()  # what a config reload does when it swaps the providers
        node.auth.allow = False
        assert await _status(reader, writer, PLAYLIST) == b"403"
        assert len(node.auth.asked) == asked + 1
    finally:
        writer.close()


async def test_players_of_several_streams_on_one_connection_keep_their_grants(
        node: Node) -> None:
    other = "/live/other/index.m3u8"  # allowed, not published: the handler answers 404
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        assert await _status(reader, writer, PLAYLIST) == b"200"
        assert await _status(reader, writer, other) == b"404"
        assert await _status(reader, writer, PLAYLIST) == b"200"
        assert len(node.quick) == 1 and len(node.auth.asked) == 2
    finally:
        writer.close()


async def test_the_playlists_cache_lifetime_follows_reloaded_settings(node: Node) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        for _ in range(2):  # the handler's answer, then the shortcut's
            writer.write(_get(PLAYLIST))
            assert b"Cache-Control: max-age=1\r\n" in (await _answer(reader))[0]
        node.service.settings = dataclasses.replace(node.service.settings, segment_seconds=6.0)
        writer.write(_get(PLAYLIST))
        assert b"Cache-Control: max-age=3\r\n" in (await _answer(reader))[0]
        assert len(node.quick) == 2
    finally:
        writer.close()


async def test_heads_parsed_once_are_shared_by_connections_and_kept_bounded(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_server, "_PARSED", 2)
    players = [await asyncio.open_connection("127.0.0.1", node.port) for _ in range(3)]
    try:
        for path in (PLAYLIST, *(f"/{KEY}/{uri}" for uri in node.segments)):
            for reader, writer in players:  # the same bytes from every player
                writer.write(_get(path))
                head, body = await _answer(reader)
                assert head.startswith(b"HTTP/1.1 200 ") and body
            assert len(node.server._parsed) <= 2
        assert len(node.quick) == 3 * len(node.segments), "all but each player's first request"
    finally:
        for _, writer in players:
            writer.close()


@dataclass
class LowLatencyNode:
    server: HttpServer
    service: HlsService
    handle: PublishHandle
    port: int
    held: list[object]  # what ``HlsService.hold`` answered the shortcut


@pytest.fixture
async def llnode() -> AsyncIterator[LowLatencyNode]:
    """A Low-Latency node midway through a segment: its next part is not there yet."""
    service = HlsService(HlsSettings(segment_seconds=2.0, part_seconds=0.2,
                                     variant=HlsVariant.LOWLATENCY, on_publish=True))
    engine = Engine(EngineConfig(segment_target=2.0, part_target=0.2, idle_timeout=None),
                    observer=service)
    server = HttpServer("127.0.0.1", 0, engine=engine, hls=service, admission=Admission())
    token = ShutdownToken()
    serving = asyncio.create_task(engine.serve([server, service], token))
    await asyncio.wait_for(server.listener.ready.wait(), 10)
    handle = await engine.start_publish(KEY, protocol="rtmp")
    await eventually(lambda: (s := engine.stream(KEY)) is not None and len(s.subscribers) == 1)
    for frame in session(2)[:-10]:
        handle.publish_frame(frame)
    await eventually(lambda: service.playlist_now(KEY))
    held: list[object] = []
    hold = service.hold

    def spy(*args: Any, **kwargs: Any) -> str | bool:
        answer = hold(*args, **kwargs)
        held.append(answer)
        return answer

    service.hold = spy  # type: ignore[method-assign]
    try:
        yield LowLatencyNode(server, service, handle, server.listener.addresses[0][1], held)
    finally:
        await engine.end_publish(KEY, "test over")
        token.cancel()
        await asyncio.wait_for(serving, 10)


async def test_a_blocking_reload_is_held_without_a_task_and_answered_in_order(
        llnode: LowLatencyNode) -> None:
    state = llnode.service._states[KEY]
    reader, writer = await asyncio.open_connection("127.0.0.1", llnode.port)
    try:
        writer.write(_get(f"{PLAYLIST}?key=v"))  # the handler's: the play is allowed
        await _answer(reader)
        msn, part = state.latest()
        blocking = f"{PLAYLIST}?key=v&_HLS_msn={msn}&_HLS_part={part}"
        writer.write(_get(blocking))
        await eventually(lambda: llnode.held == [True])  # the shortcut's, not the handler's
        assert len(state.holds) == 1
        writer.write(_get(blocking, "HEAD"))  # read once the first is answered
        await asyncio.sleep(0.1)
        assert not reader.at_eof() and len(reader._buffer) == 0  # type: ignore[attr-defined]
        for frame in session(3, start=0)[len(session(2)) - 10:]:
            llnode.handle.publish_frame(frame)
            await asyncio.sleep(0)
            if state.has(msn, part):
                break
        held = await _answer(reader)
        head_only = await _answer(reader, head_only=True)  # then the next request's answer
        assert llnode.held == [True, held[1].decode()], "the HEAD was there at once"
        assert held[0].startswith(b"HTTP/1.1 200 ") and f"{msn}.{part}.m4s".encode() in held[1]
        assert held == await _alone(llnode.port, blocking), "as the handler answers it"
        assert head_only == (held[0], b"")
        assert not state.holds
    finally:
        writer.close()


async def test_a_held_reload_that_does_not_come_in_time_is_a_503_and_the_connection_lives(
        llnode: LowLatencyNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HlsSettings, "blocking_wait", property(lambda self: 0.3))
    state = llnode.service._states[KEY]
    reader, writer = await asyncio.open_connection("127.0.0.1", llnode.port)
    try:
        writer.write(_get(PLAYLIST))
        await _answer(reader)
        msn, part = state.latest()
        writer.write(_get(f"{PLAYLIST}?_HLS_msn={msn}&_HLS_part={part}"))
        head, body = await _answer(reader)
        assert llnode.held == [True]
        assert head.startswith(b"HTTP/1.1 503 ") and b"Connection: keep-alive" in head
        assert body == f"segment {msn} part {part} not ready in time\n".encode()
        assert not state.holds
        writer.write(_get(PLAYLIST))
        assert (await _answer(reader))[0].startswith(b"HTTP/1.1 200 ")
        # A player that leaves while held costs nothing when the answer comes.
        writer.write(_get(f"{PLAYLIST}?_HLS_msn={msn}&_HLS_part={part}"))
        await eventually(lambda: len(llnode.held) == 2)
        writer.close()
        await eventually(lambda: not state.holds, timeout=5)
        await eventually(lambda: llnode.server.admission.connections == 0, timeout=5)
    finally:
        writer.close()
