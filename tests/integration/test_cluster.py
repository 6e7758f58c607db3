"""One Redis, origins and edges as separate processes, real ffmpeg: the cluster data plane."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from arcly.media import flv
from arcly.relay.v1 import relay_pb2 as pb
from tests.conftest import FPS
from tests.support.flv_reader import HttpFlvReader, first_video_frames
from tests.support.processes import FfmpegPublisher, Node, RedisServer, retry_publish
from tests.support.rtmp_client import RtmpClient
from tests.support.wait import eventually, wait_until

pytestmark = pytest.mark.integration
TOKEN = "test-relay-token"
NodeFactory = Callable[..., Node]


def cluster_node(node_factory: NodeFactory, role: str, redis: RedisServer, node_id: str,
                 *extra: str) -> Node:
    return node_factory("--redis-url", redis.url, "--node-id", node_id,
                        "--log-level", "info", *extra, role=role,
                        env={"ARCLY_RELAY_TOKEN": TOKEN})


def api(node: Node, path: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http}{path}", timeout=10) as resp:
        return json.load(resp)  # type: ignore[no-any-return]


def status(node: Node, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.http}{path}", timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def relay_peers(origin: Node, key: str) -> list[str]:
    detail = api(origin, f"/api/v1/streams/{key}")
    return [s["peer"] for s in detail["subscribers"] if s["protocol"] == "relay"]


def record(ffmpeg: str, url: str, out: Path) -> str:
    result = subprocess.run([ffmpeg, "-hide_banner", "-v", "error", "-rw_timeout", "15000000",
                             "-i", url, "-t", "6", "-c", "copy", "-y", str(out)],
                            capture_output=True, text=True, timeout=90,
                            stdin=subprocess.DEVNULL)
    return result.stderr if result.returncode else ""


def video_frames(ffprobe: str, path: Path) -> int:
    result = subprocess.run([ffprobe, "-v", "error", "-count_frames", "-select_streams", "v",
                             "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0",
                             str(path)], capture_output=True, text=True, timeout=60, check=True)
    return int(result.stdout.strip())


def test_edges_serve_ffmpeg_with_one_upstream_per_edge(
        node_factory: NodeFactory, redis_server: RedisServer,
        publish: Callable[[Node, str], FfmpegPublisher], ffmpeg: str, ffprobe: str,
        tmp_path: Path) -> None:
    origin = cluster_node(node_factory, "origin", redis_server, "o1")
    edges = [cluster_node(node_factory, "edge", redis_server, f"e{i}") for i in (1, 2)]
    publish(origin, "live/cl")
    urls = []
    for edge in edges:
        urls += [f"rtmp://127.0.0.1:{edge.rtmp}/live/cl",
                 f"http://127.0.0.1:{edge.http}/live/cl.flv"]
    outs = [tmp_path / f"play{i}.flv" for i in range(len(urls))]
    with ThreadPoolExecutor(len(urls)) as pool:
        errors = list(pool.map(record, [ffmpeg] * len(urls), urls, outs))
    assert errors == [""] * len(urls)
    for out in outs:
        assert video_frames(ffprobe, out) >= 5 * FPS
        decode = subprocess.run([ffmpeg, "-v", "error", "-i", str(out), "-f", "null", "-"],
                                capture_output=True, text=True, timeout=60)
        assert decode.returncode == 0 and decode.stderr.strip() == ""

    async def twenty_viewers() -> list[str]:
        viewers = [await HttpFlvReader.open(edges[0].http, "/live/cl.flv") for _ in range(20)]
        for viewer in viewers:
            await viewer.read_header()
            await viewer.next_tag()
        peers = await asyncio.to_thread(relay_peers, origin, "live/cl")
        on_edge = await asyncio.to_thread(api, edges[0], "/api/v1/streams/live/cl")
        assert on_edge["viewers"]["flv"] >= 20
        assert on_edge["upstream"]["origin"] == "o1"
        assert on_edge["upstream"]["relay"] == f"127.0.0.1:{origin.relay}"
        assert 0 <= on_edge["upstream"]["lag_ms"] < 1000
        for viewer in viewers:
            await viewer.close()
        return peers

    peers = asyncio.run(twenty_viewers())
    assert peers.count("e1") == 1, f"one relay subscription from e1, got {peers}"


def test_first_viewer_on_an_edge_starts_with_sequence_header_and_keyframe(
        node_factory: NodeFactory, redis_server: RedisServer,
        publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    origin = cluster_node(node_factory, "origin", redis_server, "o1")
    edge = cluster_node(node_factory, "edge", redis_server, "e1")
    publish(origin, "live/first")
    time.sleep(0.8)  # mid-GOP

    waited, videos = asyncio.run(first_video_frames(edge.http, "live/first"))
    print(f"\nfirst viewer on an edge: first video frame after {waited * 1000:.0f} ms")
    assert flv.is_video_config(videos[0])
    assert flv.is_video_keyframe(videos[1])

    async def unknown() -> None:
        started = time.monotonic()
        reader = await HttpFlvReader.open(edge.http, "/live/nobody.flv")
        assert reader.status == 404
        assert time.monotonic() - started < 2, "unknown keys are refused fast"
        await reader.close()

    asyncio.run(unknown())


def test_second_publisher_on_another_origin_is_refused_until_the_first_ends(
        node_factory: NodeFactory, redis_server: RedisServer,
        publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    first_origin = cluster_node(node_factory, "origin", redis_server, "o1")
    second_origin = cluster_node(node_factory, "origin", redis_server, "o2")
    first = publish(first_origin, "live/own")

    async def try_publish() -> str:
        client = await RtmpClient.connect("127.0.0.1", second_origin.rtmp, "live")
        status = await client.publish("own")
        await client.close()
        return status.code + " " + status.description

    refused = asyncio.run(try_publish())
    assert refused.startswith("NetStream.Publish.BadName") and "o1" in refused
    assert first.alive()
    first.stop()
    first_origin.wait_for_log(r"publish end stream=live/own ")
    assert asyncio.run(try_publish()).startswith("NetStream.Publish.Start")


def test_origin_killed_then_republished_elsewhere_viewer_on_edge_continues(
        node_factory: NodeFactory, redis_server: RedisServer, ffmpeg: str,
        source_flv: Path) -> None:
    first_origin = cluster_node(node_factory, "origin", redis_server, "o1")
    second_origin = cluster_node(node_factory, "origin", redis_server, "o2")
    edge = cluster_node(node_factory, "edge", redis_server, "e1", "--reconnect-window", "30")
    publishers = [FfmpegPublisher(ffmpeg, source_flv,
                                  f"rtmp://127.0.0.1:{first_origin.rtmp}/live/move")]
    first_origin.wait_for_log(r"publish start stream=live/move ", timeout=20)

    async def scenario() -> float:
        viewer = await HttpFlvReader.open(edge.http, "/live/move.flv")
        await viewer.read_header()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            await viewer.next_tag()
        os.kill(first_origin.pid, signal.SIGKILL)  # our own node, by pid
        killed_at = time.monotonic()

        def republish() -> None:
            while time.monotonic() - killed_at < 30:
                pub = FfmpegPublisher(ffmpeg, source_flv,
                                      f"rtmp://127.0.0.1:{second_origin.rtmp}/live/move")
                publishers.append(pub)
                time.sleep(1.0)
                if pub.alive():
                    return  # accepted: the lease lapsed and o2 owns the key
        await asyncio.to_thread(republish)
        # Drain what the old session had in flight, then wait for the new session's header.
        while True:
            tag = await viewer.next_tag(30)
            if tag.tag_type == flv.TAG_VIDEO and flv.is_video_config(tag.body) and \
                    time.monotonic() - killed_at > 0.5:
                break
        gap = time.monotonic() - killed_at
        received = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            await viewer.next_tag(5)
            received += 1
        await viewer.close()
        assert received > 20, "frames of the new session keep coming"
        return gap

    try:
        gap = asyncio.run(scenario())
    finally:
        for pub in publishers:
            pub.stop()
    print(f"\nviewer on the edge resumed {gap:.1f} s after its origin was killed "
          f"(ownership lease 3 s)")
    edge.wait_for_log(r"relay subscribed stream=live/move origin=o2")


def test_redis_outages_short_ones_cut_nothing_long_ones_end_publishes_not_viewers(
        node_factory: NodeFactory, redis_server: RedisServer, ffmpeg: str, source_flv: Path,
        publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    origin = cluster_node(node_factory, "origin", redis_server, "o1")
    edge = cluster_node(node_factory, "edge", redis_server, "e1")
    publish(origin, "live/outage")

    async def gap_while(seconds: float, viewer: HttpFlvReader) -> float:
        longest, last = 0.0, time.monotonic()
        deadline = last + seconds
        while time.monotonic() < deadline:
            await viewer.next_tag(10)
            now = time.monotonic()
            longest, last = max(longest, now - last), now
        return longest

    async def scenario() -> tuple[float, float]:
        viewer = await HttpFlvReader.open(edge.http, "/live/outage.flv")
        await viewer.read_header()
        await viewer.next_tag()
        # A restart shorter than the session TTL (Redis comes back without its data): the
        # origin restores its session and keys, nothing is cut.
        redis_server.stop()
        redis_server.start()
        short = await gap_while(3.0, viewer)
        # Longer than the TTL: nothing can be decided, nobody can claim; the origin must assume
        # its keys are gone and ends its publisher ...
        redis_server.stop()
        newcomer = await RtmpClient.connect("127.0.0.1", origin.rtmp, "live")
        refusal = await newcomer.publish("during-outage")
        await newcomer.close()
        assert refusal.code == "NetStream.Publish.Failed"
        assert "registry" in refusal.description
        await asyncio.to_thread(origin.wait_for_log, r"registry session lost", 10)
        await asyncio.sleep(1.0)  # Redis stays away a while longer
        redis_server.start()
        # ... while the edge keeps its viewer, and continues when the broadcaster is back
        # (retrying, as broadcasters do, until the origin has its session again).
        again = await asyncio.to_thread(retry_publish, ffmpeg, source_flv, origin,
                                        "live/outage", 20)
        try:
            # What was in flight before the loss comes first; then the new session, from
            # its sequence headers, on the same connection.
            deadline = time.monotonic() + 20
            while not flv.is_video_config((tag := await viewer.next_tag(20)).body) or \
                    tag.tag_type != 9:
                assert time.monotonic() < deadline, "the new session never reached the viewer"
            resumed = time.monotonic()
            for _ in range(30):
                await viewer.next_tag(10)
        finally:
            again.stop()
        await viewer.close()
        return short, time.monotonic() - resumed

    short, _ = asyncio.run(scenario())
    print(f"\nlongest gap across a Redis restart shorter than the session: {short:.2f} s")
    assert short < 1.0, "a short outage cuts nothing"
    assert "registry lost its data; session restored" in origin.log_text()
    assert "relay gave up" not in edge.log_text(), "the viewer was kept"
    wait_until(lambda: {"o1", "e1"} <= set(
        redis_server.command("SMEMBERS", "arcly:nodes").split()), timeout=15,
        message="node records reappear")
    assert "registry unreachable" in origin.log_text()


def test_relay_refuses_a_wrong_token_and_cuts_an_edge_that_stops_reading(
        node_factory: NodeFactory, redis_server: RedisServer,
        publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    origin = cluster_node(node_factory, "origin", redis_server, "o1",
                          "--viewer-backlog-bytes", "100000")
    edge = cluster_node(node_factory, "edge", redis_server, "e1")
    publisher = publish(origin, "live/guard")
    target = f"127.0.0.1:{origin.relay}"
    request = pb.SubscribeRequest(app="live", stream="guard", node_id="intruder")

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_stream("/arcly.relay.v1.Relay/Subscribe",
                                        request_serializer=pb.SubscribeRequest.SerializeToString,
                                        response_deserializer=pb.RelayMessage.FromString)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in call(request, metadata=(("authorization", "Bearer wrong"),)):
                    pass
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # An edge that subscribes and then never reads (flow-control window kept small).
        stalled_request = pb.SubscribeRequest(app="live", stream="guard", node_id="stalled")
        async with grpc.aio.insecure_channel(target, options=[
                ("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 1 << 25)],
                ) as channel:
            stalled = channel.unary_stream(
                "/arcly.relay.v1.Relay/Subscribe",
                request_serializer=pb.SubscribeRequest.SerializeToString,
                response_deserializer=pb.RelayMessage.FromString)(
                    stalled_request, metadata=(("authorization", f"Bearer {TOKEN}"),))
            await stalled.read()  # subscribed
            viewer = await HttpFlvReader.open(edge.http, "/live/guard.flv")
            await viewer.read_header()
            deadline = time.monotonic() + 40
            longest, last = 0.0, time.monotonic()
            while time.monotonic() < deadline:
                await viewer.next_tag(5)
                now = time.monotonic()
                longest, last = max(longest, now - last), now
                if "relay edge cut peer=stalled" in origin.log_text():
                    break
            await viewer.close()
            stalled.cancel()
        assert "relay edge cut peer=stalled" in origin.log_text()
        assert longest < 1.5, "the healthy edge's viewer was not held up"

    asyncio.run(scenario())
    assert publisher.alive()
    assert "relay refused" in origin.log_text() and "bad token" in origin.log_text()


def _make_pki(folder: Path) -> dict[str, Path]:
    """A throwaway CA, an origin certificate for 127.0.0.1 and an edge client certificate."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=arcly-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    for name, ext in (("origin", "subjectAltName=IP:127.0.0.1"),
                      ("edge", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
            f"{name}.key", "-out", f"{name}.csr")
        (folder / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return {p.name: p for p in folder.iterdir()}


def test_relay_over_mutual_tls(node_factory: NodeFactory, redis_server: RedisServer,
                               publish: Callable[[Node, str], FfmpegPublisher],
                               tmp_path: Path) -> None:
    pki = _make_pki(tmp_path)
    origin = cluster_node(node_factory, "origin", redis_server, "o1",
                          "--relay-tls-cert", str(pki["origin.pem"]), "--relay-tls-key",
                          str(pki["origin.key"]), "--relay-tls-ca", str(pki["ca.pem"]))
    trusted = cluster_node(node_factory, "edge", redis_server, "e1", "--relay-tls-ca",
                           str(pki["ca.pem"]), "--relay-tls-cert", str(pki["edge.pem"]),
                           "--relay-tls-key", str(pki["edge.key"]))
    no_client_cert = cluster_node(node_factory, "edge", redis_server, "e2", "--relay-tls-ca",
                                  str(pki["ca.pem"]), "--reconnect-window", "1")
    publish(origin, "live/tls")
    origin.wait_for_log(r"listening protocol=relay .* tls=True mtls=True")

    async def scenario() -> None:
        viewer = await HttpFlvReader.open(trusted.http, "/live/tls.flv")
        assert viewer.status == 200
        await viewer.read_header()
        for _ in range(20):
            await viewer.next_tag()
        await viewer.close()
        refused = await HttpFlvReader.open(no_client_cert.http, "/live/tls.flv")
        await refused.read_header()
        with pytest.raises((EOFError, TimeoutError)):  # no frames: the origin refused it
            for _ in range(5):
                await refused.next_tag(5)
        await refused.close()

    asyncio.run(scenario())
    assert relay_peers(origin, "live/tls") in (["e1"], [])


def test_sigterm_drains_an_edge_before_it_exits(
        node_factory: NodeFactory, redis_server: RedisServer,
        publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    origin = cluster_node(node_factory, "origin", redis_server, "o1")
    edge = cluster_node(node_factory, "edge", redis_server, "e1", "--drain-timeout", "20")
    publish(origin, "live/drain")

    async def scenario() -> None:
        viewer = await HttpFlvReader.open(edge.http, "/live/drain.flv")
        await viewer.read_header()
        await viewer.next_tag()
        os.kill(edge.pid, signal.SIGTERM)  # our own node, by pid
        async def not_ready() -> bool:
            return await asyncio.to_thread(status, edge, "/readyz") == 503

        await eventually(not_ready, message="readiness never turned false")
        # the registry hears of it a round trip after readiness turned
        await eventually(lambda: "draining" in redis_server.command(
            "HGET", "arcly:node:e1", "state"), message="the registry never heard of the drain")
        newcomer = await HttpFlvReader.open(edge.http, "/live/drain.flv")
        assert newcomer.status == 503, "no new viewers while draining"
        await newcomer.close()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # the existing viewer carries on
            await viewer.next_tag(5)
        assert edge.proc.poll() is None
        await viewer.close()

    asyncio.run(scenario())
    assert edge.proc.wait(15) == 0, "exits once its last viewer left"
    edge.wait_for_log("drain finished")
