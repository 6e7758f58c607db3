"""What every TCP listener of the node shares: binding (and logging what was bound) and
closing a connection without hanging on a peer that never reads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("arcly.listener")

class Admission:
    """Whether listeners take new connections and sessions — one object shared by a node's
    listeners. Edges take no publishers; a draining node takes nothing new; connection,
    publisher and per-stream viewer caps keep a node alive under abuse. Every refusal is
    counted in ``refused`` (by limit) and logged at most once a second per limit."""

    __slots__ = ("_last_log", "_per_ip", "allow_publish", "connections", "draining",
                 "max_connections", "max_connections_per_ip", "max_publishers",
                 "max_viewers_per_stream", "refused")

    def __init__(self, *, allow_publish: bool = True, max_connections: int = 10_000,
                 max_connections_per_ip: int = 256, max_publishers: int = 1_000,
                 max_viewers_per_stream: int = 10_000) -> None:
        self.allow_publish = allow_publish
        self.draining = False
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.max_publishers = max_publishers
        self.max_viewers_per_stream = max_viewers_per_stream
        self.connections = 0
        self._per_ip: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self._last_log: dict[str, float] = {}

    def refuse(self, limit: str, detail: str) -> None:
        self.refused[limit] = self.refused.get(limit, 0) + 1
        now = time.monotonic()
        if now - self._last_log.get(limit, 0.0) >= 1.0:
            self._last_log[limit] = now
            log.warning("limit hit limit=%s %s refused_total=%d", limit, detail,
                        self.refused[limit])

    def open_connection(self, ip: str) -> bool:
        """Count a new connection from ``ip``; False (and counted) when over a limit."""
        if self.connections >= self.max_connections:
            self.refuse("max_connections", f"peer={ip} connections={self.connections}")
            return False
        per_ip = self._per_ip.get(ip, 0)
        if per_ip >= self.max_connections_per_ip:
            self.refuse("max_connections_per_ip", f"peer={ip} connections={per_ip}")
            return False
        self.connections += 1
        self._per_ip[ip] = per_ip + 1
        return True

    def close_connection(self, ip: str) -> None:
        self.connections -= 1
        left = self._per_ip.get(ip, 1) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)


ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def start_listener(protocol: str, host: str, port: int, on_client: ClientHandler,
                         *, limit: int) -> tuple[asyncio.Server, list[tuple[str, int]]]:
    """Bind ``host:port`` (port 0 picks a free one) and log every bound address — the line
    tests and operators read to find the port."""
    server = await asyncio.start_server(on_client, host, port, limit=limit)
    addresses = [sock.getsockname()[:2] for sock in server.sockets]
    for bound_host, bound_port in addresses:
        log.info("listening protocol=%s address=%s:%d", protocol, bound_host, bound_port)
    return server, addresses


async def close_writer(writer: asyncio.StreamWriter, grace: float = 2.0) -> None:
    """Close gracefully (flushing what is buffered), and abort if the peer will not let us."""
    writer.close()
    try:
        async with asyncio.timeout(grace):
            await writer.wait_closed()
    except (TimeoutError, ConnectionError, OSError):
        writer.transport.abort()


def peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


def peer_ip(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)
