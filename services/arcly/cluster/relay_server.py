"""The relay server on origins: ``Relay.Subscribe`` streams a key's frames to an edge.

Each frame's serialized ``RelayMessage`` is built once and shared by every subscribing edge
(cached on the frame like the RTMP and FLV encodings). The kernel subscription is the edge's
bounded queue: an edge that stops reading falls behind, skips to keyframes, and is cut with
``RESOURCE_EXHAUSTED`` — the publisher and other edges never wait for it.

The service is registered by hand (a generic handler with an identity serializer) rather than
through generated servicer stubs: those serialize each response message per call, which would
encode every frame once per edge instead of once.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from arcly.engine import (
    CloseReason,
    Frame,
    InvalidStreamKey,
    ListenError,
    PublishRegistry,
    ShutdownToken,
    StreamKey,
    StreamNotFound,
)
from arcly.engine.reasons import moves_stream
from arcly.relay.v1 import relay_pb2 as pb

log = logging.getLogger("arcly.relay")

SERVICE = "arcly.relay.v1.Relay"
MAX_MESSAGE = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """Relay security and transport. ``token`` travels as bearer metadata on every call.
    With ``tls_cert``/``tls_key`` the origin serves TLS; with ``tls_ca`` too it requires client
    certificates signed by that CA (mTLS), and edges verify the origin against it (PEM bytes)."""

    token: str = ""
    keepalive_seconds: float = 20.0
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    tls_ca: bytes | None = None

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None


def grpc_options(settings: RelaySettings) -> list[tuple[str, Any]]:
    """Channel/server options both ends share: video-sized messages, keepalive on."""
    return [("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.keepalive_time_ms", int(settings.keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0)]


def encode_frame(frame: Frame, token: int) -> bytes:
    """The serialized ``RelayMessage`` of ``frame``, built once per frame."""
    data = frame.encodings.get("relay")
    if data is None:
        message = pb.RelayFrame(kind=int(frame.kind),  # type: ignore[arg-type]
                                timestamp=frame.timestamp,
                                keyframe=frame.keyframe, config=frame.config,
                                payload=frame.payload, fencing_token=token,
                                origin_time_us=time.time_ns() // 1000)
        mark = frame.mark
        if mark is not None:
            message.mark.sequence = mark.sequence
            message.mark.discontinuity = mark.discontinuity
            message.mark.start = mark.start
            message.mark.session = mark.session
            message.mark.part = mark.part
            message.mark.part_start = mark.part_start
            message.mark.independent = mark.independent
        data = pb.RelayMessage(frame=message).SerializeToString()
        frame.encodings["relay"] = data
    return data


def _identity(data: bytes) -> bytes:
    return data


def _bind_reason(error: RuntimeError) -> str:
    text = str(error).lower()
    return "address already in use" if "bind" in text or "in use" in text else str(error)


class RelayServer:
    """Serves ``arcly.relay.v1.Relay`` on the origin's gRPC listener."""

    name = "relay"

    def __init__(self, host: str, port: int, settings: RelaySettings, *,
                 on_bound: Callable[[str, int], None] | None = None,
                 trace_context: Callable[[StreamKey], str | None] | None = None) -> None:
        self.on_bound = on_bound
        self.trace_context = trace_context
        self.host = host
        self.port = port
        self.settings = settings
        self.addresses: list[tuple[str, int]] = []
        self._registry: PublishRegistry | None = None
        self._server: grpc.aio.Server | None = None

    async def bind(self) -> None:
        """Take the address (idempotent); raises ``ListenError``."""
        if self._server is not None:
            return
        server = grpc.aio.server(options=grpc_options(self.settings))
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                self._subscribe, request_deserializer=pb.SubscribeRequest.FromString,
                response_serializer=_identity)})
        server.add_generic_rpc_handlers((handler,))
        address = f"{self.host}:{self.port}"
        settings = self.settings
        try:
            if settings.tls_cert and settings.tls_key:
                credentials = grpc.ssl_server_credentials(
                    [(settings.tls_key, settings.tls_cert)], root_certificates=settings.tls_ca,
                    require_client_auth=settings.tls_ca is not None)
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc reports a failed bind this way
            raise ListenError("relay", self.host, self.port,
                              OSError(errno.EADDRINUSE, _bind_reason(exc))) from None
        if not port:  # older grpc: 0 for a failed bind
            raise ListenError("relay", self.host, self.port,
                              OSError(errno.EADDRINUSE, "address already in use"))
        self._server = server
        self.addresses = [(self.host, port)]

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
        self._registry = registry
        await self.bind()
        server = self._server
        assert server is not None
        await server.start()
        settings = self.settings
        log.info("listening protocol=relay address=%s:%d tls=%s mtls=%s", self.host,
                 self.addresses[0][1], bool(settings.tls_cert),
                 bool(settings.tls_cert and settings.tls_ca))
        if self.on_bound is not None:
            self.on_bound(self.host, self.addresses[0][1])
        try:
            await shutdown.wait()
        finally:
            await server.stop(grace=5.0)

    async def close(self) -> None:
        """Give the address back without serving (start-up failed elsewhere)."""
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    def _authorized(self, context: grpc.aio.ServicerContext) -> bool:
        expected = f"Bearer {self.settings.token}"
        for name, value in context.invocation_metadata() or ():
            if name == "authorization" and hmac.compare_digest(str(value), expected):
                return True
        return not self.settings.token

    async def _subscribe(self, request: pb.SubscribeRequest,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        peer = request.node_id or context.peer()
        if not self._authorized(context):
            log.warning("relay refused peer=%s reason=bad token", context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad relay token")
        try:
            key = StreamKey(request.app, request.stream)
        except InvalidStreamKey as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        assert self._registry is not None
        try:
            sub = await self._registry.subscribe(key, protocol="relay", peer=peer,
                                                   viewer=False)
        except StreamNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        token = sub.stream.token
        traceparent = self.trace_context(key) if self.trace_context else None
        if traceparent:  # the edge's relay span joins the publish session's trace
            await context.send_initial_metadata((("traceparent", traceparent),))
        reason = "edge left"
        handler = asyncio.current_task()
        assert handler is not None

        async def cut_when_behind() -> None:
            # A blocked write never returns to see the verdict: cancel the call instead.
            await sub.done.wait()
            if sub.close_reason == CloseReason.SLOW_VIEWER:
                log.warning("relay edge cut peer=%s stream=%s reason=slow viewer", peer, key)
                handler.cancel()

        watcher = asyncio.create_task(cut_when_behind())
        try:
            while batch := await sub.next_batch():
                for frame in batch:
                    yield encode_frame(frame, token)
            reason = sub.close_reason
            if reason == CloseReason.SLOW_VIEWER:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    "edge fell too far behind")
            ended = sub.stream.end_reason
            if moves_stream(ended):
                # Not the end: the broadcaster comes back here or elsewhere. Edges keep their
                # viewers and wait for the next owner.
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"stream moved: {ended}")
            yield pb.RelayMessage(ended=pb.StreamEnded(reason=reason)).SerializeToString()
        finally:
            watcher.cancel()
            sub.close(reason)
