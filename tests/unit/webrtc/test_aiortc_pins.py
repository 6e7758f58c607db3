"""What our adapters rely on in aiortc and aioice, pinned on a real in-process connection: a
port range and advertised address for ICE, encoded frames passed through instead of decoded,
keyframe requests that reach the sender. A new aiortc/aioice that moves these fails here."""

from __future__ import annotations

import asyncio
import fractions
import importlib.metadata
import inspect
import socket
from collections.abc import Iterator

import aioice.ice
import aioice.stun
import aiortc
import av
import pytest
from aiortc import RTCPeerConnection, VideoStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender

from arcly.media import codecs
from arcly.protocols.webrtc import ice, passthrough
from arcly.protocols.webrtc.session import prefer
from arcly.protocols.webrtc.settings import IceServer, WebRtcSettings
from tests.support.webrtc import LOOPBACK, loopback_pc


class Picture(VideoStreamTrack):
    """Grey 160x120 frames at 30 fps (aiortc encodes them with libx264)."""

    async def recv(self) -> av.VideoFrame:  # type: ignore[override]
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(160, 120, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([128]) * plane.buffer_size)
        frame.pts, frame.time_base = pts, fractions.Fraction(time_base)
        return frame


def test_the_versions_and_internals_we_lean_on() -> None:
    assert aiortc.__version__.startswith("1.16."), "re-check passthrough.py and ice.py"
    assert importlib.metadata.version("aioice").startswith("0.13."), "re-check ice.py"
    assert aioice.stun.RETRY_RTO == 0.5  # set_consent_timeout counts on it
    assert callable(aioice.ice.server_reflexive_candidate)
    worker = inspect.signature(passthrough._original_worker)
    assert list(worker.parameters) == ["loop", "input_q", "output_q", "decode_error"]
    candidates = inspect.signature(aioice.ice.Connection.get_component_candidates)
    assert list(candidates.parameters) == ["self", "component", "addresses", "timeout"]
    assert hasattr(aioice.ice, "CONSENT_INTERVAL") and hasattr(aioice.ice, "CONSENT_FAILURES")


@pytest.fixture
def consent() -> Iterator[None]:
    saved = aioice.ice.CONSENT_INTERVAL, aioice.ice.CONSENT_FAILURES
    yield
    aioice.ice.CONSENT_INTERVAL, aioice.ice.CONSENT_FAILURES = saved


def test_the_consent_timeout_maps_onto_aioice(consent: None) -> None:
    ice.set_consent_timeout(30)
    assert aioice.ice.CONSENT_FAILURES * (aioice.ice.CONSENT_INTERVAL + 0.5) == 30
    ice.set_consent_timeout(3)
    assert aioice.ice.CONSENT_INTERVAL >= 0.25


async def _publish(server_settings: WebRtcSettings, ports: ice.PortAllocator
                   ) -> tuple[RTCPeerConnection, RTCPeerConnection]:
    """A client sending H.264 to a server that receives like a WHIP session."""
    client, server = loopback_pc(), loopback_pc()
    sender = client.addTransceiver(Picture(), direction="sendonly")
    prefer(sender, "video/H264")
    ice.configure_gathering(client, LOOPBACK, ice.PortAllocator(None))
    await client.setLocalDescription(await client.createOffer())
    receiver = server.addTransceiver("video", direction="recvonly")
    prefer(receiver, "video/H264")
    try:
        await server.setRemoteDescription(client.localDescription)
        passthrough.pass_through(receiver.receiver)
        ice.configure_gathering(server, server_settings, ports)
        await server.setLocalDescription(await server.createAnswer())
        await client.setRemoteDescription(server.localDescription)
    except BaseException:
        await client.close()
        await server.close()
        raise
    return client, server


async def test_encoded_h264_passes_through_and_keyframe_requests_reach_the_sender(
        monkeypatch: pytest.MonkeyPatch) -> None:
    requested = asyncio.Event()
    original = RTCRtpSender._send_keyframe
    monkeypatch.setattr(RTCRtpSender, "_send_keyframe",
                        lambda self: (requested.set(), original(self))[1])
    settings = WebRtcSettings(udp_ports=(42000, 42009), bind_host="127.0.0.1",
                              advertise_ips=("127.0.0.1",))
    client, server = await _publish(settings, ice.PortAllocator(settings.udp_ports))
    try:
        answer = server.localDescription.sdp
        candidate = next(line for line in answer.splitlines() if "typ host" in line).split()
        assert candidate[4] == "127.0.0.1" and 42000 <= int(candidate[5]) <= 42009
        receiver = server.getTransceivers()[0].receiver
        async with asyncio.timeout(10):
            frame = await receiver.track.recv()
        assert isinstance(frame, passthrough.EncodedFrame)  # not a decoded av.VideoFrame
        assert (frame.codec, frame.clock_rate) == ("H264", 90000)
        assert frame.timestamp == 0  # aiortc counts from the first frame (WHIP anchors on it)
        kinds = {unit[0] & 0x1F for unit in codecs.split_annexb(frame.data)}
        assert {7, 8, 5} <= kinds  # SPS, PPS and an IDR slice: a decoder can start here
        assert await passthrough.request_keyframe(receiver)
        async with asyncio.timeout(5):
            await requested.wait()
    finally:
        await client.close()
        await server.close()


async def test_a_range_with_no_free_port_is_a_clear_error() -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    settings = WebRtcSettings(udp_ports=(port, port), bind_host="127.0.0.1",
                              advertise_ips=("127.0.0.1",))
    try:
        with pytest.raises(ice.PortsExhausted, match="in use"):
            await _publish(settings, ice.PortAllocator(settings.udp_ports))
    finally:
        taken.close()


class StunResponder(asyncio.DatagramProtocol):
    """A STUN server (RFC 5389 binding only) that reports every client at ``public``."""

    def __init__(self, public: tuple[str, int]) -> None:
        self.public = public
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = aioice.stun.parse_message(data)
        response = aioice.stun.Message(message_method=aioice.stun.Method.BINDING,
                                       message_class=aioice.stun.Class.RESPONSE,
                                       transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = self.public
        assert self.transport is not None
        self.transport.sendto(bytes(response), addr)


async def test_a_stun_server_gives_a_reflexive_candidate_on_the_sessions_own_port() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: StunResponder(("203.0.113.9", 40123)), local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    settings = WebRtcSettings(bind_host="127.0.0.1", advertise_ips=("127.0.0.1",),
                              ice_servers=(IceServer(f"stun:127.0.0.1:{port}"),))
    client, server = loopback_pc(), ice.peer_connection(settings)
    try:
        client.addTransceiver("video", direction="sendonly")
        ice.configure_gathering(client, LOOPBACK, ice.PortAllocator(None))
        await client.setLocalDescription(await client.createOffer())
        await server.setRemoteDescription(client.localDescription)
        ice.configure_gathering(server, settings, ice.PortAllocator(None))
        await server.setLocalDescription(await server.createAnswer())
        lines = [line for line in server.localDescription.sdp.splitlines()
                 if line.startswith("a=candidate:")]
        assert any("203.0.113.9 40123 typ srflx" in line for line in lines), lines
        assert any(" 127.0.0.1 " in line and "typ host" in line for line in lines), lines
    finally:
        transport.close()
        await client.close()
        await server.close()
