"""The asyncio adapter around ``RtmpConnection``: a ``ProtocolHandler`` for the engine.

It moves bytes between sockets and the sans-I/O connection and turns events into kernel calls.
Every wait on the network has a deadline: the handshake, the first publish/play command, and a
publisher's silence. Protocol errors close only the offending connection, with one log line.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qsl

from arcly.engine import (
    Action,
    ArclyError,
    AuthError,
    AuthGrant,
    AuthRequest,
    CloseReason,
    Frame,
    InvalidStreamKey,
    NullObserver,
    Observer,
    ProtocolError,
    PublishHandle,
    PublishRegistry,
    ShutdownToken,
    StreamBusy,
    StreamKey,
    StreamNotFound,
    Subscription,
)
from arcly.media.flv import make_frame
from arcly.protocols.egress import (
    DEFAULT_COALESCE,
    DEFAULT_COALESCE_MAX,
    deliver,
    limit_send_buffer,
)
from arcly.protocols.listener import (
    Admission,
    Listener,
    ListeningHandler,
    close_writer,
    peer_name,
    unread,
)
from arcly.protocols.readmerge import DEFAULT_READ_MERGE_MAX, MERGE_BELOW, ReadMerger

from .chunk import DEFAULT_MAX_MESSAGE_SIZE
from .connection import OUT_CHUNK_SIZE, RtmpConnection, State, media_chunks
from .events import (
    Connected,
    Event,
    HandshakeDone,
    MediaReceived,
    PlayRequested,
    PublishRequested,
    StreamClosed,
)

log = logging.getLogger("arcly.rtmp")


@dataclass(frozen=True, slots=True)
class RtmpSettings:
    """Limits and timeouts of the RTMP listener (seconds, bytes)."""

    chunk_size: int = OUT_CHUNK_SIZE
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    handshake_timeout: float = 10.0
    command_timeout: float = 10.0
    publish_idle_timeout: float = 30.0
    write_buffer_high: int = 512 * 1024
    stall_timeout: float = 10.0
    viewer_send_buffer: int = 256 * 1024
    read_size: int = 256 * 1024
    write_coalesce: float = DEFAULT_COALESCE  # 0: write every frame the moment it arrives
    write_coalesce_max: float = DEFAULT_COALESCE_MAX  # the interval's ceiling as viewers grow
    read_merge_max: float = DEFAULT_READ_MERGE_MAX  # publishers' read interval ceiling; 0: off


class RtmpServer(ListeningHandler):
    """Listens for RTMP publishers and players."""

    name = "rtmp"

    def __init__(self, host: str, port: int, settings: RtmpSettings | None = None, *,
                 admission: Admission | None = None, observer: Observer | None = None) -> None:
        self.settings = settings or RtmpSettings()
        self.admission = admission or Admission()
        self.observer = observer or NullObserver()
        self.listener = Listener("rtmp", host, port, self.admission,
                                 read_limit=self.settings.read_size,
                                 backlog=self.admission.limits.listen_backlog)
        self._sessions: set[_Session] = set()
        self.merger = ReadMerger(self.settings.read_merge_max)

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            session = _Session(self, registry, reader, writer)
            self._sessions.add(session)
            try:
                await session.run()
            finally:
                self._sessions.discard(session)

        async def goodbye() -> None:
            log.info("rtmp stopping sessions=%d", len(self._sessions))
            for session in list(self._sessions):
                await session.shutdown()

        await self.listener.serve(on_client, shutdown, goodbye=goodbye)


class _PublishPath(asyncio.Protocol):
    """The transport's protocol while a session publishes (see ``_Session._run_publishing``).
    Write flow control and the end of the connection are passed on to the StreamReader
    protocol it replaced, so the session's writer keeps working and closing as before."""

    def __init__(self, session: _Session, previous: asyncio.BaseProtocol,
                 loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
        self.session = session
        self.transport = transport
        self.merger = session.server.merger
        self.clock = loop.time  # not asyncio.get_running_loop() per read: it calls getpid()
        self.previous = previous
        self.events: list[Event] = []  # for the session task, in order
        # Reading is paused until the session task has handled ``events`` (a merger's tick
        # must not resume it meanwhile: the task empties ``events`` before it handles them).
        self.task_paused = False
        self.wake: asyncio.Future[None] | None = None
        self.error: ProtocolError | None = None
        self.lost = False
        self.last_data = loop.time()

    def _wake(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if self.error is not None or session.closing is not None:
            return
        now = self.last_data = self.clock()
        try:
            events = session.conn.receive_data(data, now)
        except ProtocolError as exc:
            self.error = exc
            self._wake()
            return
        for index, event in enumerate(events):
            if type(event) is not MediaReceived or self.events:
                # Not media: the rest of this batch waits for the session task, in order.
                self.events.extend(events[index:])
                self.task_paused = True
                self.transport.pause_reading()
                self._wake()
                break
            if not session._publish_media(event):
                self._wake()
                return
        session._flush()  # acknowledgements
        if self.merger.interval and len(data) < MERGE_BELOW and not self.events:
            self.merger.hold(self.transport, self._resume)

    def _resume(self) -> None:
        """The merger's tick: read again, unless the session task holds reading paused (its
        events come first) or the connection is going."""
        if not self.task_paused and not self.lost and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.lost = True
        self._wake()
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()
        self.previous.connection_lost(exc)

    def pause_writing(self) -> None:
        self.previous.pause_writing()

    def resume_writing(self) -> None:
        self.previous.resume_writing()


class _Session:
    """One RTMP connection: the sans-I/O core plus the publish or play it drives."""

    def __init__(self, server: RtmpServer, registry: PublishRegistry,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.settings = server.settings
        self.registry = registry
        self.reader = reader
        self.writer = writer
        self.peer = peer_name(writer)
        self.conn = RtmpConnection(chunk_size=self.settings.chunk_size,
                                   max_message_size=self.settings.max_message_size)
        self.publishing: dict[int, tuple[StreamKey, PublishHandle]] = {}
        self.playing: dict[int, tuple[Subscription, asyncio.Task[None]]] = {}
        self.closing: str | None = None
        self.started = 0.0
        # The first-command deadline counts from here: the connection, or the moment it went
        # back to the command state (a publish or play ended, the client may go on).
        self.commands_since = 0.0
        self.watchers: set[asyncio.Task[None]] = set()
        transport = writer.transport
        transport.set_write_buffer_limits(high=self.settings.write_buffer_high)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.transport.is_closing():
            self.writer.write(data)

    async def run(self) -> None:
        reason: str = CloseReason.CLIENT_CLOSED
        loop = asyncio.get_running_loop()
        self.started = self.commands_since = loop.time()
        try:
            async with asyncio.timeout(self.settings.handshake_timeout):
                while self.conn.state is not State.OPEN:
                    data = await self.reader.read(self.settings.read_size)
                    if not data:
                        raise ProtocolError("RTMP: connection closed during the handshake")
                    await self._process(self.conn.receive_data(data, loop.time()))
                    self._flush()
            while self.closing is None:
                if self.publishing:
                    await self._run_publishing()
                    break
                if self.playing:
                    deadline = None
                else:
                    deadline = max(0.0, self.commands_since + self.settings.command_timeout
                                   - loop.time())
                async with asyncio.timeout(deadline):
                    data = await self.reader.read(self.settings.read_size)
                if not data:
                    break
                await self._process(self.conn.receive_data(data, loop.time()))
                self._flush()
            reason = self.closing or reason
        except ProtocolError as exc:
            reason = "protocol error"
            log.warning("rtmp protocol error peer=%s error=%s", self.peer, exc)
        except TimeoutError:
            reason = "timeout"
            log.warning("rtmp timeout peer=%s state=%s", self.peer,
                        "publishing" if self.publishing else self.conn.state.value)
        except (ConnectionError, OSError) as exc:
            reason = "connection lost"
            log.info("rtmp connection lost peer=%s error=%s", self.peer, exc)
        except ArclyError as exc:
            reason = "error"
            log.warning("rtmp error peer=%s error=%s", self.peer, exc)
        finally:
            await self._teardown(reason)

    async def _run_publishing(self) -> None:
        """The rest of a publishing connection: bytes go from the socket callback straight
        into the sans-I/O connection and media straight into the kernel — no task wake-up,
        future or timer per read. Anything else (deleteStream, a second publish, ...) is
        handed to this task, in order, with reading paused until it is handled."""
        loop = asyncio.get_running_loop()
        transport = cast(asyncio.Transport, self.writer.transport)  # a socket: reads and writes
        fast = _PublishPath(self, transport.get_protocol(), loop, transport)
        merger = self.server.merger
        merger.joined()
        try:
            # What the StreamReader already holds comes first.
            buffered = unread(self.reader)
            leftover, at_eof = bytes(buffered), self.reader.at_eof()
            buffered.clear()
            transport.set_protocol(fast)
            if leftover:
                fast.data_received(leftover)
            if at_eof or transport.is_closing():
                fast.lost = True
            elif not transport.is_reading() and not fast.events:
                transport.resume_reading()  # the StreamReader may have paused it
            idle = self.settings.publish_idle_timeout
            while self.closing is None:
                if fast.error is not None:
                    raise fast.error
                if fast.events:
                    events, fast.events = fast.events, []
                    await self._process(events)
                    self._flush()
                    if not fast.events:  # else more came meanwhile: reading stays paused
                        fast.task_paused = False
                        if self.closing is None and not transport.is_closing():
                            transport.resume_reading()
                    continue
                if fast.lost:
                    return
                due = (fast.last_data + idle if self.publishing
                       else self.commands_since + self.settings.command_timeout)
                if loop.time() >= due:
                    raise TimeoutError
                fast.wake = loop.create_future()
                try:
                    # One timer per wake-up, and wake-ups are rare: events, the end, the deadline.
                    async with asyncio.timeout_at(due):
                        await fast.wake
                except TimeoutError:
                    continue  # data may have arrived meanwhile: the deadline is checked above
                finally:
                    fast.wake = None
        finally:
            merger.left()

    def _publish_media(self, event: MediaReceived) -> bool:
        """Hand a media message to the kernel; False when the publish ended."""
        entry = self.publishing.get(event.stream_id)
        if entry is not None and not entry[1].publish_frame(
                make_frame(event.kind, event.timestamp, event.payload)):
            self.closing = f"publish ended: {entry[1].end_reason}"
            return False
        return True

    async def _process(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, MediaReceived):
                if not self._publish_media(event):
                    return
            elif isinstance(event, PublishRequested):
                await self._publish(event)
            elif isinstance(event, PlayRequested):
                await self._play(event)
            elif isinstance(event, StreamClosed):
                await self._close_stream(event.stream_id, event.command)
            elif isinstance(event, Connected):
                log.debug("rtmp connect peer=%s app=%s tc_url=%s", self.peer, event.app[:128],
                          event.tc_url[:256])
            elif isinstance(event, HandshakeDone):
                self.server.observer.on_handshake(
                    "rtmp", self.peer, "digest" if event.digest else "simple",
                    asyncio.get_running_loop().time() - self.started)

    async def _admit(self, action: Action, name: str,
                     query: str) -> tuple[StreamKey, AuthGrant | None]:
        """Validate the key and ask the auth provider; raises InvalidStreamKey or AuthError.
        Credentials may ride on the connect URL (``rtmp://host/app?key=…``) or on the stream
        name (``cam1?token=…``, what OBS's "stream key" field sends); the name wins."""
        key = StreamKey(self.conn.app, name)
        credentials = dict(parse_qsl(self.conn.app_query))
        credentials.update(parse_qsl(query))
        grant = await self.registry.authorize(AuthRequest(action, key, "rtmp", self.peer,
                                                          credentials))
        return key, grant

    async def _publish(self, event: PublishRequested) -> None:
        sid = event.stream_id
        if self.publishing or self.playing:
            raise ProtocolError("RTMP: publish on a connection that already publishes or plays")
        admission = self.server.admission
        if not admission.allow_publish or admission.draining:
            why = "node is draining" if admission.draining else "this node takes no publishers"
            log.info("publish refused app=%s name=%s peer=%s reason=%s", self.conn.app,
                     event.name[:128], self.peer, why)
            self.conn.reject_publish(sid, "NetStream.Publish.Rejected", why)
            self.closing = "publish refused"
            return
        try:
            key, grant = await self._admit(Action.PUBLISH, event.name, event.query)
            if admission.limits.max_publishers <= admission.publishers:
                admission.refuse("max_publishers", f"peer={self.peer} stream={key}")
                self.conn.reject_publish(sid, "NetStream.Publish.Rejected",
                                         "too many publishers on this node")
                self.closing = "publish refused"
                return
            # Only a credential the auth provider marked for takeover replaces a live publisher
            # (hijack protection); a silent one is replaced by any publish (engine).
            if grant is not None and grant.takeover and \
                    await self.registry.end_publish(key, CloseReason.TAKEN_OVER):
                log.warning("publish takeover stream=%s peer=%s", key, self.peer)
            handle = await self.registry.start_publish(key, protocol="rtmp", peer=self.peer)
        except ArclyError as exc:
            code = ("NetStream.Publish.Unauthorized" if isinstance(exc, AuthError)
                    else "NetStream.Publish.BadName"
                    if isinstance(exc, InvalidStreamKey | StreamBusy)
                    else "NetStream.Publish.Failed")
            log.warning("publish refused app=%s name=%s peer=%s code=%s reason=%s",
                        self.conn.app, event.name[:128], self.peer, code, exc)
            self.conn.reject_publish(sid, code, str(exc))
            self.closing = "publish refused"
            return
        self.publishing[sid] = (key, handle)
        self.server.admission.publishers += 1
        self.conn.accept_publish(sid, event.name)
        watcher = asyncio.create_task(self._watch_publish(handle))
        self.watchers.add(watcher)

    async def _watch_publish(self, handle: PublishHandle) -> None:
        """A publish ended from outside (reaped, kicked, shutdown) closes the connection."""
        await handle.ended.wait()
        if self.closing is None and any(h is handle for _, h in self.publishing.values()):
            self.closing = f"publish ended: {handle.end_reason}"
            self.writer.transport.close()

    async def _play(self, event: PlayRequested) -> None:
        sid = event.stream_id
        if self.publishing or sid in self.playing:
            raise ProtocolError("RTMP: play on a connection that already publishes or plays")
        if self.server.admission.draining:
            self.conn.reject_play(sid, "NetStream.Play.Failed", "node is draining")
            self.closing = "play refused"
            return
        try:
            key, _ = await self._admit(Action.PLAY, event.name, event.query)
            sub = await self.registry.subscribe(key, protocol="rtmp", peer=self.peer)
            if not self.server.admission.admit_viewer(sub, self.peer):
                self.conn.reject_play(sid, "NetStream.Play.Failed",
                                      "too many viewers on this stream")
                self.closing = "play refused"
                return
        except (InvalidStreamKey, StreamNotFound, AuthError) as exc:
            code = ("NetStream.Play.Failed" if isinstance(exc, AuthError)
                    else "NetStream.Play.StreamNotFound")
            log.info("play refused app=%s name=%s peer=%s code=%s reason=%s",
                     self.conn.app, event.name[:128], self.peer, code, exc)
            self.conn.reject_play(sid, code, str(exc))
            self.closing = "play refused"
            return
        limit_send_buffer(self.writer, self.settings.viewer_send_buffer)
        self.conn.accept_play(sid, event.name)
        self._flush()
        task = asyncio.create_task(self._deliver(sid, event.name, sub))
        self.playing[sid] = (sub, task)

    async def _deliver(self, sid: int, name: str, sub: Subscription) -> None:
        enc_key = ("rtmp", self.settings.chunk_size, sid)
        chunk_size = self.settings.chunk_size

        def encode(frame: Frame) -> bytes:
            data = frame.encodings.get(enc_key)
            if data is None:
                data = media_chunks(frame.kind, sid, frame.timestamp, frame.payload, chunk_size)
                frame.encodings[enc_key] = data
            return data

        reason = await deliver(sub, self.writer, encode, stall_timeout=self.settings.stall_timeout,
                               coalesce=self.settings.write_coalesce,
                               coalesce_max=self.settings.write_coalesce_max, share=enc_key)
        sub.close(reason)
        if self.closing is None:
            if sub.stream.ended.cancelled:
                self.conn.end_play(sid, name)
                self._flush()
            self.closing = reason
            # Let the goodbye reach the player, then end the connection.
            self.writer.transport.close()

    async def _close_stream(self, sid: int, command: str) -> None:
        self.commands_since = asyncio.get_running_loop().time()
        entry = self.publishing.pop(sid, None)
        if entry is not None:
            self.server.admission.publishers -= 1
            key, _ = entry
            self.conn.end_publish(sid, key.stream)
            await self.registry.end_publish(key, "unpublished")
        played = self.playing.pop(sid, None)
        if played is not None:
            sub, task = played
            sub.close("client stopped")
            task.cancel()

    async def shutdown(self) -> None:
        """Node shutdown: end what this session publishes (viewers get end of stream) and
        stop its players; the connection then closes."""
        if self.closing is not None:
            return
        self.closing = CloseReason.SHUTDOWN
        for sid, (key, _) in list(self.publishing.items()):
            self.conn.end_publish(sid, key.stream)
            await self.registry.end_publish(key, CloseReason.SHUTDOWN)
        self._flush()
        self.writer.transport.close()

    async def _teardown(self, reason: str) -> None:
        self.conn.close()
        if self.publishing and reason == CloseReason.CLIENT_CLOSED:
            reason = "publisher disconnected"
        for key, handle in self.publishing.values():
            self.server.admission.publishers -= 1
            if not handle.ended.cancelled:
                await self.registry.end_publish(key, reason)
        self.publishing.clear()
        for sub, task in self.playing.values():
            sub.close(reason)
            if task is not asyncio.current_task():
                task.cancel()
        tasks = [t for _, t in self.playing.values()] + list(self.watchers)
        for task in self.watchers:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.playing.clear()
        await close_writer(self.writer)
