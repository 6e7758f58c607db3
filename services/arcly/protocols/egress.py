"""Delivering a subscription to a socket: shared by every playback protocol.

The viewer's own loop takes whole batches from its subscription and hands the transport the
already-encoded, shared bytes of every frame in one ``writelines`` call. It only awaits the
socket when the kernel-side buffer is above its high-water mark; a socket that stays blocked
longer than ``stall_timeout`` is a dead viewer and is cut.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from arcly.engine import Frame, Subscription


def limit_send_buffer(writer: asyncio.StreamWriter, size: int) -> None:
    """Cap the kernel send buffer of a viewer's socket. Left alone, Linux autotunes it to
    megabytes on fast links, hiding a stalled viewer (and its memory) from our backlog caps."""
    sock = writer.get_extra_info("socket")
    if sock is not None and size > 0:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except OSError:
            pass


async def deliver(sub: Subscription, writer: asyncio.StreamWriter,
                  encode: Callable[[Frame], bytes], *, stall_timeout: float) -> str:
    """Write ``sub``'s frames to ``writer`` until the stream ends, the viewer falls behind or
    goes away. Returns the reason delivery stopped."""
    transport = writer.transport
    _, high = transport.get_write_buffer_limits()
    while True:
        batch = await sub.next_batch()
        if not batch:
            return sub.close_reason or "ended"
        if transport.is_closing():
            return "client closed"
        transport.writelines([encode(frame) for frame in batch])
        if transport.get_write_buffer_size() > high:
            try:
                await asyncio.wait_for(writer.drain(), timeout=stall_timeout)
            except TimeoutError:
                return "slow viewer"
            except ConnectionError:
                return "client closed"
