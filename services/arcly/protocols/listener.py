"""What every TCP listener of the node shares: binding (and logging what was bound) and
closing a connection without hanging on a peer that never reads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("arcly.listener")

class Admission:
    """Whether a listener takes new sessions: edges take no publishers, and a draining node
    takes nothing new while its existing sessions finish."""

    __slots__ = ("allow_publish", "draining")

    def __init__(self, *, allow_publish: bool = True) -> None:
        self.allow_publish = allow_publish
        self.draining = False


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
