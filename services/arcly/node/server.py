"""Node roles and the process lifecycle.

- ``single`` (``arcly serve``): origin and edge in one process, in-memory registry.
- ``origin``: RTMP ingest, local playback, GOP cache, the relay gRPC server; stream-key
  ownership in Redis.
- ``edge``: RTMP/HTTP-FLV/HLS for viewers; streams come from their owning origin over the relay,
  one upstream per key, however many viewers.

Lifecycle: ``single`` stops on SIGINT/SIGTERM (stop accepting, end streams, exit 0). Cluster
roles drain first: the node marks itself ``draining`` in the registry, readiness turns false,
new publishers and viewers are refused, existing sessions continue until they end or
``--drain-timeout`` passes; a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence

from arcly.auth import PerApp, load_auth
from arcly.cluster.registry import RedisRegistry, RegistrySettings
from arcly.cluster.relay_client import EdgeSettings, RelayUpstream
from arcly.cluster.relay_server import RelayServer, RelaySettings
from arcly.engine import (
    AllowAll,
    AuthProvider,
    Engine,
    EngineConfig,
    KeyOwnership,
    Observer,
    ProtocolHandler,
    ShutdownToken,
    StreamKey,
    Upstream,
)
from arcly.hls.service import HlsService, HlsSettings
from arcly.http.server import HttpServer, HttpSettings
from arcly.observe import CompositeObserver, LoggingObserver, otel
from arcly.protocols.listener import Admission
from arcly.protocols.rtmp import RtmpServer, RtmpSettings
from arcly.recording import FilesystemStorage, RecordingManager, RecordSettings

from .config import NodeConfig

log = logging.getLogger("arcly.node")
ROLES = ("single", "origin", "edge")


def build_engine(config: NodeConfig, observer: Observer | None = None,
                 auth: AuthProvider | None = None, *, ownership: KeyOwnership | None = None,
                 upstream: Upstream | None = None) -> Engine:
    """The kernel configured from ``config``; the observer defaults to one log line per
    session start and end, auth to allow-all."""
    engine_config = EngineConfig(
        idle_timeout=config.idle_timeout,
        gop_max_bytes=config.gop_max_bytes,
        viewer_backlog_bytes=config.viewer_backlog_bytes,
        segment_target=config.hls_segment_seconds,
        upstream_linger=config.edge_linger,
    )
    return Engine(engine_config, observer=observer or LoggingObserver(), auth=auth,
                  ownership=ownership, upstream=upstream)


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


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _listeners(config: NodeConfig, engine: Engine, admission: Admission,
               identity: dict[str, str]) -> list[ProtocolHandler]:
    """RTMP, HLS, HTTP (and the recorder): what every role serves to clients."""
    handlers: list[ProtocolHandler] = [RtmpServer(
        config.rtmp_listen.host, config.rtmp_listen.port,
        RtmpSettings(chunk_size=config.chunk_size, max_message_size=config.max_message_size,
                     handshake_timeout=config.handshake_timeout,
                     command_timeout=config.command_timeout,
                     write_coalesce=config.write_coalesce_ms / 1000),
        admission=admission, observer=lambda: engine.observer)]
    hls = None
    if config.hls:
        hls = HlsService(engine, HlsSettings(segment_seconds=config.hls_segment_seconds,
                                             window=config.hls_window,
                                             on_publish=config.hls_on_publish))
        engine.observer = CompositeObserver([engine.observer, hls])
        handlers.append(hls)
    if config.record and identity["role"] != "edge":
        recorder = RecordingManager(engine, FilesystemStorage(config.record), RecordSettings(
            hls=config.record_hls, segment_seconds=config.hls_segment_seconds))
        engine.observer = CompositeObserver([engine.observer, recorder])
        handlers.append(recorder)
    http_settings = HttpSettings(header_timeout=config.handshake_timeout,
                                 write_coalesce=config.write_coalesce_ms / 1000)
    handlers.append(HttpServer(config.http_listen.host, config.http_listen.port,
                               http_settings, hls=hls,
                               engine=engine, admission=admission, node=identity,
                               api_token=config.api_token))
    return handlers


async def run_node(role: str, config: NodeConfig, shutdown: ShutdownToken | None = None,
                   engine: Engine | None = None, *, telemetry: bool | None = None) -> None:
    """Run one node of ``role`` until a signal (or ``shutdown``) stops it. ``telemetry``:
    None follows the ``OTEL_*`` environment; True attaches the OpenTelemetry observer to
    whatever providers are installed (tests)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    identity = {"id": node_id(config), "role": role}
    token = shutdown or ShutdownToken()
    registry: RedisRegistry | None = None
    upstream: RelayUpstream | None = None
    extra: list[ProtocolHandler] = []
    admission = Admission(allow_publish=role != "edge",
                          max_connections=config.max_connections,
                          max_connections_per_ip=config.max_connections_per_ip,
                          max_publishers=config.max_publishers,
                          max_viewers_per_stream=config.max_viewers_per_stream)
    auth = load_auth(config.auth_config, node=identity["id"]) if config.auth_config else None
    if role != "single":
        if not config.relay_token:
            log.warning("RELAY AUTH IS OFF: set ARCLY_RELAY_TOKEN on every origin and edge")
        registry = RedisRegistry(
            RegistrySettings(url=config.redis_url, prefix=config.redis_prefix,
                             lease=config.ownership_lease),
            node_id=identity["id"], role=role)
        relay = _relay_settings(config)
        if role == "origin":
            engine = engine or build_engine(config, auth=auth, ownership=registry)

            def bound(host: str, port: int) -> None:
                assert registry is not None
                registry.relay_address = _advertise(config, port)
                identity["relay"] = registry.relay_address

            extra.append(RelayServer(config.grpc_listen.host, config.grpc_listen.port, relay,
                                     on_bound=bound))
        else:
            upstream = RelayUpstream(registry, identity["id"], EdgeSettings(
                relay=relay, reconnect_window=config.reconnect_window))
            engine = engine or build_engine(config, auth=auth, upstream=upstream)
        _watch_registry(registry, engine)
    engine = engine or build_engine(config, auth=auth)
    if auth is not None:
        for hooks in auth.webhooks:  # on_publish_done / on_play_done
            engine.observer = CompositeObserver([engine.observer, hooks])
    stop_telemetry = otel.configure(f"arcly-{role}", {"arcly.node.id": identity["id"],
                                                      "arcly.node.role": role}) \
        if telemetry is None else None
    observer: otel.OtelObserver | None = None
    if telemetry or stop_telemetry is not None:
        observer = _observe(engine, identity, registry, upstream)
        for handler in extra:
            if isinstance(handler, RelayServer):
                handler.trace_context = observer.traceparent
    handlers = _listeners(config, engine, admission, identity) + extra
    auth_impl = getattr(engine.auth, "inner", engine.auth)  # unwrap telemetry
    unprotected = isinstance(auth_impl, AllowAll) or (
        isinstance(auth_impl, PerApp) and auth_impl.open)
    if unprotected and not all(
            _is_loopback(a.host) for a in (config.rtmp_listen, config.http_listen)):
        log.warning("AUTH IS OFF: anyone who can reach this node may publish and play "
                    "(allow-all auth on a non-loopback address)")
    reaper = engine.spawn_idle_reaper(min(5.0, (config.idle_timeout or 5.0) / 2), token)
    stop_registry = asyncio.Event()
    registry_task = (asyncio.create_task(registry.run(stop_registry), name="registry")
                     if registry is not None else None)
    log.info("node starting role=%s id=%s rtmp=%s http=%s hls=%s record=%s idle_timeout=%s "
             "loop=%s", role, identity["id"], config.rtmp_listen, config.http_listen,
             config.hls, config.record, config.idle_timeout,
             type(asyncio.get_running_loop()).__module__)
    try:
        if registry is None:
            await engine.serve_until_signal(handlers, token)
        else:
            await _serve_draining(engine, handlers, token, admission, registry,
                                  config.drain_timeout)
    finally:
        token.cancel()
        stop_registry.set()
        pending = [t for t in (reaper, registry_task) if t is not None]
        await asyncio.gather(*pending, return_exceptions=True)
        if upstream is not None:
            await upstream.close()
        if auth is not None:
            for hooks in auth.webhooks:
                await hooks.close()
        if stop_telemetry is not None:
            stop_telemetry()
        if registry is not None:
            await registry.deregister()
            await registry.close()
    log.info("node stopped role=%s id=%s", role, identity["id"])


async def serve_single(config: NodeConfig, shutdown: ShutdownToken | None = None,
                       engine: Engine | None = None) -> None:
    """Run ``arcly serve`` (the single-node role) until a signal (or ``shutdown``)."""
    await run_node("single", config, shutdown, engine)


def _observe(engine: Engine, identity: dict[str, str], registry: RedisRegistry | None,
             upstream: RelayUpstream | None) -> otel.OtelObserver:
    """Attach the OpenTelemetry observer; origins store each session's trace context in the
    registry, edges join the origin's trace."""
    tasks: set[asyncio.Task[None]] = set()

    def stored(key: StreamKey, traceparent: str) -> None:
        if registry is not None:
            task = asyncio.get_running_loop().create_task(registry.set_trace(key, traceparent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    engine.auth = otel.TracedAuth(engine.auth, node_id=identity["id"])
    observer = otel.OtelObserver(
        engine, node_id=identity["id"], role=identity["role"],
        remote_parent=upstream.trace_parents.get if upstream is not None else None,
        on_session=stored if identity["role"] == "origin" else None,
        relay_lag=(lambda: upstream.lag_ms) if upstream is not None else None)
    engine.observer = CompositeObserver([engine.observer, observer])
    return observer


def _watch_registry(registry: RedisRegistry, engine: Engine) -> None:
    """Registry callbacks into the kernel: lost ownership ends the publish; heartbeats carry
    the node's load."""
    tasks: set[asyncio.Task[bool]] = set()

    def lost(key: StreamKey, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(engine.end_publish(key, reason))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def counts() -> dict[str, int]:
        streams = engine.streams()
        return {"streams": len(streams), "viewers": sum(len(s.subscribers) for s in streams)}

    def last_frame(key: StreamKey) -> float | None:
        stream = engine.stream(key)
        if stream is None:
            return None
        return time.time() - (engine.clock() - stream.last_frame_at)

    registry.on_lost = lost
    registry.counts = counts
    registry.last_frame = last_frame


async def _serve_draining(engine: Engine, handlers: Sequence[ProtocolHandler],
                          token: ShutdownToken, admission: Admission, registry: RedisRegistry,
                          drain_timeout: float) -> None:
    loop = asyncio.get_running_loop()
    drain_task: asyncio.Task[None] | None = None

    async def drain() -> None:
        admission.draining = True
        await registry.set_state("draining")
        deadline = loop.time() + drain_timeout
        # Polled: "no sessions left" is a condition over the whole engine, not one event.
        while loop.time() < deadline and any(  # noqa: ASYNC110
                s.subscribers or s.protocol == "rtmp" for s in engine.streams()):
            await asyncio.sleep(0.25)
        log.info("drain finished; stopping")
        token.cancel()

    def on_signal(sig: signal.Signals) -> None:
        nonlocal drain_task
        if drain_task is not None:
            log.info("signal received again signal=%s; stopping now", sig.name)
            token.cancel()
            return
        log.info("signal received signal=%s; draining for up to %.0f s", sig.name,
                 drain_timeout)
        drain_task = loop.create_task(drain())

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await engine.serve(handlers, token)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if drain_task is not None:
            drain_task.cancel()
