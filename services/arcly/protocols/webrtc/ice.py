"""ICE for the node's peer connections: a UDP port range, advertised addresses, STUN/TURN.

aioice binds one socket per host address on an ephemeral port and announces the machine's own
addresses; a node behind a LoadBalancer or NodePort range needs a fixed port range and the
address clients can reach. aioice has no option for either, so this module replaces host
candidate gathering on each connection it creates (an instance attribute: aioice's module
and other connections in the process are untouched). Everything here leans on aioice 0.13's
internals (``Connection.get_component_candidates``, ``StunProtocol``, ``_protocols``);
``tests/unit/webrtc/test_aiortc_pins.py`` pins them.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import logging
import random
import socket
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import aioice.ice
import aioice.stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from .settings import WebRtcSettings

log = logging.getLogger("arcly.webrtc")

_UDP_BUFFER = 1024 * 1024
_configured: weakref.WeakSet[aioice.ice.Connection] = weakref.WeakSet()


class PortsExhausted(OSError):
    """Every port of the configured UDP range is in use."""


class PortAllocator:
    """Hands out ports of the range round-robin from a random start, so a port just released
    (whose old peer may still send to it) is the last to be reused."""

    def __init__(self, ports: tuple[int, int] | None) -> None:
        self.ports = ports
        if ports is None:
            self._cycle: itertools.cycle[int] | None = None
            self.size = 0
        else:
            low, high = ports
            self.size = high - low + 1
            start = random.randrange(self.size)
            order = [low + (start + i) % self.size for i in range(self.size)]
            self._cycle = itertools.cycle(order)

    def candidates(self) -> list[int]:
        """The ports to try, in order (``[0]``: let the kernel pick)."""
        if self._cycle is None:
            return [0]
        return [next(self._cycle) for _ in range(self.size)]


def peer_connection(settings: WebRtcSettings) -> RTCPeerConnection:
    """A peer connection with the configured STUN/TURN servers (none: no lookups at all;
    aiortc would otherwise ask Google's STUN server). Call ``configure_gathering`` before its
    local description is set."""
    servers = [RTCIceServer(urls=s.url, username=s.username or None,
                            credential=s.credential or None) for s in settings.ice_servers]
    return RTCPeerConnection(RTCConfiguration(iceServers=servers))


def configure_gathering(pc: RTCPeerConnection, settings: WebRtcSettings,
                        ports: PortAllocator) -> None:
    """Replace host-candidate gathering on every ICE connection ``pc`` has now (call after
    ``setRemoteDescription``, before ``setLocalDescription``: that is when aiortc gathers)."""
    for transceiver in pc.getTransceivers():
        connection = transceiver.sender.transport.transport.iceGatherer._connection
        if connection in _configured:
            continue  # bundled transceivers share one connection
        _configured.add(connection)
        gather = _gatherer(connection, settings, ports)
        connection.get_component_candidates = gather  # type: ignore[method-assign,assignment]


def _gatherer(connection: aioice.ice.Connection, settings: WebRtcSettings,
              ports: PortAllocator) -> Callable[[int, list[str], int],
                                                 Coroutine[Any, Any, list[Candidate]]]:
    original = connection.get_component_candidates

    async def gather(component: int, addresses: list[str],
                     timeout: int = 5) -> list[Candidate]:  # noqa: ASYNC109 (aioice's)
        protocol = await _bind(connection, settings.bind_host, ports)
        connection._protocols.append(protocol)
        host, port = protocol.transport.get_extra_info("sockname")[:2]
        version = ipaddress.ip_address(host).version
        advertised = list(settings.advertise_ips)
        if not advertised:  # the bound address, or every address of an unspecified bind
            specific = settings.bind_host not in ("", "0.0.0.0", "::")
            advertised = [settings.bind_host] if specific else addresses
        # The socket speaks one family: addresses of the other could never be answered.
        advertised = [a for a in advertised if ipaddress.ip_address(a).version == version]
        if not advertised:
            advertised = ["127.0.0.1" if version == 4 else "::1"]
        candidates: list[Candidate] = []
        for index, address in enumerate(advertised):
            candidate = Candidate(
                foundation=candidate_foundation("host", "udp", address),
                component=component, transport="udp",
                # Equal addresses keep their order of preference in the answer.
                priority=candidate_priority(component, "host") - index,
                host=address, port=port, type="host")
            candidates.append(candidate)
        # aioice pairs remote candidates with each protocol's local candidate: the first
        # advertised address stands for the socket.
        protocol.local_candidate = candidates[0]
        log.debug("webrtc ice bound=%s:%s advertised=%s", host, port, ",".join(advertised))
        if connection.stun_server and version == 4:  # our public address, on our socket
            try:
                async with asyncio.timeout(timeout):
                    reflexive, _ = await aioice.ice.server_reflexive_candidate(
                        protocol, connection.stun_server)
                candidates.append(reflexive)
            except (TimeoutError, OSError, aioice.stun.TransactionError) as exc:
                log.warning("webrtc STUN query failed server=%s:%s error=%r",
                            *connection.stun_server, exc)
        if connection.turn_server:  # a relayed candidate, on a socket aioice opens for it
            candidates += [c for c in await original(component, [], timeout)
                           if c.type == "relay"]
        return candidates

    return gather


async def _bind(connection: aioice.ice.Connection, host: str,
                ports: PortAllocator) -> aioice.ice.StunProtocol:
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for port in ports.candidates():
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: aioice.ice.StunProtocol(connection), local_addr=(host, port))
        except OSError as exc:  # taken (uvloop says so without an errno): try the next
            last = exc
            if ports.ports is None:
                raise
            continue
        sock: Any = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_BUFFER)
            except OSError:
                pass
        return protocol
    raise PortsExhausted(errno.EADDRINUSE,
                         f"every UDP port of {ports.ports} is in use ({last})")


def set_consent_timeout(seconds: float) -> None:
    """How long a session lives without answers to ICE consent checks (RFC 7675: 30 s): how
    soon a viewer whose browser vanished is cleaned up. aioice sends a check every
    ``CONSENT_INTERVAL`` seconds (±20 %), waits for its answer up to the STUN RTO, and gives up
    after ``CONSENT_FAILURES`` checks in a row without one."""
    failures = 6
    interval = max(0.25, seconds / failures - aioice.stun.RETRY_RTO)
    aioice.ice.CONSENT_INTERVAL = interval  # type: ignore[assignment]
    aioice.ice.CONSENT_FAILURES = failures
