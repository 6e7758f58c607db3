"""Abuse on the node's ports: slowloris, malformed input after a handshake, connection caps."""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable

import pytest

from arcly.media import amf0
from arcly.protocols.rtmp import chunk
from arcly.protocols.rtmp.chunk import encode_message
from tests.integration.test_robustness import _handshake
from tests.support.processes import FfmpegPublisher, Node
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_200_slowloris_connections_do_not_stop_a_real_publish_and_play(
        node_factory: Callable[..., Node], publish: Callable[[Node, str], FfmpegPublisher],
        ffmpeg: str) -> None:
    node = node_factory("--handshake-timeout", "3")
    publisher = publish(node, "live/busy")
    stop = threading.Event()
    sockets: list[socket.socket] = []
    for i in range(200):
        port = node.rtmp if i % 4 else node.http
        sock = socket.create_connection(("127.0.0.1", port))
        sockets.append(sock)

    def trickle() -> None:  # half of them send a byte a second, forever
        while not stop.is_set():
            for sock in sockets[::2]:
                try:
                    sock.send(b"\x03" if sock.getpeername()[1] == node.rtmp else b"G")
                except OSError:
                    pass
            time.sleep(1)

    dripper = threading.Thread(target=trickle, daemon=True)
    dripper.start()
    try:
        started = time.monotonic()
        play = subprocess.run([ffmpeg, "-hide_banner", "-v", "error", "-rw_timeout", "10000000",
                               "-i", f"rtmp://127.0.0.1:{node.rtmp}/live/busy", "-t", "5",
                               "-f", "null", "-"], capture_output=True, text=True, timeout=60)
        assert play.returncode == 0 and play.stderr.strip() == ""
        closed = sum(_closed_within(sock, max(0.1, 8 - (time.monotonic() - started)))
                     for sock in sockets)
    finally:
        stop.set()
        dripper.join(5)
        for sock in sockets:
            sock.close()
    assert closed == 200, f"only {closed} of 200 slow connections were closed by the timeouts"
    assert publisher.alive()
    assert "rtmp timeout" in node.log_text()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


ATTACKS: dict[str, Callable[[], bytes]] = {
    "oversized chunk size": lambda: encode_message(
        2, chunk.SET_CHUNK_SIZE, 0, 0, struct.pack(">I", 0x7FFFFFFF), 128),
    "oversized message": lambda: (b"\x03" + b"\x00\x00\x00" + (0xFFFFFF).to_bytes(3, "big")
                                  + b"\x09\x01\x00\x00\x00" + os.urandom(128)),
    "garbage": lambda: os.urandom(4096),
    "bad amf": lambda: encode_message(3, chunk.COMMAND_AMF0, 0, 0,
                                      amf0.encode("connect", 1.0) + b"\x03\x00", 128),
}


def test_malformed_input_after_handshake_closes_and_memory_stays_bounded(
        node: Node, publish: Callable[[Node, str], FfmpegPublisher]) -> None:
    publisher = publish(node, "live/steady")
    before = _rss_kib(node.pid)
    for round_ in range(25):
        for name, attack in ATTACKS.items():
            sock = socket.create_connection(("127.0.0.1", node.rtmp))
            try:
                _handshake(sock)
                sock.sendall(attack())
                assert _closed_within(sock, 5), f"{name} (round {round_}) left the socket open"
            finally:
                sock.close()
    growth = _rss_kib(node.pid) - before
    print(f"\n100 malformed sessions: node RSS grew {growth} KiB")
    assert growth < 20 * 1024
    assert publisher.alive()
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http}/live/steady.flv",
                                timeout=10) as resp:
        assert resp.read(13)[:3] == b"FLV"


def node_document(node: Node, source: str) -> dict:  # type: ignore[type-arg]
    connection = http.client.HTTPConnection("127.0.0.1", node.http, timeout=10,
                                            source_address=(source, 0))
    try:
        connection.request("GET", "/api/v1/node")
        return json.loads(connection.getresponse().read())  # type: ignore[no-any-return]
    finally:
        connection.close()


def test_connection_caps_refuse_and_count(node_factory: Callable[..., Node]) -> None:
    node = node_factory("--max-connections-per-ip", "5")
    held = [socket.create_connection(("127.0.0.1", node.rtmp)) for _ in range(5)]
    # Asked from another loopback address (this one is at its cap): 5 held + that request.
    wait_until(lambda: node_document(node, source="127.0.0.2")["connections"] == 6,
               message="the held connections were never admitted")
    extra = [socket.create_connection(("127.0.0.1", node.rtmp)) for _ in range(3)]
    try:
        assert all(_closed_within(sock, 5) for sock in extra), "over the cap: closed at once"
        assert not any(_closed_within(sock, 0.2) for sock in held), "within the cap: kept"
    finally:
        for sock in held + extra:
            sock.close()
    document = wait_until(lambda: (doc := node_document(node, source="127.0.0.2"))[
        "connections"] == 1 and doc, message="the held slots are never free again")
    assert document["limits_hit"]["max_connections_per_ip"] == 3
    node.wait_for_log(r"limit hit limit=max_connections_per_ip")
