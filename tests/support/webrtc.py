"""WHEP/WHIP clients for tests: aiortc peer connections that stay on loopback.

``python -m tests.support.webrtc BASE KEY`` opens one WHEP session, prints ``connected`` and waits
to be killed (a viewer whose browser vanishes without a DELETE).
"""

from __future__ import annotations

import asyncio
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from arcly.protocols.webrtc import ice
from arcly.protocols.webrtc.passthrough import EncodedFrame, pass_through
from arcly.protocols.webrtc.settings import WebRtcSettings

# Candidates on 127.0.0.1 only: tests never leave loopback.
LOOPBACK = WebRtcSettings(bind_host="127.0.0.1", advertise_ips=("127.0.0.1",))


def loopback_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def offer(pc: RTCPeerConnection, kinds: tuple[str, ...] = ("video", "audio"),
                direction: str = "recvonly") -> str:
    """Add a transceiver per kind and make the offer (with loopback candidates)."""
    for kind in kinds:
        pc.addTransceiver(kind, direction=direction)
    ice.configure_gathering(pc, LOOPBACK, ice.PortAllocator(None))
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def throwaway_offer(kinds: tuple[str, ...] = ("video", "audio"),
                          direction: str = "recvonly") -> str:
    pc = loopback_pc()
    try:
        return await offer(pc, kinds, direction)
    finally:
        await pc.close()


def post(url: str, body: str, content_type: str = "application/sdp",
         headers: dict[str, str] | None = None,
         method: str = "POST") -> tuple[int, dict[str, str], str]:
    """One request; (status, headers, body) whatever the status."""
    request = urllib.request.Request(url, data=body.encode(), method=method,
                                     headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


@dataclass
class WhepViewer:
    """A connected WHEP session: encoded frames (no decoding) with their arrival times."""

    pc: RTCPeerConnection
    location: str
    base: str
    frames: dict[str, list[tuple[float, EncodedFrame]]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self, *, delete: bool = True) -> int:
        status = 0
        if delete:
            async with aiohttp.ClientSession() as session, \
                    session.delete(self.base + self.location) as response:
                status = response.status
        for task in self.tasks:
            task.cancel()
        await self.pc.close()
        return status


async def whep(base: str, key: str, *, query: str = "", timeout: float = 10.0) -> WhepViewer:
    """Open a WHEP session on ``base`` (``http://127.0.0.1:PORT``) for ``key`` and wait until
    ICE/DTLS connected; frames are recorded as they arrive, undecoded."""
    pc = loopback_pc()
    sdp = await offer(pc)
    async with aiohttp.ClientSession() as session, \
            session.post(f"{base}/{key}/whep{query}", data=sdp,
                         headers={"Content-Type": "application/sdp"}) as response:
        answer = await response.text()
        if response.status != 201:
            await pc.close()
            raise AssertionError(f"WHEP answered {response.status}: {answer}")
        location = response.headers["Location"]
    viewer = WhepViewer(pc, location, base)
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    for transceiver in pc.getTransceivers():  # the tracks exist now; RTP has not started
        pass_through(transceiver.receiver)
    loop = asyncio.get_running_loop()

    async def consume(kind: str) -> None:
        transceiver = next(t for t in pc.getTransceivers() if t.kind == kind)
        track = transceiver.receiver.track
        got = viewer.frames.setdefault(kind, [])
        while True:
            frame = await track.recv()
            if isinstance(frame, EncodedFrame):
                got.append((loop.time(), frame))

    viewer.tasks += [asyncio.create_task(consume(kind)) for kind in ("video", "audio")]
    connected = asyncio.Event()

    def state_changed() -> None:
        if pc.connectionState == "connected":
            connected.set()

    pc.on("connectionstatechange", state_changed)
    state_changed()
    async with asyncio.timeout(timeout):
        await connected.wait()
    return viewer


async def _hold(base: str, key: str) -> None:
    viewer = await whep(base, key)
    print("connected", flush=True)
    await asyncio.sleep(3600)
    await viewer.close()


if __name__ == "__main__":
    asyncio.run(_hold(sys.argv[1], sys.argv[2]))
