"""What every TCP listener of the node shares: the connection caps (``Limits``, ``Admission``)
and the listener skeleton (``Listener``): bind and log what was bound, admit each connection,
track it until it ends, and on shutdown stop accepting, let the protocol say goodbye, wait for
connections to wind down and abort the ones that will not.

A protocol server (RTMP, HTTP, ...) is a ``Listener`` plus a per-connection handler; it never
writes its own accept loop or shutdown sequence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from arcly.engine import ListenError, Refusals, ShutdownToken, Subscription

log = logging.getLogger("arcly.listener")


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps that keep a node alive under abuse (the defaults of the ``--max-*`` flags)."""

    max_connections: int = 10_000
    max_connections_per_ip: int = 256
    max_publishers: int = 1_000
    max_viewers_per_stream: int = 10_000
    listen_backlog: int = 0  # each listener's accept queue; 0: the system's (somaxconn)


class Admission:
    """Whether listeners take new connections and sessions — one object shared by a node's
    listeners. Edges take no publishers; a draining node takes nothing new; connection,
    publisher and per-stream viewer caps keep a node alive under abuse. Every refusal is
    counted in ``refused`` (by limit) and logged at most once a second per limit."""

    __slots__ = ("_per_ip", "_refusals", "allow_publish", "connections", "draining", "limits",
                 "publishers", "refuse", "refused")

    def __init__(self, limits: Limits | None = None, *, allow_publish: bool = True) -> None:
        self.limits = limits or Limits()
        self.allow_publish = allow_publish
        self.draining = False
        self.connections = 0
        self.publishers = 0  # live publishers of every protocol (RTMP, WHIP, ...)
        self._per_ip: dict[str, int] = {}
        self._refusals = Refusals(log)
        self.refused = self._refusals.counts  # by limit
        self.refuse = self._refusals.hit  # (limit, detail): counted and logged

    def refusals(self) -> dict[str, int]:
        """Refusals so far for every limit, zero included (a metric with all its labels)."""
        every = {f.name: 0 for f in dataclasses.fields(Limits) if f.name.startswith("max_")}
        return {**every, **self.refused}  # and limits kept elsewhere (the kernel's)

    def open_connection(self, ip: str) -> bool:
        """Count a new connection from ``ip``; False (and counted) when over a limit."""
        if self.connections >= self.limits.max_connections:
            self.refuse("max_connections", f"peer={ip} connections={self.connections}")
            return False
        per_ip = self._per_ip.get(ip, 0)
        if per_ip >= self.limits.max_connections_per_ip:
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

    def admit_viewer(self, sub: Subscription, peer: str) -> bool:
        """Keep ``sub`` if its stream is within the per-stream viewer cap; otherwise close it,
        count the refusal and return False (the caller tells the client in its protocol)."""
        if len(sub.stream.subscribers) <= self.limits.max_viewers_per_stream:
            return True
        sub.close("refused: too many viewers")
        self.refuse("max_viewers_per_stream", f"peer={peer} stream={sub.key}")
        return False


ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
# A listener's synchronous answer to a read, before its handler task sees it (see ``Listener``).
Shortcut = Callable[[asyncio.StreamReader, bytes], bool]


def unread(reader: asyncio.StreamReader) -> bytearray:
    """What ``reader`` received and nobody read yet: its own buffer, live (asyncio has no
    public way to it; ``_buffer`` is a bytearray in every version)."""
    buffer: bytearray = getattr(reader, "_buffer", bytearray())
    return buffer


class _ShortcutProtocol(asyncio.StreamReaderProtocol):
    """A connection whose reads go to the listener's shortcut first; what it does not answer
    goes to the handler's stream as usual."""

    def __init__(self, reader: asyncio.StreamReader, handle: ClientHandler,
                 shortcut: Shortcut) -> None:
        super().__init__(reader, handle)
        self._reader = reader
        self._shortcut: Shortcut | None = shortcut

    def data_received(self, data: bytes) -> None:
        taken = False
        if self._shortcut is not None:
            try:
                taken = self._shortcut(self._reader, data)
            except Exception:  # a bug there must not cost the connection: the handler
                log.exception("listener shortcut failed; off for this connection")
                self._shortcut = None  # reads it, and this one's later reads
        if not taken:
            super().data_received(data)


def system_backlog() -> int:
    """The kernel's cap on a listen queue (``net.core.somaxconn``): the longest queue asking
    for more than it gets. A queue of asyncio's default 100 drops SYNs under a reconnect storm
    (an edge dies and its viewers come back at once), and each dropped SYN costs the client a
    1 s retransmission."""
    try:
        return max(128, int(Path("/proc/sys/net/core/somaxconn").read_text()))
    except (OSError, ValueError):
        return 4096


class Listener:
    """The accept side of one protocol server.

    ``bind`` takes ``host:port`` (port 0 picks a free one) with a listen queue of ``backlog``
    (0: the system's maximum); the node binds every listener before it serves any, so a taken
    port is one clear error at start-up. ``serve`` starts listening, logs every address (the
    line tests and operators read to find the port), admits each connection against the node's
    ``Admission`` and runs ``handle`` for it. When ``shutdown`` fires it stops accepting, awaits
    ``goodbye`` (the protocol ends its sessions politely), gives connections ``grace`` seconds
    to finish, then aborts what is left. ``shortcut`` (optional) sees each read before the
    connection's handler does and returns True when it answered the read itself (e.g. an HLS
    player's poll, answered without waking the handler's task)."""

    def __init__(self, protocol: str, host: str, port: int, admission: Admission, *,
                 read_limit: int, grace: float = 5.0, backlog: int = 0,
                 shortcut: Shortcut | None = None) -> None:
        self.protocol = protocol
        self.shortcut = shortcut
        self.host = host
        self.port = port
        self.admission = admission
        self.read_limit = read_limit
        self.grace = grace
        self.backlog = backlog or system_backlog()
        self.addresses: list[tuple[str, int]] = []
        self.ready = asyncio.Event()
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._handle: ClientHandler | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def bind(self) -> None:
        """Take the address (idempotent); raises ``ListenError``."""
        if self._server is not None:
            return
        try:
            if self.shortcut is None:
                self._server = await asyncio.start_server(
                    self._on_client, self.host, self.port, limit=self.read_limit,
                    backlog=self.backlog, start_serving=False)
            else:
                shortcut = self.shortcut

                def connection() -> _ShortcutProtocol:  # what start_server builds, plus it
                    return _ShortcutProtocol(asyncio.StreamReader(self.read_limit),
                                             self._on_client, shortcut)

                self._server = await asyncio.get_running_loop().create_server(
                    connection, self.host, self.port, backlog=self.backlog,
                    start_serving=False)
        except OSError as exc:
            raise ListenError(self.protocol, self.host, self.port, exc) from None
        self.addresses = [sock.getsockname()[:2] for sock in self._server.sockets]

    async def _on_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        ip = peer_ip(writer)
        if self._handle is None or not self.admission.open_connection(ip):
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            await self._handle(reader, writer)
        finally:
            self._connections.pop(task, None)
            self.admission.close_connection(ip)

    async def close(self) -> None:
        """Give the address back without serving (start-up failed elsewhere)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def serve(self, handle: ClientHandler, shutdown: ShutdownToken, *,
                    goodbye: Callable[[], Awaitable[None]] | None = None) -> None:
        await self.bind()
        server = self._server
        assert server is not None
        self._handle = handle
        await server.start_serving()  # listen(): connections are taken from here on
        for bound_host, bound_port in self.addresses:
            log.info("listening protocol=%s address=%s:%d", self.protocol, bound_host,
                     bound_port)
        self.ready.set()
        try:
            await shutdown.wait()
        finally:
            self.stopping = True
            server.close()  # stop accepting first
            if goodbye is not None:
                await goodbye()
            await self._wind_down()

    async def _wind_down(self) -> None:
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=self.grace)
        for writer in list(self._connections.values()):
            writer.transport.abort()
        if self._connections:  # aborted sockets end their handlers within a loop turn or two
            await asyncio.wait(list(self._connections), timeout=1.0)
        for task in list(self._connections):
            task.cancel()


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


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address, ``[v6]`` or ``localhost``; no port) is loopback."""
    text = host.strip().removeprefix("[").removesuffix("]")
    if text == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


class ListeningHandler:
    """A protocol handler serving one ``Listener``: the node binds every listener before any
    serves (a taken port is one clear error at start-up) and closes them if start-up fails."""

    listener: Listener

    async def bind(self) -> None:
        await self.listener.bind()

    async def close(self) -> None:
        await self.listener.close()
