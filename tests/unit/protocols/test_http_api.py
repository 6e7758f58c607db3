"""The HTTP listener in-process over loopback: the router's rules, the management API's
documents and guard, probes — a real kernel and a real socket, no subprocess."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from arcly.engine import Engine, EngineConfig, FrameKind, PublishHandle, ShutdownToken, StreamKey
from arcly.media import amf0
from arcly.media.flv import make_frame
from arcly.protocols.http import HttpServer, api
from arcly.protocols.http.router import NotAllowed, Resolved, Router
from arcly.protocols.http.server import SWEEP
from arcly.protocols.http.settings import HttpSettings
from arcly.protocols.listener import Admission

KEY = StreamKey("live", "cam")
# libx264's 640x360 Constrained Baseline sequence header, as ffmpeg writes it into FLV.
AVC_HEADER = bytes.fromhex(
    "1700000000" "0142c01effe1" "0019" "6742c01ed900a02ff970110000030001000003003c0f162e48"
    "01" "0005" "68cb83cb20")
AAC_HEADER = b"\xaf\x00\x12\x10"  # AAC-LC, 44.1 kHz, stereo
METADATA = amf0.encode("onMetaData", amf0.EcmaArray(width=640.0, height=360.0,
                                                     framerate=30.0))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


Request = Callable[..., Awaitable[Reply]]


@dataclass
class Running:
    engine: Engine
    admission: Admission
    request: Request
    port: int = 0


Start = Callable[..., Awaitable[Running]]


async def _request(port: int, method: str, path: str,
                   headers: dict[str, str] | None = None) -> Reply:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1", "Host: test",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *header_lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in header_lines if line)
    length = int(fields.get("Content-Length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 5) if method != "HEAD" else b""
    writer.close()
    return Reply(int(status_line.split()[1]), fields, body)


@pytest.fixture
async def node() -> AsyncIterator[Start]:
    stops: list[tuple[ShutdownToken, asyncio.Task[None]]] = []

    async def start(api_token: str = "") -> Running:
        engine = Engine(EngineConfig(idle_timeout=None))
        admission = Admission()
        server = HttpServer("127.0.0.1", 0, engine=engine, admission=admission,
                            node=lambda: {"id": "n1", "role": "single"}, api_token=api_token)
        token = ShutdownToken()
        stops.append((token, asyncio.create_task(engine.serve([server], token))))
        await asyncio.wait_for(server.listener.ready.wait(), 10)
        port = server.listener.addresses[0][1]

        async def request(method: str, path: str, **headers: str) -> Reply:
            return await _request(port, method, path, headers)

        return Running(engine, admission, request, port)

    try:
        yield start
    finally:
        for token, task in stops:
            token.cancel()
            await asyncio.wait_for(task, 10)


async def publish(engine: Engine, key: StreamKey = KEY) -> PublishHandle:
    handle = await engine.start_publish(key, protocol="rtmp", peer="10.0.0.1:5000")
    for kind, body in ((FrameKind.DATA, METADATA), (FrameKind.VIDEO, AVC_HEADER),
                       (FrameKind.AUDIO, AAC_HEADER),
                       (FrameKind.VIDEO, b"\x17\x01\x00\x00\x00" + b"\x00" * 100)):
        handle.publish_frame(make_frame(kind, 0, body))
    return handle


async def test_stream_documents_show_codecs_viewers_and_subscribers(node: Start) -> None:
    running = await node()
    await publish(running.engine)
    for protocol, peer in (("rtmp", "1.1.1.1:1"), ("http-flv", "2.2.2.2:2"),
                           ("http-flv", "3.3.3.3:3")):
        sub = await running.engine.subscribe(KEY, protocol=protocol, peer=peer)
        sub.take()
    listed = (await running.request("GET", "/api/v1/streams")).json()
    assert isinstance(listed, dict) and [s["key"] for s in listed["streams"]] == ["live/cam"]
    summary = listed["streams"][0]
    assert summary["viewers"] == {"rtmp": 1, "flv": 2, "hls": 0, "relay": 0, "total": 3}
    assert summary["codecs"] == {"video": "h264", "audio": "aac", "sample_rate": 44100,
                                 "channels": 2, "width": 640, "height": 360,
                                 "framerate": 30.0}
    assert isinstance(summary["codecs"]["width"], int), "pixels are integers in the API"
    assert summary["publisher"] == {"protocol": "rtmp", "peer": "10.0.0.1:5000"}
    assert summary["frames_in"] == 4 and summary["frames_out"] == 12
    detail = (await running.request("GET", "/api/v1/streams/live/cam")).json()
    assert isinstance(detail, dict)
    assert [(s["protocol"], s["peer"], s["delivered_frames"]) for s in detail["subscribers"]] \
        == [("flv", "2.2.2.2:2", 4), ("flv", "3.3.3.3:3", 4), ("rtmp", "1.1.1.1:1", 4)]
    assert "upstream" not in detail, "only edges say where a stream comes from"


async def test_viewers_are_people_as_the_metric_counts_them() -> None:
    engine = Engine()
    await publish(engine)
    for protocol, viewer in (("rtmp", True), ("http-flv", True), ("webrtc", True),
                             ("hls", False), ("record", False), ("webrtc-audio", False),
                             ("relay", False), ("relay", False)):
        await engine.subscribe(KEY, protocol=protocol, peer="p", viewer=viewer)
    stream = engine.stream(KEY)
    assert stream is not None
    players = {KEY: 4}  # clients that polled the playlist lately
    # The segmenter, the recorder and the transcoder are not viewers; edges are relays.
    assert api.stream_summary(engine, stream, players[KEY])["viewers"] == {
        "rtmp": 1, "flv": 1, "webrtc": 1, "hls": 4, "total": 7, "relay": 2}
    document = api.streams_document(engine, players)
    assert document["streams"][0]["viewers"]["total"] == 7
    assert api.streams_document(engine)["streams"][0]["viewers"]["hls"] == 0


async def test_node_document_and_not_found(node: Start) -> None:
    running = await node()
    running.admission.refuse("max_publishers", "test")
    document = (await running.request("GET", "/api/v1/node")).json()
    runtime = document.pop("runtime")
    assert document == {"id": "n1", "role": "single", "draining": False, "connections": 1,
                        "limits_hit": {"max_publishers": 1}, "streams": 0, "viewers": 0}
    assert runtime["tasks"] >= 1 and runtime["thread_kinds"]["MainThread"] == 1
    assert runtime["threads"] == sum(runtime["thread_kinds"].values())
    for path in ("/api/v1/streams/live/none", "/api/v1/streams/bad%20app/x", "/api/v1/nope"):
        reply = await running.request("GET", path)
        assert (reply.status, reply.json()) == (404, {"error": "not found"})
    reply = await running.request("POST", "/api/v1/streams")
    assert (reply.status, reply.headers["Allow"]) == (405, "GET, HEAD, DELETE")


async def test_kicking_needs_loopback_or_the_token(node: Start) -> None:
    running = await node(api_token="s3cret")
    handle = await publish(running.engine)
    openapi = await running.request("GET", "/api/v1/openapi.json")
    assert openapi.status == 200 and "paths" in openapi.json()  # type: ignore[operator]
    refused = await running.request("GET", "/api/v1/streams")
    assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = await running.request("DELETE", "/api/v1/streams/live/cam",
                                  Authorization="Bearer nope")
    assert wrong.status == 401 and not handle.ended.cancelled
    kicked = await running.request("DELETE", "/api/v1/streams/live/cam",
                                   Authorization="Bearer s3cret")
    assert (kicked.status, kicked.json()) == (200, {"kicked": "live/cam"})
    assert handle.ended.cancelled and handle.end_reason.startswith("kicked via API by 127.0.0.1")
    again = await running.request("DELETE", "/api/v1/streams/live/cam",
                                  Authorization="Bearer s3cret")
    assert again.status == 404


async def test_without_a_token_reading_is_open_and_loopback_may_kick(node: Start) -> None:
    running = await node()
    handle = await publish(running.engine)
    assert (await running.request("GET", "/api/v1/streams")).status == 200
    assert (await running.request("DELETE", "/api/v1/streams/live/cam")).status == 200
    assert handle.ended.cancelled


async def test_probes_follow_draining(node: Start) -> None:
    running = await node()
    assert (await running.request("GET", "/readyz")).json() == {"status": "ok"}
    running.admission.draining = True
    ready = await running.request("GET", "/readyz")
    assert (ready.status, ready.json()) == (503, {"status": "draining"})
    assert (await running.request("GET", "/healthz")).status == 200, "alive while draining"
    refused = await running.request("GET", "/live/cam.flv")
    assert (refused.status, refused.headers["Retry-After"]) == (503, "1")


async def test_routes_answer_head_options_and_wrong_methods(node: Start) -> None:
    running = await node()
    head = await running.request("HEAD", "/healthz")
    assert head.status == 200 and int(head.headers["Content-Length"]) > 0
    options = await running.request("OPTIONS", "/live/cam.flv")
    assert options.status == 204 and options.headers["Access-Control-Allow-Origin"] == "*"
    wrong = await running.request("POST", "/live/cam.flv")
    assert (wrong.status, wrong.headers["Allow"]) == (405, "GET, HEAD")
    assert (await running.request("GET", "/no/such/thing/here")).status == 404
    assert (await running.request("GET", "/live/none.flv")).status == 404
    assert (await running.request("GET", "/static/../../etc/passwd")).status == 404
    page = await running.request("GET", "/play/live/cam?type=flv")
    assert page.status == 200 and b"mpegts" in page.body


def test_router_matches_in_order_with_captures_suffixes_and_rest() -> None:
    async def first(*_: object) -> None: ...

    async def second(*_: object) -> None: ...

    router = Router()
    router.add("GET", "/{app}/{stream}.flv", first)
    router.add("GET", "/play/{app}/{stream}", second)
    router.add("DELETE", "/api/{path*}", second)
    found = router.resolve("GET", "/play/x.flv")
    assert isinstance(found, Resolved) and found.handler is first, "media before pages"
    assert found.params == {"app": "play", "stream": "x"}
    found = router.resolve("HEAD", "/play/live/cam")
    assert isinstance(found, Resolved) and found.params == {"app": "live", "stream": "cam"}
    found = router.resolve("DELETE", "/api/a/b/c")
    assert isinstance(found, Resolved) and found.params == {"path": "a/b/c"}
    for rest in ("", "a", "/".join(map(str, range(40)))):  # zero or more, however many
        found = router.resolve("DELETE", f"/api/{rest}")
        assert isinstance(found, Resolved) and found.params == {"path": rest}, rest
    assert len(router._by_length) <= 5, "one candidate list per pattern length, not per path"
    assert router.resolve("POST", "/play/live/cam") == NotAllowed(("GET", "HEAD"))
    assert router.resolve("GET", "/play/live") is None
    with pytest.raises(ValueError, match="must be the last segment"):
        router.add("GET", "/{rest*}/x", first)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: str
                    ) -> tuple[dict[str, str], bytes]:
    writer.write(request.encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if line)
    body = await asyncio.wait_for(reader.readexactly(int(fields["Content-Length"])), 5)
    return fields, body


async def test_whole_responses_keep_the_connection_for_the_next_request(node: Start) -> None:
    running = await node()
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        for _ in range(3):  # an LL-HLS player asks several times a second, on one connection
            fields, body = await _exchange(reader, writer,
                                           "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert fields["Connection"] == "keep-alive" and b"ok" in body
        fields, _ = await _exchange(
            reader, writer, "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert fields["Connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b"", "closed after it"
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:  # HTTP/1.0 keeps only when asked to
        fields, _ = await _exchange(reader, writer, "GET /healthz HTTP/1.0\r\n\r\n")
        assert fields["Connection"] == "close"
    finally:
        writer.close()


async def test_shutdown_closes_kept_alive_connections_between_requests() -> None:
    engine = Engine(EngineConfig(idle_timeout=None))
    server = HttpServer("127.0.0.1", 0, engine=engine, admission=Admission())
    token = ShutdownToken()
    serving = asyncio.create_task(engine.serve([server], token))
    await asyncio.wait_for(server.listener.ready.wait(), 10)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.listener.addresses[0][1])
    try:
        await _exchange(reader, writer, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        token.cancel()  # the connection idles between requests: shutdown does not wait for it
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await asyncio.wait_for(serving, 5)
    finally:
        writer.close()


async def test_a_late_head_gets_408_and_an_idle_kept_alive_connection_is_closed() -> None:
    engine = Engine(EngineConfig(idle_timeout=None))
    server = HttpServer("127.0.0.1", 0, HttpSettings(header_timeout=0.5, keepalive_timeout=1.0),
                        engine=engine, admission=Admission())
    token = ShutdownToken()
    serving = asyncio.create_task(engine.serve([server], token))
    await asyncio.wait_for(server.listener.ready.wait(), 10)
    port = server.listener.addresses[0][1]
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # and never the blank line
        started = loop.time()
        answer = await asyncio.wait_for(reader.read(), 5)
        took = loop.time() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:40]
        assert 0.45 <= took <= 0.5 + SWEEP + 0.5, took
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _exchange(reader, writer, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        started = loop.time()  # kept alive, then nothing: closed quietly after 1 s
        assert await asyncio.wait_for(reader.read(), 5) == b""
        took = loop.time() - started
        assert 0.95 <= took <= 1.0 + SWEEP + 0.5, took
        writer.close()

        # A request that comes in time is served, however many came before it.
        assert (await _request(port, "GET", "/healthz")).status == 200
        for _ in range(100):  # that client closed: the server stops waiting for its next one
            if not server._waiting:
                break
            await asyncio.sleep(0.02)
        assert not server._waiting, "no deadline outlives its connection"
    finally:
        token.cancel()
        await asyncio.wait_for(serving, 10)


async def test_a_kept_alive_client_that_never_reads_is_still_cut_at_its_deadline() -> None:
    # Pipelined requests whose answers the client never reads: the socket's buffers fill and
    # the transport holds the rest, so a plain close (which waits for unsent bytes) would keep
    # the connection, and its admission slot, for ever.
    engine = Engine(EngineConfig(idle_timeout=None))
    admission = Admission()
    server = HttpServer("127.0.0.1", 0, HttpSettings(header_timeout=0.5, keepalive_timeout=0.5),
                        engine=engine, admission=admission)
    token = ShutdownToken()
    serving = asyncio.create_task(engine.serve([server], token))
    await asyncio.wait_for(server.listener.ready.wait(), 10)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", server.listener.addresses[0][1]))
        await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n" * 400)
        await asyncio.sleep(0.3)
        assert admission.connections == 1
        for _ in range(60):  # keep-alive 0.5 s, the sweep, then close_writer's grace
            if admission.connections == 0:
                break
            await asyncio.sleep(0.1)
        assert admission.connections == 0, "the connection outlived its deadline"
    finally:
        sock.close()
        token.cancel()
        await asyncio.wait_for(serving, 10)
