"""The engine: the publish registry, the run loop and the idle reaper."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence

from .config import EngineConfig
from .errors import ArclyError, HandlerCrashed, StreamBusy, StreamNotFound
from .extension import (
    AllowAll,
    AuthGrant,
    AuthProvider,
    AuthRequest,
    KeyOwnership,
    LocalOwnership,
    MediaSource,
    NullObserver,
    Observer,
    ProtocolHandler,
    Upstream,
)
from .fallback import FallbackProvider
from .frame import Frame
from .key import StreamKey
from .reasons import CloseReason
from .refusals import Refusals
from .shutdown import ShutdownToken, signals_handled
from .stream import RELAYED, Clock, PublishHandle, PublishSession, Stream, Subscription
from .timeline import Timeline, TimelineState

# Publishes that end for these reasons end their stream even when its app has a fallback: the
# node is stopping, or the key is (or will be) another node's.
_FINAL = frozenset({CloseReason.SHUTDOWN, CloseReason.OWNERSHIP_LOST, CloseReason.SESSION_LOST,
                    CloseReason.RELEASED})
FALLBACK = "fallback"  # the protocol of a stream while a fallback feeds it

# Timelines of keys that stopped publishing are kept (so a republish continues the segment
# numbering) for this many keys, least recently published dropped first.
MAX_REMEMBERED_TIMELINES = 10_000

log = logging.getLogger("arcly.engine")


class Engine:
    """The media kernel. One per process; protocol handlers reach it as a ``PublishRegistry``.

    >>> import asyncio
    >>> from arcly.engine import Engine, StreamKey, Frame, FrameKind
    >>> async def demo() -> int:
    ...     engine = Engine()
    ...     key = StreamKey("live", "demo")
    ...     handle = await engine.start_publish(key)
    ...     viewer = await engine.subscribe(key)
    ...     handle.publish_frame(Frame(FrameKind.VIDEO, 0, b"\\x17\\x01", keyframe=True))
    ...     return len(await viewer.next_batch())
    >>> asyncio.run(demo())
    1
    """

    def __init__(self, config: EngineConfig | None = None, *, observer: Observer | None = None,
                 auth: AuthProvider | None = None, ownership: KeyOwnership | None = None,
                 upstream: Upstream | None = None, fallback: FallbackProvider | None = None,
                 clock: Clock = time.monotonic) -> None:
        self.config = config or EngineConfig()
        self.observer: Observer = observer or NullObserver()
        self.auth: AuthProvider = auth or AllowAll()
        self.ownership: KeyOwnership = ownership or LocalOwnership()
        self.clock = clock
        self._streams: dict[StreamKey, Stream] = {}
        self._claiming: set[StreamKey] = set()
        self._timelines: OrderedDict[StreamKey, TimelineState] = OrderedDict()
        self.upstream = upstream
        self._pulling: dict[StreamKey, asyncio.Future[Stream | None]] = {}
        self._pulls: set[asyncio.Task[None]] = set()
        self._pull_root = ShutdownToken()
        self.fallback = fallback
        self._fallbacks: dict[StreamKey, asyncio.Task[None]] = {}  # keys a fallback feeds
        # of those, started for a viewer (or being claimed for one), and not published since
        self._on_demand_keys: set[StreamKey] = set()
        # A limit hit (limit, detail): a node counts and logs them with its other limits; by
        # default the kernel does.
        self.limit_hit: Callable[[str, str], None] = Refusals(log, clock).hit

    # -- publish registry -------------------------------------------------------------------

    async def authorize(self, request: AuthRequest) -> AuthGrant | None:
        return await self.auth.authorize(request)

    async def start_publish(self, key: StreamKey, *, protocol: str = "",
                            peer: str = "") -> PublishHandle:
        """Claim ``key`` and open its stream. Raises ``StreamBusy`` if it is taken (a publisher
        silent for ``config.stale_publisher`` seconds is replaced instead)."""
        current = self._streams.get(key)
        if current is not None and key in self._fallbacks:
            return self._adopt(current, protocol, peer)
        stale = self.config.stale_publisher
        if current is not None and not current.relayed and stale is not None and \
                self.clock() - current.last_frame_at >= stale:
            log.info("replacing a silent publisher stream=%s silent_s=%.1f peer=%s", key,
                     self.clock() - current.last_frame_at, current.peer)
            await self.end_publish(key, CloseReason.REPLACED)
            current = self._streams.get(key)
            if current is not None and key in self._fallbacks:  # the app has a fallback
                return self._adopt(current, protocol, peer)
        try:
            if key in self._streams or key in self._claiming:
                raise StreamBusy(f"{key} is already being published")
            self._claiming.add(key)
            try:
                token = await self.ownership.claim(key)
            finally:
                self._claiming.discard(key)
        except ArclyError as exc:
            refused = getattr(self.observer, "on_publish_refused", None)  # a newer hook
            if refused is not None:
                refused(key, protocol, peer, str(exc))
            raise
        stream = self._new_stream(key, protocol, peer, token)
        self.observer.on_publish_start(key, protocol, peer)
        return PublishHandle(stream)

    async def end_publish(self, key: StreamKey, reason: str = "ended", *,
                          token: int | None = None) -> bool:
        """End the publish on ``key`` (only the one with fencing ``token``, if given): viewers
        get the end of stream and the key is free again — unless the app has a fallback and
        ``reason`` is not final (``_FINAL``): then the fallback feeds the stream on. Returns
        False if nothing (of ``token``) was published there."""
        stream = self._streams.get(key)
        if stream is None or (token is not None and stream.token != token):
            return False
        feeding = self._fallbacks.pop(key, None)
        self._on_demand_keys.discard(key)
        if feeding is None and self._fall_back(stream, reason):
            return True
        if feeding is not None and feeding is not asyncio.current_task():
            feeding.cancel()
        del self._streams[key]
        announced = stream.session.announced  # a fallback's or an unstarted adopter's: not
        stream.end(reason)
        if announced:
            self.observer.on_publish_end(key, stream.protocol, stream.peer, reason)
        if feeding is not None:
            log.info("fallback end stream=%s reason=%r", key, reason)
        try:
            await self.ownership.release(key, stream.token)
        except ArclyError as exc:
            log.warning("ownership release failed stream=%s error=%s", key, exc)
        return True

    async def subscribe(self, key: StreamKey, *, protocol: str = "", peer: str = "",
                        viewer: bool = True, follows_fallback: bool = True) -> Subscription:
        """Join ``key``'s stream. The first batch holds configuration + the cached GOP.
        ``viewer``: a person watching (counted as a viewer), not a segmenter, recorder or
        relay.

        On a node with an ``Upstream`` (an edge), a key it does not have is opened upstream
        once, shared by every local subscriber, and closed ``upstream_linger`` seconds after
        the last one left.

        A key nobody publishes whose app has an on-demand fallback starts that fallback (on
        the node that takes publishers). ``follows_fallback``: False ends the subscription
        when a fallback replaces the publisher (a recorder)."""
        stream = self._streams.get(key)
        if stream is None and self.upstream is not None:
            stream = await self._pull(key)
        elif stream is None and self.fallback is not None:
            stream = await self._on_demand(key)
        if stream is None:
            raise StreamNotFound(f"{key} is not being published")
        sub = Subscription(stream, protocol=protocol, peer=peer, viewer=viewer,
                           follows_fallback=follows_fallback)
        stream.add_subscriber(sub)
        self.observer.on_play_start(key, protocol, peer)
        return sub

    async def _pull(self, key: StreamKey) -> Stream | None:
        return await self._open_once(key, self._open_upstream)

    async def _open_once(self, key: StreamKey,
                         opener: Callable[[StreamKey], Awaitable[Stream | None]]
                         ) -> Stream | None:
        """Open ``key``'s stream with ``opener`` (an upstream, an on-demand fallback) once,
        however many subscribers ask meanwhile: the others share its outcome."""
        pending = self._pulling.get(key)
        if pending is not None:  # another subscriber is already opening it: share that
            return await asyncio.shield(pending)
        future: asyncio.Future[Stream | None] = asyncio.get_running_loop().create_future()
        self._pulling[key] = future
        try:
            stream = await opener(key)
            future.set_result(stream)
            return stream
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._pulling[key]

    async def _open_upstream(self, key: StreamKey) -> Stream | None:
        assert self.upstream is not None
        source = await self.upstream.open(key)
        if source is None:
            return None
        token = self._pull_root.child()
        task = asyncio.create_task(self._run_pull(key, source, token), name=f"pull-{key}")
        self._pulls.add(task)
        task.add_done_callback(self._pulls.discard)
        for _ in range(1000):  # pump_source registers the stream within a few loop turns
            stream = self._streams.get(key)
            if stream is not None or task.done():
                return stream
            await asyncio.sleep(0)
        return self._streams.get(key)

    async def _run_pull(self, key: StreamKey, source: MediaSource, token: ShutdownToken) -> None:
        linger = asyncio.create_task(self._linger(key, token))
        try:
            await self.pump_source(key, source, token, protocol=RELAYED, peer="")
        except Exception as exc:
            log.warning("upstream ended with an error stream=%s error=%r", key, exc)
        finally:
            linger.cancel()

    async def _linger(self, key: StreamKey, token: ShutdownToken) -> None:
        """Close a pulled stream once it has had no subscriber for ``upstream_linger``."""
        idle_since: float | None = None
        step = min(0.5, self.config.upstream_linger / 2)
        while not token.cancelled:
            await asyncio.sleep(step)
            stream = self._streams.get(key)
            if stream is None:
                return
            if stream.subscribers:
                idle_since = None
            elif idle_since is None:
                idle_since = self.clock()
            elif self.clock() - idle_since >= self.config.upstream_linger:
                log.info("closing idle upstream stream=%s linger=%s", key,
                         self.config.upstream_linger)
                token.cancel()
                return

    # -- fallbacks (see ``fallback``) -----------------------------------------------------

    def _fall_back(self, stream: Stream, reason: str) -> bool:
        """When the publisher of ``stream`` goes and its app has a fallback: keep the stream
        (and its subscribers, and its key's claim) and feed it from the fallback."""
        if self.fallback is None or reason in _FINAL or stream.relayed:
            return False
        source = self.fallback.fallback_for(stream.key, on_demand=False)
        if source is None:
            return False
        key = stream.key
        session = stream.session
        session.end(reason)  # the publisher's handle is over
        if session.announced:
            self.observer.on_publish_end(key, stream.protocol, stream.peer, reason)
        stream.keep_fallback_viewers(reason)
        log.info("fallback start stream=%s source=%s after=%r", key, _describe(source), reason)
        self._feed(stream, source)
        return True

    async def _on_demand(self, key: StreamKey) -> Stream | None:
        """Open ``key`` on its on-demand fallback (one stream, however many ask at once)."""
        if key in self._claiming and key not in self._pulling:  # a publisher is claiming it
            return None
        return await self._open_once(key, self._open_fallback)

    async def _open_fallback(self, key: StreamKey) -> Stream | None:
        assert self.fallback is not None
        source = self.fallback.fallback_for(key, on_demand=True)
        if source is None:
            return None
        cap = self.config.max_on_demand_fallbacks
        if len(self._on_demand_keys) >= cap:  # lowered by a reload: the running ones go on
            await _close(source)
            self.limit_hit("max_on_demand_fallbacks", f"stream={key} running="
                           f"{len(self._on_demand_keys)} limit={cap}")
            return None
        self._claiming.add(key)
        self._on_demand_keys.add(key)  # counted from now: claims of others run meanwhile
        try:
            token = await self.ownership.claim(key)
        except BaseException as exc:
            self._on_demand_keys.discard(key)
            await _close(source)
            if not isinstance(exc, ArclyError):
                raise
            log.info("no on-demand fallback stream=%s error=%s", key, exc)
            return None
        finally:
            self._claiming.discard(key)
        stream = self._new_stream(key, FALLBACK, _describe(source), token)
        log.info("fallback start stream=%s source=%s on_demand=true", key, _describe(source))
        self._feed(stream, source)
        return stream

    def _feed(self, stream: Stream, source: MediaSource) -> None:
        stream.protocol, stream.peer = FALLBACK, _describe(source)
        stream.session = PublishSession(announced=False)
        stream.splice(fallback=True)
        task = asyncio.get_running_loop().create_task(self._pump_fallback(stream, source),
                                                      name=f"fallback-{stream.key}")
        self._fallbacks[stream.key] = task

    def _adopt(self, stream: Stream, protocol: str, peer: str) -> PublishHandle:
        """A publisher takes ``stream`` back from its fallback; viewers switch at its first
        keyframe, when the observers hear of the publish."""
        key = stream.key
        self._fallbacks.pop(key).cancel()
        self._on_demand_keys.discard(key)
        stream.protocol, stream.peer = protocol, peer
        session = stream.session = PublishSession(announced=False)
        log.info("fallback end stream=%s reason='publisher back' peer=%s", key, peer)

        def announce() -> None:
            session.announced = True
            self.observer.on_publish_start(key, protocol, peer)

        stream.splice(fallback=False, on_start=announce)
        return PublishHandle(stream)

    async def _pump_fallback(self, stream: Stream, source: MediaSource) -> None:
        """Feed ``stream`` from ``source`` until a publisher adopts it (cancelled), the source
        ends, or nobody has watched for ``upstream_linger`` seconds."""
        reason = "fallback ended"
        idle_since: float | None = None
        next_frame: asyncio.Future[Frame | None] | None = None
        try:
            while not stream.ended.cancelled:
                if next_frame is None:
                    next_frame = asyncio.ensure_future(source.next_frame())
                await asyncio.wait({next_frame}, timeout=0.5)
                if next_frame.done():
                    frame = next_frame.result()
                    next_frame = None
                    if frame is None:
                        break
                    stream.publish(frame)
                if any(sub.protocol != FALLBACK for sub in stream.subscribers):
                    idle_since = None  # watched (not only by another fallback following it)
                elif idle_since is None:
                    idle_since = self.clock()
                elif self.clock() - idle_since >= self.config.upstream_linger:
                    reason = "fallback without viewers"
                    break
        except Exception as exc:
            log.warning("fallback source failed stream=%s error=%r", stream.key, exc)
            reason = "fallback failed"
        finally:
            if next_frame is not None:
                next_frame.cancel()
            await _close(source)
        if self._fallbacks.get(stream.key) is asyncio.current_task():
            await self.end_publish(stream.key, reason)

    def _new_stream(self, key: StreamKey, protocol: str, peer: str, token: int) -> Stream:
        stream = Stream(key, protocol=protocol, peer=peer, token=token, config=self.config,
                        observer=self.observer, clock=self.clock,
                        timeline=Timeline(self._timeline_state(key), session=token,
                                          target_ms=int(self.config.segment_target * 1000),
                                          part_ms=round(self.config.part_target * 1000)))
        self._streams[key] = stream
        return stream

    def _timeline_state(self, key: StreamKey) -> TimelineState:
        state = self._timelines.pop(key, None) or TimelineState()
        self._timelines[key] = state
        while len(self._timelines) > MAX_REMEMBERED_TIMELINES:
            self._timelines.popitem(last=False)
        return state

    def stream(self, key: StreamKey) -> Stream | None:
        return self._streams.get(key)

    def streams(self) -> list[Stream]:
        return list(self._streams.values())

    # -- run loop ---------------------------------------------------------------------------

    async def serve(self, handlers: Sequence[ProtocolHandler], shutdown: ShutdownToken) -> None:
        """Run every handler until ``shutdown`` fires, then let them wind down.

        Coordinated teardown: when any handler returns — cleanly, with an error or by crashing —
        ``shutdown`` is cancelled so the others wind down too. Handlers that ignore the token
        longer than ``config.shutdown_grace`` seconds are cancelled. Streams still live at the
        end are ended with reason "shutdown". Raises the first handler error, once all handlers
        have returned (a non-``ArclyError`` is wrapped in ``HandlerCrashed``).
        """
        errors: list[BaseException] = []

        async def run_one(handler: ProtocolHandler) -> None:
            with shutdown.guard():
                log.info("handler starting protocol=%s", handler.name)
                try:
                    await handler.run(self, shutdown)
                except asyncio.CancelledError:
                    log.warning("handler cancelled protocol=%s", handler.name)
                    raise
                except ArclyError as exc:
                    log.error("handler failed protocol=%s error=%s", handler.name, exc)
                    errors.append(exc)
                except Exception as exc:
                    log.exception("handler crashed protocol=%s", handler.name)
                    crashed = HandlerCrashed(f"{handler.name} handler crashed: {exc!r}")
                    crashed.__cause__ = exc
                    errors.append(crashed)
                else:
                    log.info("handler stopped protocol=%s", handler.name)

        tasks = [asyncio.create_task(run_one(h), name=f"arcly-{h.name}") for h in handlers]
        try:
            await shutdown.wait()
            if tasks:
                _, stragglers = await asyncio.wait(tasks, timeout=self.config.shutdown_grace)
                for task in stragglers:
                    log.warning("handler ignored shutdown; cancelling task=%s", task.get_name())
                    task.cancel()
        finally:
            shutdown.cancel()
            self._pull_root.cancel()
            feeding = list(self._fallbacks.values())
            for task in feeding:
                task.cancel()
            await asyncio.gather(*tasks, *self._pulls, *feeding, return_exceptions=True)
            for key in list(self._streams):
                await self.end_publish(key, CloseReason.SHUTDOWN)
        if errors:
            raise errors[0]

    async def serve_until_signal(self, handlers: Sequence[ProtocolHandler],
                                 shutdown: ShutdownToken | None = None, *,
                                 on_signal: Callable[[signal.Signals], None] | None = None
                                 ) -> None:
        """Like ``serve``, but SIGINT or SIGTERM (what orchestrators stop a process with)
        cancels the token — or calls ``on_signal`` instead, e.g. to drain first."""
        token = shutdown or ShutdownToken()

        def stop(sig: signal.Signals) -> None:
            log.info("signal received signal=%s; shutting down", sig.name)
            token.cancel()

        with signals_handled(on_signal or stop):
            await self.serve(handlers, token)

    async def pump_source(self, key: StreamKey, source: MediaSource, shutdown: ShutdownToken,
                          *, protocol: str = "source", peer: str = "") -> None:
        """Claim ``key``, publish every frame ``source`` yields, and always release the key —
        on exhaustion, on a source error (re-raised), on shutdown, or when the publish is
        ended from outside (reaped, kicked)."""
        handle = await self.start_publish(key, protocol=protocol, peer=peer)
        reason: str = "source ended"

        async def pump() -> None:
            while True:
                frame = await source.next_frame()
                if frame is None or not handle.publish_frame(frame):
                    return

        pump_task = asyncio.create_task(pump())
        stop_task = asyncio.create_task(shutdown.wait())
        ended_task = asyncio.create_task(handle.ended.wait())
        try:
            await asyncio.wait({pump_task, stop_task, ended_task},
                               return_when=asyncio.FIRST_COMPLETED)
            if pump_task.done():
                exc = pump_task.exception()
                if exc is not None:
                    reason = "source error"
                    log.warning("media source failed stream=%s error=%r", key, exc)
                    raise exc
            elif stop_task.done():
                reason = CloseReason.SHUTDOWN
        finally:
            for task in (pump_task, stop_task, ended_task):
                task.cancel()
            await asyncio.gather(pump_task, stop_task, ended_task, return_exceptions=True)
            if not handle.ended.cancelled:
                await self.end_publish(key, reason)
            close = getattr(source, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    log.exception("media source close failed stream=%s", key)

    # -- idle reaper ------------------------------------------------------------------------

    async def reap_idle(self) -> int:
        """End every stream with no frame for ``config.idle_timeout`` seconds, telling the
        observer. Returns how many were reaped; a no-op without an idle timeout."""
        timeout = self.config.idle_timeout
        if timeout is None:
            return 0
        now = self.clock()
        # Collect victims first; ending a stream mutates the table.
        victims = [s.key for s in self._streams.values() if now - s.last_frame_at >= timeout]
        reaped = 0
        for key in victims:
            self.observer.on_stream_reaped(key)
            log.info("reaping idle stream stream=%s idle_timeout=%s", key, timeout)
            if await self.end_publish(key, "idle"):
                reaped += 1
        return reaped

    def spawn_idle_reaper(self, interval: float, shutdown: ShutdownToken, *,
                          always: bool = False) -> asyncio.Task[None] | None:
        """Start a task that calls ``reap_idle`` every ``interval`` seconds until ``shutdown``.
        Returns None (and starts nothing) without an idle timeout, unless ``always`` (the
        timeout may be set later: a config reload); the caller owns the task."""
        if self.config.idle_timeout is None and not always:
            return None

        async def reaper() -> None:
            while not shutdown.cancelled:
                try:
                    await asyncio.wait_for(shutdown.wait(), timeout=interval)
                except TimeoutError:
                    pass
                else:
                    return
                try:
                    reaped = await self.reap_idle()
                except Exception:
                    log.exception("idle reaper sweep failed")
                    continue
                if reaped:
                    log.info("idle reaper swept reaped=%d", reaped)

        return asyncio.create_task(reaper(), name="arcly-idle-reaper")


def _describe(source: MediaSource) -> str:
    return str(getattr(source, "description", type(source).__name__))


async def _close(source: MediaSource) -> None:
    close = getattr(source, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:
            log.exception("media source close failed source=%s", _describe(source))
