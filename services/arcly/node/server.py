"""The single-node role: origin and edge in one process, in-memory registry.

Owns the process lifecycle: build the engine and listeners, run them until SIGINT/SIGTERM,
then stop accepting, end every stream cleanly (viewers get end-of-stream) and exit 0.
"""

from __future__ import annotations

import asyncio
import logging

from arcly.engine import (
    AllowAll,
    AuthProvider,
    Engine,
    EngineConfig,
    Observer,
    ProtocolHandler,
    ShutdownToken,
)
from arcly.hls.service import HlsService, HlsSettings
from arcly.http.server import HttpServer
from arcly.observe import CompositeObserver, LoggingObserver
from arcly.protocols.rtmp import RtmpServer, RtmpSettings
from arcly.recording import FilesystemStorage, RecordingManager, RecordSettings

from .config import NodeConfig

log = logging.getLogger("arcly.node")


def build_engine(config: NodeConfig, observer: Observer | None = None,
                 auth: AuthProvider | None = None) -> Engine:
    """The kernel configured from ``config``; the observer defaults to one log line per
    session start and end, auth to allow-all."""
    engine_config = EngineConfig(
        idle_timeout=config.idle_timeout,
        gop_max_bytes=config.gop_max_bytes,
        viewer_backlog_bytes=config.viewer_backlog_bytes,
        segment_target=config.hls_segment_seconds,
    )
    return Engine(engine_config, observer=observer or LoggingObserver(), auth=auth)


async def serve_single(config: NodeConfig, shutdown: ShutdownToken | None = None,
                       engine: Engine | None = None) -> None:
    """Run ``arcly serve`` until a signal (or ``shutdown``) stops it."""
    engine = engine or build_engine(config)
    rtmp = RtmpServer(config.rtmp_listen.host, config.rtmp_listen.port,
                      RtmpSettings(chunk_size=config.chunk_size,
                                   max_message_size=config.max_message_size))
    handlers: list[ProtocolHandler] = [rtmp]
    hls = None
    if config.hls:
        hls = HlsService(engine, HlsSettings(segment_seconds=config.hls_segment_seconds,
                                             window=config.hls_window,
                                             on_publish=config.hls_on_publish))
        engine.observer = CompositeObserver([engine.observer, hls])
        handlers.append(hls)
    if config.record:
        recorder = RecordingManager(engine, FilesystemStorage(config.record), RecordSettings(
            hls=config.record_hls, segment_seconds=config.hls_segment_seconds))
        engine.observer = CompositeObserver([engine.observer, recorder])
        handlers.append(recorder)
    handlers.append(HttpServer(config.http_listen.host, config.http_listen.port, hls=hls))
    token = shutdown or ShutdownToken()
    reaper = engine.spawn_idle_reaper(min(5.0, (config.idle_timeout or 5.0) / 2), token)
    log.info("node starting role=single rtmp=%s http=%s hls=%s record=%s idle_timeout=%s "
             "loop=%s", config.rtmp_listen, config.http_listen, config.hls, config.record,
             config.idle_timeout,
             type(asyncio.get_running_loop()).__module__)
    if isinstance(engine.auth, AllowAll) and not all(
            _is_loopback(a.host) for a in (config.rtmp_listen, config.http_listen)):
        log.warning("AUTH IS OFF: anyone who can reach this node may publish and play "
                    "(allow-all auth on a non-loopback address)")
    try:
        await engine.serve_until_signal(handlers, token)
    finally:
        token.cancel()
        if reaper is not None:
            await asyncio.gather(reaper, return_exceptions=True)
    log.info("node stopped")


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
