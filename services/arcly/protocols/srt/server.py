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
    AuthRequest,
    CloseReason,
    Frame,
    FrameKind,
    ListenError,
    PublishHandle,
    PublishRegistry,
    ShutdownToken,
    StreamBusy,
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
_MAX_SEND_QUEUE = 4096  # messages queued for one reader before it counts as stalled
_GATE_MS = 1000  # a publisher's frames wait at most this long for both configurations


@dataclass(slots=True)
class _Prepared:
    """What the listen callback set up for a caller about to be accepted."""

    key: str
    peer: str
    handle: PublishHandle | None = None
    sub: Subscription | None = None


@dataclass(slots=True)
class _Connection:
    sock: int
    peer: str
    key: str
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
                 admission: Admission | None = None) -> None:
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
            for conn in list(self.connections.values()):
                self._finish(conn, CloseReason.SHUTDOWN)
            for prepared in list(self._prepared.values()):
                await self._release(prepared, CloseReason.SHUTDOWN)
            self._prepared.clear()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=5)
            await asyncio.to_thread(self._worker.stop)

    # -- admission: the listen callback (libsrt's thread) ---------------------------------

    def _on_handshake(self, incoming: Incoming) -> int:
        loop = self._loop
        if loop is None or self._worker is None or self._worker.stopping:
            raise Reject(RejectReason.X_DOWN)
        future = asyncio.run_coroutine_threadsafe(self._admit(incoming), loop)
        try:
            code = future.result(self.settings.admit_timeout)
        except TimeoutError:
            future.cancel()
            log.warning("srt admission timed out peer=%s:%d", *incoming.peer)
            raise Reject(RejectReason.X_OVERLOAD) from None
        if code:
            raise Reject(code)
        return 0

    async def _admit(self, incoming: Incoming) -> int:
        """Decide on a caller; 0 to accept (with its publish or subscription prepared)."""
        peer = f"{incoming.peer[0]}:{incoming.peer[1]}"
        try:
            request = parse(incoming.streamid)
        except StreamIdError as exc:
            log.info("srt refused peer=%s reason=%s", peer, exc)
            return RejectReason.X_BAD_REQUEST
        registry = self._registry
        assert registry is not None
        key = request.key
        admission = self.admission
        why, code = "", 0
        if admission.draining:
            why, code = "node is draining", RejectReason.X_DOWN
        elif request.publish and not admission.allow_publish:
            why, code = "this node takes no publishers", RejectReason.X_FORBIDDEN
        if code:
            log.info("srt refused stream=%s peer=%s reason=%s", key, peer, why)
            return code
        action = Action.PUBLISH if request.publish else Action.PLAY
        try:
            grant = await registry.authorize(AuthRequest(action, key, "srt", peer,
                                                         request.credentials))
            prepared = _Prepared(str(key), peer)
            if request.publish:
                if admission.publishers >= admission.limits.max_publishers:
                    admission.refuse("max_publishers", f"peer={peer} stream={key}")
                    raise _Refusal("too many publishers", RejectReason.X_OVERLOAD)
                if grant is not None and grant.takeover and \
                        await registry.end_publish(key, CloseReason.TAKEN_OVER):
                    log.warning("publish takeover stream=%s peer=%s", key, peer)
                prepared.handle = await registry.start_publish(key, protocol="srt", peer=peer)
                admission.publishers += 1
            else:
                sub = await registry.subscribe(key, protocol="srt", peer=peer)
                if not admission.admit_viewer(sub, peer):
                    raise _Refusal("too many viewers", RejectReason.X_OVERLOAD)
                prepared.sub = sub
        except AuthError as exc:
            offered = any(request.credentials.values())
            log.info("srt refused stream=%s peer=%s reason=%s", key, peer, exc)
            return RejectReason.X_FORBIDDEN if offered else RejectReason.X_UNAUTHORIZED
        except StreamNotFound as exc:
            log.info("srt refused stream=%s peer=%s reason=%s", key, peer, exc)
            return RejectReason.X_NOTFOUND
        except StreamBusy as exc:
            log.info("srt refused stream=%s peer=%s reason=%s", key, peer, exc)
            return RejectReason.X_CONFLICT
        except _Refusal as refusal:
            log.info("srt refused stream=%s peer=%s reason=%s", key, peer, refusal)
            return refusal.code
        except ArclyError as exc:
            log.warning("srt refused stream=%s peer=%s reason=%s", key, peer, exc)
            return RejectReason.X_UNACCEPTABLE
        self._prepared[incoming.sock] = prepared
        self._spawn(self._expire(incoming.sock))
        return 0

    async def _expire(self, sock: int) -> None:
        """A handshake accepted by the callback that never completes gives back its
        publish or subscription."""
        await asyncio.sleep(_PREPARED_TTL)
        prepared = self._prepared.pop(sock, None)
        if prepared is not None:
            log.info("srt handshake never completed stream=%s peer=%s", prepared.key,
                     prepared.peer)
            await self._release(prepared, "handshake failed")

    async def _release(self, prepared: _Prepared, reason: str) -> None:
        if prepared.sub is not None:
            prepared.sub.close(reason)
        if prepared.handle is not None:
            self.admission.publishers -= 1
            if not prepared.handle.ended.cancelled and self._registry is not None:
                await self._registry.end_publish(prepared.handle.key, reason)

    # -- connections (the event loop) ----------------------------------------------------

    def accepted(self, sock: int, peer: tuple[str, int]) -> None:
        """The worker accepted ``sock``: attach what its callback prepared."""
        prepared = self._prepared.pop(sock, None)
        worker = self._worker
        assert worker is not None
        if prepared is None:  # its callback's preparation expired meanwhile
            worker.close(sock)
            return
        conn = _Connection(sock, prepared.peer, prepared.key, prepared.handle, prepared.sub,
                           started=asyncio.get_running_loop().time())
        self.connections[sock] = conn
        if conn.handle is not None:
            conn.demuxer = TsDemuxer()
            conn.gate = []
            log.info("srt publish start stream=%s peer=%s", conn.key, conn.peer)
            conn.task = self._spawn(self._watch_publish(conn))
        else:
            log.info("srt play start stream=%s peer=%s", conn.key, conn.peer)
            conn.task = self._spawn(self._read(conn))

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
        figures = await asyncio.gather(*(worker.stats(c.sock) for c in conns))
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
            log.exception("srt worker failed")
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
                for chunk in arg:
                    try:
                        lib.sendmsg(sock, chunk)
                    except SrtError as exc:
                        if not exc.would_block:
                            break
                        # The send buffer is full: drop the rest of this write.
                        self.loop.call_soon_threadsafe(self.server.broken, sock,
                                                       CloseReason.SLOW_VIEWER)
                        break
            elif command == "close":
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
        for sock in list(self.server.connections):
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
