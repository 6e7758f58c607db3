"""The SRT listener: MPEG-TS over SRT, published into streams and read out of them.

libsrt is driven the way the C servers drive it: one thread (``_Worker``) owns every libsrt call
after start-up — it loops ``srt_epoll_uwait`` (a socketpair wakes it), accepts, receives and
sends — and hands data to the event loop with ``call_soon_threadsafe``; ctypes releases the GIL
while libsrt works. Who may connect is decided in the listen callback, before the handshake
completes (libsrt calls it on its receive thread): the stream id is parsed, the auth provider
asked, and the publish started or the stream subscribed *there*, so a refusal is an SRT reject
with a reason (``X_UNAUTHORIZED``, ``X_NOTFOUND``, ``X_CONFLICT``…), never an accepted socket
that is dropped. What the callback prepared waits for the accept (and is given back if the
handshake then fails).

A publisher's datagrams go through ``TsDemuxer`` into the kernel; a reader gets its stream as
one continuous transport stream (``TsStreamWriter``), starting on the GOP cache's keyframe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from arcly.engine import (
    Action,
    ArclyError,
    AuthError,
    AuthGrant,
    AuthRequest,
    CloseReason,
    Engine,
    Frame,
    FrameKind,
    ListenError,
    PublishHandle,
    PublishRegistry,
    ShutdownToken,
    StreamBusy,
    StreamKey,
    StreamNotFound,
    Subscription,
)
from arcly.media.tsdemux import TsDemuxer
from arcly.media.tsstream import TsStreamWriter, messages
from arcly.protocols.listener import Admission

from . import libsrt
from .libsrt import EpollFlag, Incoming, Reject, RejectReason, SockOpt, SrtError
from .settings import SrtSettings
from .streamid import StreamIdError, parse

log = logging.getLogger("arcly.srt")

_PREPARED_TTL = 10.0  # seconds a callback's publish/subscription waits for its accept
# Messages queued for one reader before it counts as stalled: room for a start burst of a long
# GOP at a high bitrate (16 Mi messages of 1316 bytes would be 21 GB: 16384 is ~21 MB).
_MAX_SEND_QUEUE = 16384
_GATE_MS = 1000  # a publisher's frames wait at most this long for both configurations


@dataclass(slots=True)
class _Prepared:
    """A caller the listen callback let through, waiting for its accept: what it asked for
    (nothing is held for it yet: the passphrase is checked only after the callback)."""

    key: StreamKey
    peer: str
    publish: bool
    grant: AuthGrant | None = None
    expiry: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Connection:
    sock: int
    peer: str
    key: str
    ip: str = ""  # counted in Admission.connections while open
    handle: PublishHandle | None = None
    sub: Subscription | None = None
    demuxer: TsDemuxer | None = None
    gate: list[Frame] | None = None  # a publisher's first frames, until both configurations
    task: asyncio.Task[None] | None = None
    closed: bool = False
    started: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)


class SrtServer:
    """The ``srt`` protocol handler (see the module docstring)."""

    name = "srt"

    def __init__(self, host: str, port: int, settings: SrtSettings | None = None, *,
                 admission: Admission | None = None, engine: Engine | None = None) -> None:
        self.engine = engine  # what is published here, for the decisions made from memory
        self.host = host
        self.port = port
        self.settings = settings or SrtSettings()
        self.admission = admission or Admission()
        self.lib: libsrt.Lib | None = None
        self.listener = -1
        self.eid = -1
        self.addresses: list[tuple[str, int]] = []
        self.connections: dict[int, _Connection] = {}
        self._prepared: dict[int, _Prepared] = {}
        self._registry: PublishRegistry | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: _Worker | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False

    # -- start-up ------------------------------------------------------------------------

    async def bind(self) -> None:
        """Load libsrt and take the address (``ListenError`` if taken)."""
        lib = self.lib = libsrt.load()
        lib.forward_logs(level=3)  # errors: refusals are logged by us, with the reason
        sock = lib.create_socket()
        try:
            lib.setsockflag(sock, SockOpt.RCVSYN, False)
            lib.setsockflag(sock, SockOpt.SNDSYN, False)
            lib.setsockflag(sock, SockOpt.LATENCY, self.settings.latency_ms)
            if self.settings.passphrase:
                lib.setsockflag(sock, SockOpt.PASSPHRASE, self.settings.passphrase)
            lib.bind(sock, self.host, self.port)
            # Before listen(): a caller in between would skip the callback, and libsrt does
            # not report callers already waiting when a listener joins an epoll.
            lib.set_listen_callback(sock, self._on_handshake)
            self.eid = lib.epoll_create()
            lib.epoll_add_usock(self.eid, sock, EpollFlag.IN | EpollFlag.ERR)
            lib.listen(sock, 128)
        except SrtError as exc:
            lib.close(sock)
            if self.eid >= 0:
                lib.epoll_release(self.eid)
                self.eid = -1
            raise ListenError(self.name, self.host, self.port, exc) from None
        self.listener = sock
        self.addresses = [lib.getsockname(sock)]

    async def close(self) -> None:
        """Give the address back without serving (start-up failed elsewhere)."""
        if self.lib is not None and self.listener >= 0:
            self.lib.close(self.listener)
            self.listener = -1
            self.lib.epoll_release(self.eid)
            self.eid = -1

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
        if self.listener < 0:
            await self.bind()
        assert self.lib is not None
        self._registry = registry
        self._loop = asyncio.get_running_loop()
        self._worker = _Worker(self, self.lib, self._loop)
        self._worker.start()
        for host, port in self.addresses:
            log.info("listening protocol=%s address=%s:%d", self.name, host, port)
        try:
            await shutdown.wait()
        finally:
            self.closing = True  # no caller is admitted or attached from here on
            for prepared in self._prepared.values():
                if prepared.expiry is not None:
                    prepared.expiry.cancel()
            self._prepared.clear()
            for conn in list(self.connections.values()):
                self._finish(conn, CloseReason.SHUTDOWN)
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=5)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.to_thread(self._worker.stop)

    # -- admission: the listen callback (libsrt's thread) ---------------------------------

    def _on_handshake(self, incoming: Incoming) -> int:
        """libsrt's receive thread, which every connection on the port waits for meanwhile:
        decide from memory and the auth provider only (static keys and signed tokens answer
        at once); starting the publish or the subscription waits for the accept, after libsrt
        has checked the passphrase."""
        loop = self._loop
        if loop is None or self.closing or self._worker is None or self._worker.stopping:
            raise Reject(RejectReason.X_DOWN)
        future = asyncio.run_coroutine_threadsafe(self._admit(incoming), loop)
        try:
            code = future.result(self.settings.admit_timeout)
        except TimeoutError:
            # Not cancelled: the decision lands in _prepared and expires unused.
            log.warning("srt admission timed out peer=%s:%d", *incoming.peer)
            raise Reject(RejectReason.X_OVERLOAD) from None
        if code:
            raise Reject(code)
        return 0

    async def _admit(self, incoming: Incoming) -> int:
        """Decide on a caller; 0 lets it through (see ``_on_handshake``)."""
        peer = f"{incoming.peer[0]}:{incoming.peer[1]}"
        try:
            request = parse(incoming.streamid)
        except StreamIdError as exc:
            log.info("srt refused peer=%s reason=%s", peer, exc)
            return RejectReason.X_BAD_REQUEST
        registry = self._registry
        assert registry is not None
        key = request.key
        try:
            self._check(request.publish, key, peer)
            action = Action.PUBLISH if request.publish else Action.PLAY
            grant = await registry.authorize(AuthRequest(action, key, "srt", peer,
                                                         request.credentials))
            engine = self.engine
            local = engine.stream(key) if engine is not None else None
            if request.publish and local is not None and not local.relayed and \
                    not (grant is not None and grant.takeover):
                raise StreamBusy(f"{key} is already being published")
            if not request.publish and local is None and engine is not None and \
                    engine.upstream is None:
                raise StreamNotFound(f"{key} is not being published")
        except (ArclyError, _Refusal) as exc:
            code = _reject_code(exc, offered=any(request.credentials.values()))
            quiet = code != RejectReason.X_UNACCEPTABLE
            (log.info if quiet else log.warning)(
                "srt refused stream=%s peer=%s reason=%s", key, peer, exc)
            return code
        if self.closing:
            return RejectReason.X_DOWN
        prepared = _Prepared(key, peer, request.publish, grant)
        prepared.expiry = asyncio.get_running_loop().call_later(
            _PREPARED_TTL, self._prepared.pop, incoming.sock, None)
        self._prepared[incoming.sock] = prepared
        return 0

    def _check(self, publish: bool, key: StreamKey, peer: str) -> None:
        """The node's own limits and state, before anything is asked of anyone."""
        admission = self.admission
        if admission.draining:
            raise _Refusal("node is draining", RejectReason.X_DOWN)
        if publish and not admission.allow_publish:
            raise _Refusal("this node takes no publishers", RejectReason.X_FORBIDDEN)
        limits = admission.limits
        if admission.connections >= limits.max_connections:
            admission.refuse("max_connections", f"peer={peer}")
            raise _Refusal("too many connections", RejectReason.X_OVERLOAD)
        if publish and admission.publishers >= limits.max_publishers:
            admission.refuse("max_publishers", f"peer={peer} stream={key}")
            raise _Refusal("too many publishers", RejectReason.X_OVERLOAD)

    # -- connections (the event loop) ----------------------------------------------------

    def accepted(self, sock: int, peer: tuple[str, int]) -> None:
        """The worker accepted ``sock`` (handshake and passphrase done): start what its
        callback let through."""
        prepared = self._prepared.pop(sock, None)
        worker = self._worker
        assert worker is not None
        if prepared is None or self.closing:  # expired meanwhile, or the node is stopping
            worker.close(sock)
            return
        if prepared.expiry is not None:
            prepared.expiry.cancel()
        ip = prepared.peer.rpartition(":")[0]
        if not self.admission.open_connection(ip):  # per-IP and total caps, as for TCP
            worker.close(sock)
            return
        conn = _Connection(sock, prepared.peer, str(prepared.key), ip=ip,
                           started=asyncio.get_running_loop().time())
        self.connections[sock] = conn
        conn.task = self._spawn(self._start(conn, prepared))

    async def _start(self, conn: _Connection, prepared: _Prepared) -> None:
        """Open the publish or the subscription; a refusal now (the key was claimed
        elsewhere in the cluster, an edge found no such stream) closes the connection."""
        registry = self._registry
        assert registry is not None
        key, peer, admission = prepared.key, prepared.peer, self.admission
        try:
            if prepared.publish:
                if admission.publishers >= admission.limits.max_publishers:
                    admission.refuse("max_publishers", f"peer={peer} stream={key}")
                    raise _Refusal("too many publishers", RejectReason.X_OVERLOAD)
                grant = prepared.grant
                if grant is not None and grant.takeover and \
                        await registry.end_publish(key, CloseReason.TAKEN_OVER):
                    log.warning("publish takeover stream=%s peer=%s", key, peer)
                handle = await registry.start_publish(key, protocol="srt", peer=peer)
                admission.publishers += 1
                conn.handle = handle
                if conn.closed:  # the caller left meanwhile
                    admission.publishers -= 1
                    await registry.end_publish(key, "connection closed")
                    return
                conn.demuxer = TsDemuxer()
                conn.gate = []
                log.info("srt publish start stream=%s peer=%s", conn.key, conn.peer)
                await self._watch_publish(conn)
            else:
                sub = await registry.subscribe(key, protocol="srt", peer=peer)
                if not admission.admit_viewer(sub, peer):
                    raise _Refusal("too many viewers", RejectReason.X_OVERLOAD)
                conn.sub = sub
                if conn.closed:
                    sub.close("connection closed")
                    return
                log.info("srt play start stream=%s peer=%s", conn.key, conn.peer)
                await self._read(conn)
        except (ArclyError, _Refusal) as exc:
            log.info("srt refused after accept stream=%s peer=%s reason=%s", key, peer, exc)
            self._finish(conn, f"refused: {exc}")

    def received(self, sock: int, chunks: list[bytes]) -> None:
        conn = self.connections.get(sock)
        if conn is None or conn.demuxer is None or conn.handle is None:
            return
        frames = [frame for chunk in chunks for frame in conn.demuxer.feed(chunk)]
        self._publish(conn, frames)

    def _publish(self, conn: _Connection, frames: list[Frame], *, last: bool = False) -> None:
        """Into the stream, once both tracks' configurations are known: in a transport stream
        the first audio may follow the first keyframe, and HLS or a recording opened on that
        keyframe would have no audio track. Frames wait (at most ``_GATE_MS`` of them)."""
        handle = conn.handle
        assert handle is not None
        if conn.gate is not None:
            conn.gate += frames
            kinds = {f.kind for f in conn.gate if f.config}
            span = conn.gate[-1].timestamp - conn.gate[0].timestamp if conn.gate else 0
            if not (last or {FrameKind.VIDEO, FrameKind.AUDIO} <= kinds or span >= _GATE_MS):
                return
            frames = [f for f in conn.gate if f.config] + [f for f in conn.gate
                                                           if not f.config]
            conn.gate = None
        for frame in frames:
            if not handle.publish_frame(frame):
                return

    def worker_failed(self) -> None:
        """The worker thread died: every connection ends, no caller is taken any more."""
        self.closing = True
        for conn in list(self.connections.values()):
            self._finish(conn, "srt worker failed")

    def broken(self, sock: int, reason: str) -> None:
        conn = self.connections.get(sock)
        if conn is not None:
            self._finish(conn, reason)

    async def _watch_publish(self, conn: _Connection) -> None:
        assert conn.handle is not None
        await conn.handle.ended.wait()
        self._finish(conn, conn.handle.end_reason or "publish ended")

    async def _read(self, conn: _Connection) -> None:
        """Deliver a reader's subscription as a continuous transport stream."""
        sub, worker = conn.sub, self._worker
        assert sub is not None and worker is not None
        writer = TsStreamWriter()
        reason = "ended"
        try:
            while batch := await sub.next_batch():
                data = b"".join([writer.write(frame) for frame in batch])
                if data and not worker.send(conn.sock, messages(data)):
                    reason = CloseReason.SLOW_VIEWER
                    return
            reason = sub.close_reason or "ended"
        finally:
            self._finish(conn, reason)

    def _finish(self, conn: _Connection, reason: str) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.connections.pop(conn.sock, None)
        if conn.ip:
            self.admission.close_connection(conn.ip)
        if self._worker is not None:
            self._worker.close(conn.sock)
        if conn.sub is not None:
            conn.sub.close(reason)
            log.info("srt play end stream=%s peer=%s reason=%r", conn.key, conn.peer, reason)
        if conn.handle is not None:
            if conn.demuxer is not None:  # the last frame waits for a successor: send it
                self._publish(conn, conn.demuxer.flush(), last=True)
            self.admission.publishers -= 1
            handle = conn.handle
            if not handle.ended.cancelled and self._registry is not None:
                registry = self._registry
                self._spawn(_end(registry, handle, "unpublished" if reason in (
                    "connection closed", "connection broken") else reason))
            log.info("srt publish end stream=%s peer=%s reason=%r", conn.key, conn.peer,
                     reason)
        if conn.task is not None and conn.task is not asyncio.current_task():
            conn.task.cancel()

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def statistics(self) -> list[dict[str, Any]]:
        """Each connection's SRT figures (retransmissions, loss, RTT...) from libsrt."""
        worker = self._worker
        if worker is None:
            return []
        conns = list(self.connections.values())
        try:
            async with asyncio.timeout(2):
                figures = await asyncio.gather(*(worker.stats(c.sock) for c in conns))
        except TimeoutError:
            figures = [None] * len(conns)
        loop = asyncio.get_running_loop()
        out = []
        for conn, stats in zip(conns, figures, strict=True):
            entry: dict[str, Any] = {
                "stream": conn.key, "peer": conn.peer,
                "mode": "publish" if conn.handle is not None else "read",
                "age_s": round(loop.time() - conn.started, 1)}
            if stats is not None:
                entry.update(stats)
            if conn.demuxer is not None:
                entry["demux"] = dataclasses.asdict(conn.demuxer.stats)
            out.append(entry)
        return out


def _reject_code(exc: Exception, *, offered: bool) -> int:
    """The SRT rejection reason for a refusal (1000 + the HTTP status it would be)."""
    if isinstance(exc, _Refusal):
        return exc.code
    if isinstance(exc, AuthError):
        return RejectReason.X_FORBIDDEN if offered else RejectReason.X_UNAUTHORIZED
    if isinstance(exc, StreamNotFound):
        return RejectReason.X_NOTFOUND
    if isinstance(exc, StreamBusy):
        return RejectReason.X_CONFLICT
    return RejectReason.X_UNACCEPTABLE


async def _end(registry: PublishRegistry, handle: PublishHandle, reason: str) -> None:
    if not handle.ended.cancelled:
        await registry.end_publish(handle.key, reason)


class _Refusal(Exception):
    def __init__(self, why: str, code: int) -> None:
        super().__init__(why)
        self.code = code


class _Worker:
    """The one thread that calls libsrt (see the module docstring)."""

    def __init__(self, server: SrtServer, lib: libsrt.Lib,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.lib = lib
        self.loop = loop
        self.stopping = False
        self.eid = server.eid
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        lib.epoll_add_ssock(self.eid, self._wake_r.fileno(), EpollFlag.IN)
        self._commands: deque[tuple[str, int, Any]] = deque()
        self._queued: dict[int, int] = {}  # messages waiting per socket (under _lock)
        self._lock = threading.Lock()
        self._watched: set[int] = set()  # accepted sockets in the epoll
        self._slow: set[int] = set()  # readers cut for a full send buffer
        self._thread = threading.Thread(target=self._run, name="srt", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Close every socket and end the thread (called off the loop)."""
        self.stopping = True
        self._wake()
        self._thread.join(5)

    # -- from the loop -------------------------------------------------------------------

    def send(self, sock: int, chunks: list[bytes]) -> bool:
        """Queue ``chunks`` for ``sock``; False if its queue is full (a stalled reader)."""
        with self._lock:
            queued = self._queued.get(sock, 0) + len(chunks)
            if queued > _MAX_SEND_QUEUE:
                return False
            self._queued[sock] = queued
        self._commands.append(("send", sock, chunks))
        self._wake()
        return True

    def close(self, sock: int) -> None:
        self._commands.append(("close", sock, None))
        self._wake()

    def stats(self, sock: int) -> asyncio.Future[dict[str, Any] | None]:
        future: asyncio.Future[dict[str, Any] | None] = self.loop.create_future()
        self._commands.append(("stats", sock, future))
        self._wake()
        return future

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\x00")

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        lib = self.lib
        listener = self.server.listener
        try:
            while not self.stopping:
                try:
                    ready = lib.epoll_wait(self.eid, 100)
                except SrtError as exc:
                    if exc.code != libsrt.ErrorCode.ETIMEOUT:
                        log.warning("srt epoll error=%s", exc)
                    ready = libsrt.EpollReady()
                if ready.sys_readable:
                    with contextlib.suppress(BlockingIOError, OSError):
                        while self._wake_r.recv(4096):
                            pass
                for sock in ready.readable:
                    if sock == listener:
                        self._accept()
                    else:
                        self._receive(sock)
                self._run_commands()
        except Exception:
            log.exception("srt worker failed: SRT connections end")
            self.loop.call_soon_threadsafe(self.server.worker_failed)
        finally:
            self._shutdown()

    def _accept(self) -> None:
        # One per wake-up: the epoll is level-triggered, so more pending callers wake it
        # again (an accept with nothing pending would make libsrt log an error).
        lib = self.lib
        try:
            sock, peer = lib.accept(self.server.listener)
        except SrtError as exc:
            if not exc.would_block:
                log.info("srt accept error=%s", exc)
            return
        try:
            lib.setsockflag(sock, SockOpt.RCVSYN, False)
            lib.setsockflag(sock, SockOpt.SNDSYN, False)
            lib.epoll_add_usock(self.eid, sock, EpollFlag.IN | EpollFlag.ERR)
        except SrtError as exc:
            log.info("srt socket setup failed error=%s", exc)
            lib.close(sock)
            return
        self._watched.add(sock)
        self.loop.call_soon_threadsafe(self.server.accepted, sock, peer)

    def _unwatch(self, sock: int) -> None:
        if sock in self._watched:
            self._watched.discard(sock)
            with contextlib.suppress(SrtError):
                self.lib.epoll_remove_usock(self.eid, sock)

    def _receive(self, sock: int) -> None:
        chunks: list[bytes] = []
        reason = ""
        while True:
            try:
                data = self.lib.recvmsg(sock)
            except SrtError as exc:
                if not exc.would_block:
                    reason = "connection broken" if exc.code in (
                        libsrt.ErrorCode.ECONNLOST, libsrt.ErrorCode.ENOCONN) else \
                        f"connection error: {exc}"
                break
            if not data:
                reason = "connection closed"
                break
            chunks.append(data)
        if chunks:
            self.loop.call_soon_threadsafe(self.server.received, sock, chunks)
        if reason:
            self._unwatch(sock)
            self.loop.call_soon_threadsafe(self.server.broken, sock, reason)

    def _run_commands(self) -> None:
        lib = self.lib
        while self._commands:
            command, sock, arg = self._commands.popleft()
            if command == "send":
                with self._lock:
                    self._queued[sock] = max(0, self._queued.get(sock, 0) - len(arg))
                if sock in self._slow:
                    continue  # cut already: no gap-ridden tail before the close
                for chunk in arg:
                    try:
                        lib.sendmsg(sock, chunk)
                    except SrtError as exc:
                        if not exc.would_block:
                            break
                        # The send buffer is full: the reader cannot keep up; cut it.
                        self._slow.add(sock)
                        self.loop.call_soon_threadsafe(self.server.broken, sock,
                                                       CloseReason.SLOW_VIEWER)
                        break
            elif command == "close":
                self._slow.discard(sock)
                with self._lock:
                    self._queued.pop(sock, None)
                self._unwatch(sock)
                with contextlib.suppress(SrtError):
                    lib.close(sock)
            elif command == "stats":
                try:
                    stats = lib.stats(sock)
                    result: dict[str, Any] | None = {
                        "rtt_ms": round(stats.ms_rtt, 2),
                        "packets_received": stats.pkt_recv_total,
                        "packets_sent": stats.pkt_sent_total,
                        "packets_lost_received": stats.pkt_rcv_loss_total,
                        "packets_lost_sent": stats.pkt_snd_loss_total,
                        "packets_retransmitted": stats.pkt_retrans_total,
                        # never cleared (bstats without clear): a total, like the others
                        "packets_retransmitted_received": stats.pkt_rcv_retrans,
                        "packets_dropped_received": stats.pkt_rcv_drop_total,
                        "packets_dropped_sent": stats.pkt_snd_drop_total,
                        "mbps_received": round(stats.mbps_recv_rate, 3),
                        "mbps_sent": round(stats.mbps_send_rate, 3),
                        "latency_ms": stats.ms_rcv_tsbpd_delay,
                        "peer_latency_ms": stats.ms_snd_tsbpd_delay}
                except SrtError:
                    result = None
                self.loop.call_soon_threadsafe(_settle, arg, result)

    def _shutdown(self) -> None:
        lib = self.lib
        for sock in list(self._watched):
            with contextlib.suppress(SrtError):
                lib.close(sock)
        self._run_commands()
        with contextlib.suppress(SrtError):
            lib.close(self.server.listener)
        with contextlib.suppress(SrtError):
            lib.epoll_release(self.eid)
        self._wake_r.close()
        self._wake_w.close()


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
