"""Node roles and the process lifecycle.

- ``single`` (``arcly serve``): origin and edge in one process, in-memory registry.
- ``origin``: RTMP ingest, local playback, GOP cache, the relay gRPC server; stream-key
  ownership in Redis.
- ``edge``: RTMP/HTTP-FLV/HLS for viewers; streams come from their owning origin over the relay,
  one upstream per key, however many viewers.

``run_node`` builds each piece once, in dependency order, and hands every object what it needs
when it is built: the registry and relay client first, then the observers (logging, HLS,
recorder, auth webhooks, OpenTelemetry) and auth, then the kernel, then the listeners.

Lifecycle: ``single`` stops on SIGINT/SIGTERM (stop accepting, end streams, exit 0). Cluster
roles drain first: the node marks itself ``draining`` in the registry, readiness turns false,
new publishers and viewers are refused, existing sessions continue until they end or
``--drain-timeout`` passes; a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from arcly.auth import PerApp, Webhooks
from arcly.cluster.model import NodeLoad, NodeRole, NodeState
from arcly.cluster.node_registry import NodeRegistry
from arcly.cluster.registry import RegistrySettings
from arcly.cluster.relay_client import EdgeSettings, RelayUpstream
from arcly.cluster.relay_server import RelayServer, RelaySettings
from arcly.engine import (
    FALLBACK,
    AllowAll,
    AuthProvider,
    Engine,
    EngineConfig,
    FallbackProvider,
    KeyOwnership,
    ListenError,
    NullObserver,
    Observer,
    ProtocolHandler,
    ShutdownToken,
    StreamKey,
    Upstream,
)
from arcly.hls.service import HlsService, HlsSettings, HlsVariant
from arcly.observe import CompositeObserver, LoggingObserver, otel, sdk, tracing
from arcly.protocols.http import HttpServer, HttpSettings, MetricsServer
from arcly.protocols.listener import Admission, Limits, is_loopback
from arcly.protocols.rtmp import RtmpServer, RtmpSettings
from arcly.protocols.srt.settings import SrtSettings
from arcly.protocols.webrtc.settings import WebRtcSettings
from arcly.recording import FilesystemStorage, RecordingManager, RecordSettings

from . import logs
from .config import ConfigSource, NodeConfig
from .fallback import AppFallbacks
from .reload import Reloader, auth_for

if TYPE_CHECKING:
    from arcly.protocols.srt.server import SrtServer
    from arcly.protocols.webrtc.service import WebRtcService

log = logging.getLogger("arcly.node")
ROLES = tuple(role.value for role in NodeRole)


def engine_config(config: NodeConfig, base: EngineConfig | None = None) -> EngineConfig:
    """The kernel's settings from ``config`` (over ``base``'s other fields)."""
    return dataclasses.replace(
        base or EngineConfig(),
        idle_timeout=config.idle_timeout,
        gop_max_bytes=config.gop_max_bytes,
        viewer_backlog_bytes=config.viewer_backlog_bytes,
        segment_target=config.hls_segment_seconds,
        part_target=config.hls_part_ms / 1000,
        upstream_linger=config.edge_linger,
        max_on_demand_fallbacks=config.max_on_demand_fallbacks,
    )


def limits(config: NodeConfig, base: Limits | None = None) -> Limits:
    return dataclasses.replace(
        base or Limits(), max_connections=config.max_connections,
        max_connections_per_ip=config.max_connections_per_ip,
        max_publishers=config.max_publishers,
        max_viewers_per_stream=config.max_viewers_per_stream)


def hls_settings(config: NodeConfig, base: HlsSettings | None = None) -> HlsSettings:
    return dataclasses.replace(
        base or HlsSettings(), segment_seconds=config.hls_segment_seconds,
        part_seconds=config.hls_part_ms / 1000, window=config.hls_window,
        on_publish=config.hls_on_publish, variant=config.hls_variant)


def build_engine(config: NodeConfig, observer: Observer | None = None,
                 auth: AuthProvider | None = None, *, ownership: KeyOwnership | None = None,
                 upstream: Upstream | None = None,
                 fallback: FallbackProvider | None = None) -> Engine:
    """The kernel configured from ``config``; the observer defaults to one log line per
    session start and end, auth to allow-all."""
    return Engine(engine_config(config), observer=observer or LoggingObserver(), auth=auth,
                  ownership=ownership, upstream=upstream, fallback=fallback)


def node_id(config: NodeConfig) -> str:
    return config.node_id or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def _advertise(config: NodeConfig, port: int) -> str:
    if config.advertise_address:
        return config.advertise_address
    host = config.grpc_listen.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"{host}:{port}"


def _relay_settings(config: NodeConfig) -> RelaySettings:
    def read(path: str | None) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise ValueError(f"cannot read relay TLS file {path}: {exc}") from exc

    if bool(config.relay_tls_cert) != bool(config.relay_tls_key):
        raise ValueError("--relay-tls-cert and --relay-tls-key go together")
    return RelaySettings(token=config.relay_token, tls_cert=read(config.relay_tls_cert),
                         tls_key=read(config.relay_tls_key), tls_ca=read(config.relay_tls_ca))


@dataclass(slots=True)
class _Node:
    """What ``run_node`` builds, in the order it builds it."""

    role: NodeRole
    config: NodeConfig
    identity: dict[str, str]
    admission: Admission
    registry: NodeRegistry | None = None
    upstream: RelayUpstream | None = None
    relay: RelaySettings | None = None
    per_app: PerApp | None = None  # the auth providers from the config (None: given by code)
    retired_hooks: list[Webhooks] = field(default_factory=list)  # replaced by reloads
    hls: HlsService | None = None
    recorder: RecordingManager | None = None
    telemetry: otel.OtelObserver | None = None
    reloader: Reloader | None = None
    http: HttpServer | None = None

    def document(self) -> dict[str, Any]:
        """The node's identity and running config, for ``GET /api/v1/node``."""
        found: dict[str, Any] = dict(self.identity)
        if self.reloader is not None:
            found["config"] = self.reloader.summary()
        return found


def _cluster(node: _Node) -> None:
    """Origins and edges: the registry, and on edges the relay client."""
    config = node.config
    if not config.relay_token:
        log.warning("RELAY AUTH IS OFF: set ARCLY_RELAY_TOKEN on every origin and edge")
    node.registry = NodeRegistry(
        RegistrySettings(url=config.redis_url, password=config.redis_password,
                         prefix=config.redis_prefix, session_ttl=config.session_ttl),
        node_id=node.identity["id"], role=node.role)
    node.relay = _relay_settings(config)
    if node.role is NodeRole.EDGE:
        node.upstream = RelayUpstream(node.registry, node.identity["id"], EdgeSettings(
            relay=node.relay, reconnect_window=config.reconnect_window))
        node.registry.events.listen(node.upstream.on_event)


def _observers(node: _Node, extra: Sequence[Observer], telemetry: bool) -> list[Observer]:
    """Logging first, then HLS, the recorder, auth webhooks, OpenTelemetry, the caller's."""
    config = node.config
    observers: list[Observer] = [LoggingObserver()]
    if config.hls:
        node.hls = HlsService(hls_settings(config))
        observers.append(node.hls)
    if config.record and node.role.takes_publishers:
        node.recorder = RecordingManager(FilesystemStorage(config.record), RecordSettings(
            hls=config.record_hls, segment_seconds=config.hls_segment_seconds,
            fmp4=config.hls_variant is not HlsVariant.MPEGTS,
            max_age=config.record_max_age, max_bytes=config.record_max_bytes))
        observers.append(_PerAppRecording(node))
    if node.per_app is not None:
        observers.append(node.per_app)  # webhooks' on_publish_done / on_play_done
    if telemetry:
        node.telemetry = _telemetry_observer(node)
        observers.append(node.telemetry)
    return [*observers, *extra]


def _telemetry_observer(node: _Node) -> otel.OtelObserver:
    """Origins store each session's trace context in the registry; edges join the origin's
    trace."""
    tasks: set[asyncio.Task[None]] = set()
    registry, upstream = node.registry, node.upstream

    def stored(key: StreamKey, traceparent: str) -> None:
        if registry is not None:
            task = asyncio.get_running_loop().create_task(registry.set_trace(key, traceparent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    return otel.OtelObserver(
        node_id=node.identity["id"], role=node.role.value,
        remote_parent=upstream.trace_parents.get if upstream is not None else None,
        on_session=stored if node.role is NodeRole.ORIGIN else None,
        relay_lag=(lambda: upstream.lag_ms) if upstream is not None else None)


def _srt(node: _Node, engine: Engine) -> SrtServer | None:
    """The SRT listener, when libsrt can be loaded (else a warning: the node runs without)."""
    config = node.config
    if config.srt_listen is None:
        return None
    from arcly.protocols.srt import libsrt
    from arcly.protocols.srt.server import SrtServer

    try:
        libsrt.load()
    except libsrt.SrtUnavailable as exc:
        log.warning("SRT is off: %s", exc)
        return None
    return SrtServer(config.srt_listen.host, config.srt_listen.port,
                     SrtSettings(passphrase=config.srt_passphrase,
                                 latency_ms=config.srt_latency_ms),
                     admission=node.admission, engine=engine)


def _webrtc(node: _Node) -> WebRtcService | None:
    """WHEP/WHIP sessions (aiortc is imported only when they are on)."""
    config = node.config
    if not config.webrtc:
        return None
    from arcly.protocols.webrtc import ice
    from arcly.protocols.webrtc.service import WebRtcService

    ice.set_consent_timeout(config.webrtc_consent_timeout)
    if config.log_level != "debug":  # aioice logs every candidate pair check at info
        logging.getLogger("aioice").setLevel(logging.WARNING)
    return WebRtcService(WebRtcSettings(
        udp_ports=config.webrtc_udp_ports, bind_host=config.http_listen.host,
        advertise_ips=config.webrtc_advertise_ip, ice_servers=config.ice_servers,
        consent_timeout=config.webrtc_consent_timeout,
        keyframe_interval=config.hls_segment_seconds), node.admission)


class _PerAppRecording(NullObserver):
    """Starts the recorder for a publish when the app records (``[apps.NAME] record``, read
    from the running config at each publish, so a reload turns it on or off)."""

    def __init__(self, node: _Node) -> None:
        self.node = node

    def on_publish_start(self, key: StreamKey, protocol: str, peer: str) -> None:
        recorder = self.node.recorder
        if recorder is not None and self.node.config.records(key.app):
            recorder.on_publish_start(key, protocol, peer)


async def _reconfigure(node: _Node, engine: Engine, old: NodeConfig, new: NodeConfig,
                       auth: PerApp | None) -> None:
    """Apply a reloaded config (``Reloader`` has checked it and kept what needs a restart)."""
    node.config = new
    if (old.log_level, old.log_json) != (new.log_level, new.log_json):
        logs.configure(new.log_level, as_json=new.log_json)
    node.admission.limits = limits(new, node.admission.limits)
    engine.config = engine_config(new, engine.config)  # streams published from now on
    if node.hls is not None:
        node.hls.settings = hls_settings(new, node.hls.settings)
    if node.recorder is not None:
        node.recorder.settings = dataclasses.replace(
            node.recorder.settings, max_age=new.record_max_age, max_bytes=new.record_max_bytes)
    if node.per_app is None:
        if auth is not None:
            log.warning("config: auth is set by the embedding code; the file's auth is ignored")
        return
    node.retired_hooks += node.per_app.swap(auth or PerApp({}, AllowAll()))
    if node.http is not None:  # kept-alive HLS players are asked the new providers
        node.http.forget_grants()
    if node.per_app.open:
        _warn_if_open(new, node.per_app)


def _handlers(node: _Node, engine: Engine,
              metrics: Callable[[], bytes] | None) -> list[ProtocolHandler]:
    """RTMP, HLS, the recorder, HTTP and (origins) the relay: what the node serves."""
    config = node.config
    handlers: list[ProtocolHandler] = [RtmpServer(
        config.rtmp_listen.host, config.rtmp_listen.port,
        RtmpSettings(chunk_size=config.chunk_size, max_message_size=config.max_message_size,
                     handshake_timeout=config.handshake_timeout,
                     command_timeout=config.command_timeout,
                     write_coalesce=config.write_coalesce_ms / 1000,
                     write_coalesce_max=config.write_coalesce_max_ms / 1000,
                     read_merge_max=config.read_merge_max_ms / 1000),
        admission=node.admission, observer=engine.observer)]
    handlers += [h for h in (node.hls, node.recorder) if h is not None]
    http_settings = HttpSettings(header_timeout=config.handshake_timeout,
                                 write_coalesce=config.write_coalesce_ms / 1000,
                                 write_coalesce_max=config.write_coalesce_max_ms / 1000)
    srt = _srt(node, engine)
    if srt is not None:
        handlers.append(srt)
    node.http = HttpServer(config.http_listen.host, config.http_listen.port,
                           http_settings, engine=engine, hls=node.hls,
                           admission=node.admission, node=node.document,
                           api_token=config.api_token,
                           metrics=None if config.metrics_listen else metrics,
                           webrtc=_webrtc(node),
                           srt=srt.statistics if srt is not None else None,
                           recordings=node.recorder)
    handlers.append(node.http)
    if config.metrics_listen is not None and metrics is not None:
        handlers.append(MetricsServer(config.metrics_listen.host, config.metrics_listen.port,
                                      http_settings, engine=engine, admission=node.admission,
                                      metrics=metrics))
    if node.role is NodeRole.ORIGIN:
        registry = node.registry
        assert registry is not None and node.relay is not None

        def bound(host: str, port: int) -> None:
            registry.advertise(_advertise(config, port))
            node.identity["relay"] = registry.relay_address

        handlers.append(RelayServer(
            config.grpc_listen.host, config.grpc_listen.port, node.relay, on_bound=bound,
            trace_context=node.telemetry.traceparent if node.telemetry is not None else None))
    return handlers


async def run_node(role: str | NodeRole, config: NodeConfig,
                   shutdown: ShutdownToken | None = None, *,
                   observers: Sequence[Observer] = (), auth: AuthProvider | None = None,
                   telemetry: bool | None = None, source: ConfigSource | None = None) -> None:
    """Run one node of ``role`` until a signal (or ``shutdown``) stops it.

    ``observers`` are told about stream life after the node's own; ``auth`` replaces the
    ``--auth-config`` providers. ``telemetry``: None installs the OpenTelemetry SDK as the
    ``OTEL_*`` environment and ``--metrics`` say; True attaches the OpenTelemetry observer to
    whatever providers are installed (tests). ``source``: where ``config`` came from (flags,
    env, file), so SIGHUP and file changes reload it."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    node = _Node(NodeRole(role), config, {"id": node_id(config), "role": NodeRole(role).value},
                 Admission(limits(config), allow_publish=NodeRole(role).takes_publishers))
    token = shutdown or ShutdownToken()
    if auth is None:  # from the config (allow-all when it names none), swapped by reloads
        node.per_app = auth_for(config, node=node.identity["id"]) or PerApp({}, AllowAll())
        auth = node.per_app
    if node.role.clustered:
        _cluster(node)
    installed = sdk.configure(f"arcly-{node.role}", {
        "arcly.node.id": node.identity["id"], "arcly.node.role": node.role.value},
        prometheus=config.metrics) if telemetry is None else None
    traced = bool(telemetry or installed is not None)
    engine_observers = _observers(node, observers, traced)
    ownership: KeyOwnership | None = node.registry if node.role is NodeRole.ORIGIN else None
    if node.telemetry is not None:  # auth decisions and claims become parts of sessions
        parts = node.telemetry.parts
        auth = tracing.TracedAuth(auth or AllowAll(), node_id=node.identity["id"], parts=parts,
                                  session_attributes=node.telemetry.session_attributes)
        if ownership is not None:
            ownership = tracing.TracedOwnership(ownership, node_id=node.identity["id"],
                                                parts=parts)
    fallbacks = AppFallbacks(lambda: node.config) if node.role.takes_publishers else None
    engine = build_engine(config, CompositeObserver(engine_observers), auth,
                          ownership=ownership, upstream=node.upstream, fallback=fallbacks)
    if fallbacks is not None:
        fallbacks.registry = engine
    engine.limit_hit = node.admission.refuse  # counted and logged with the other limits
    if traced:
        hls = node.hls
        otel.StreamMetrics(engine, refused=node.admission.refusals,
                           hls_viewers=hls.viewers if hls is not None else None,
                           hls_sent=(lambda: hls.bytes_sent) if hls is not None else None)
    node.reloader = Reloader(source, config, lambda old, new, per_app: _reconfigure(
        node, engine, old, new, per_app), node=node.identity["id"])
    handlers = _handlers(node, engine, installed.prometheus_text
                         if installed is not None and installed.prometheus is not None else None)
    handlers.append(node.reloader)
    _warn_if_open(config, auth)
    reaper: asyncio.Task[None] | None = None
    registry_task: asyncio.Task[None] | None = None
    stop_registry = asyncio.Event()
    try:
        await _bind(handlers)
        if node.registry is not None and node.registry.keeps_session:
            await _start_session(node.registry)
        reaper = engine.spawn_idle_reaper(min(5.0, (config.idle_timeout or 5.0) / 2), token,
                                          always=True)  # a reload may set the timeout
        if node.registry is not None:
            registry_task = asyncio.create_task(
                node.registry.run(stop_registry, _Held(engine, node.hls)), name="registry")
        await _serve(node, engine, handlers, token)
    finally:
        token.cancel()
        stop_registry.set()
        pending = [t for t in (reaper, registry_task) if t is not None]
        await asyncio.gather(*pending, return_exceptions=True)
        if node.upstream is not None:
            await node.upstream.close()
        for hooks in [*(node.per_app.webhooks if node.per_app else []), *node.retired_hooks]:
            await hooks.close()
        if installed is not None:
            installed.shutdown()
        if node.registry is not None:
            await node.registry.deregister()
            await node.registry.close()
    log.info("node stopped role=%s id=%s", node.role, node.identity["id"])


async def _bind(handlers: Sequence[ProtocolHandler]) -> None:
    """Every listener takes its address before any serves: a taken port is one clear error at
    start-up (``ListenError``), with the addresses already taken given back."""
    bound: list[Any] = []
    try:
        for handler in handlers:
            bind = getattr(handler, "bind", None)
            if bind is not None:
                await bind()
                bound.append(handler)
    except ListenError:
        for handler in bound:
            await handler.close()
        raise


async def _start_session(registry: NodeRegistry) -> None:
    """Have a registry session before taking publishers (a claim needs one); if Redis is not
    there yet, the registry loop keeps trying and publishes are refused meanwhile."""
    try:
        await registry.start_session()
    except (RedisError, OSError) as exc:
        log.warning("registry unreachable at start; publishes wait for it error=%s", exc)


async def _serve(node: _Node, engine: Engine, handlers: Sequence[ProtocolHandler],
                 token: ShutdownToken) -> None:
    config = node.config
    log.info("node starting role=%s id=%s rtmp=%s http=%s hls=%s record=%s idle_timeout=%s "
             "loop=%s", node.role, node.identity["id"], config.rtmp_listen, config.http_listen,
             config.hls, config.record, config.idle_timeout,
             type(asyncio.get_running_loop()).__module__)
    for notice in config.retired:
        log.warning("%s", notice)
    if node.registry is None:
        await engine.serve_until_signal(handlers, token)
        return
    drain = _Drain(engine, token, node.admission, node.registry, config.drain_timeout)
    try:
        await engine.serve_until_signal(handlers, token, on_signal=drain.on_signal)
    finally:
        if drain.task is not None:
            drain.task.cancel()


def _warn_if_open(config: NodeConfig, auth: AuthProvider | None) -> None:
    inner = getattr(auth, "inner", auth)  # unwrap telemetry
    unprotected = inner is None or isinstance(inner, AllowAll) or (
        isinstance(inner, PerApp) and inner.open)
    if unprotected and not all(
            is_loopback(a.host) for a in (config.rtmp_listen, config.http_listen)):
        log.warning("AUTH IS OFF: anyone who can reach this node may publish and play "
                    "(allow-all auth on a non-loopback address)")


async def serve_single(config: NodeConfig, shutdown: ShutdownToken | None = None, *,
                       observers: Sequence[Observer] = (),
                       auth: AuthProvider | None = None) -> None:
    """Run ``arcly serve`` (the single-node role) until a signal (or ``shutdown``)."""
    await run_node(NodeRole.SINGLE, config, shutdown, observers=observers, auth=auth)


class _Held:
    """The node's streams as its registry sees them: load for heartbeats, last-frame times for
    stream records, and a lost key ends its publish."""

    def __init__(self, engine: Engine, hls: HlsService | None) -> None:
        self.engine = engine
        self.hls = hls
        self._tasks: set[asyncio.Task[bool]] = set()

    def load(self) -> NodeLoad:
        """Viewers are people (HLS: the estimate from playlist polls), not the segmenters,
        recorders and relays that also subscribe: the operator's deletion costs follow this."""
        streams = self.engine.streams()
        viewers = sum(1 for s in streams for sub in s.subscribers if sub.viewer)
        if self.hls is not None:
            viewers += sum(self.hls.viewers().values())
        return NodeLoad(streams=len(streams), viewers=viewers)

    def last_frame(self, key: StreamKey) -> float | None:
        stream = self.engine.stream(key)
        if stream is None:
            return None
        return time.time() - (self.engine.clock() - stream.last_frame_at)

    def ownership_lost(self, key: StreamKey, token: int, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self.engine.end_publish(key, reason, token=token))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Drain:
    """Cluster roles: the first signal drains (no new sessions; the node says so in the
    registry; stop when the last session ends or ``drain_timeout`` passes), the second stops
    at once."""

    def __init__(self, engine: Engine, token: ShutdownToken, admission: Admission,
                 registry: NodeRegistry, drain_timeout: float) -> None:
        self.engine = engine
        self.token = token
        self.admission = admission
        self.registry = registry
        self.drain_timeout = drain_timeout
        self.task: asyncio.Task[None] | None = None

    def on_signal(self, sig: signal.Signals) -> None:
        if self.task is not None:
            log.info("signal received again signal=%s; stopping now", sig.name)
            self.token.cancel()
            return
        log.info("signal received signal=%s; draining for up to %.0f s", sig.name,
                 self.drain_timeout)
        self.task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        self.admission.draining = True
        await self.registry.set_state(NodeState.DRAINING)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        # Polled: "no sessions left" is a condition over the whole engine, not one event.
        while loop.time() < deadline and any(  # noqa: ASYNC110
                s.subscribers or not (s.relayed or s.protocol == FALLBACK)
                for s in self.engine.streams()):
            await asyncio.sleep(0.25)
        log.info("drain finished; stopping")
        self.token.cancel()
