"""The relay client on edges: an ``Upstream`` that finds a key's owner in the registry and a
``MediaSource`` that streams its frames over ``Relay.Subscribe``.

If the origin is lost mid-stream (it died, stopped, or the key was claimed elsewhere) the
source re-resolves the owner and resubscribes, for up to ``reconnect_window`` seconds, without
ending the local stream: viewers stay connected and continue from the new session's sequence
headers. It looks the moment the relay breaks, and again whenever the events channel says the
key was claimed (a broadcaster that moved to another origin), else with backoff. A claim with a
newer fencing token also moves a source whose relay call still looks alive (an origin that is
stopped or partitioned does not close its connections). A normal end of stream (the publisher
left) ends the local stream at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc

from arcly.engine import Frame, FrameKind, SegmentMark, StreamKey
from arcly.relay.v1 import relay_pb2 as pb

from .model import Owner
from .registry import RegistryClient, RegistryEvent, RegistryUnavailable
from .relay_server import SERVICE, RelaySettings, grpc_options

log = logging.getLogger("arcly.relay")


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    relay: RelaySettings = field(default_factory=RelaySettings)
    reconnect_window: float = 20.0
    poll_interval: float = 0.25  # the first re-resolution delay; doubles up to 2 s


class RelayUpstream:
    """The kernel ``Upstream`` of an edge node."""

    def __init__(self, registry: RegistryClient, node_id: str, settings: EdgeSettings) -> None:
        self.registry = registry
        self.node_id = node_id
        self.settings = settings
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.lag_ms = 0.0
        # The publish session's traceparent per key (from the relay call, else the registry).
        self.trace_parents: dict[StreamKey, str] = {}
        self.sources: dict[StreamKey, RelaySource] = {}

    def channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            relay = self.settings.relay
            if relay.tls:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=relay.tls_ca, private_key=relay.tls_key,
                    certificate_chain=relay.tls_cert)
                channel = grpc.aio.secure_channel(address, credentials,
                                                  options=grpc_options(relay))
            else:
                channel = grpc.aio.insecure_channel(address, options=grpc_options(relay))
            self._channels[address] = channel
        return channel

    async def open(self, key: StreamKey) -> RelaySource | None:
        try:
            owner = await self.registry.owner(key)
        except RegistryUnavailable as exc:
            log.warning("cannot resolve stream=%s error=%s", key, exc)
            return None
        if owner is None or not owner.relay:
            return None
        source = RelaySource(self, key, owner)
        await source.connect()
        self.sources[key] = source
        return source

    def on_event(self, event: RegistryEvent) -> None:
        """A key was claimed: its source moves to the new owner at once."""
        if event.kind == "published" and event.key is not None:
            source = self.sources.get(event.key)
            if source is not None:
                source.claimed(event.token or 0)

    def describe(self, key: StreamKey) -> dict[str, object] | None:
        """Where ``key`` comes from (for the API): origin node, relay address, lag."""
        source = self.sources.get(key)
        if source is None:
            return None
        return {"origin": source.owner.node_id, "relay": source.owner.relay,
                "session": source.owner.token, "lag_ms": round(source.lag_ms, 2),
                "resubscriptions": source.resubscriptions}

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


class RelaySource:
    """One upstream subscription, surviving origin changes."""

    def __init__(self, upstream: RelayUpstream, key: StreamKey, owner: Owner) -> None:
        self.upstream = upstream
        self.key = key
        self.owner = owner
        self.highest_token = owner.token
        self._call: grpc.aio.UnaryStreamCall | None = None
        self.resubscriptions = 0
        self.lag_ms = 0.0
        self._claimed = asyncio.Event()  # a newer claim was announced
        self._moving = False  # we cancelled our own call to move to a newer owner

    async def connect(self) -> None:
        """Subscribe and read the call's initial metadata (the session's trace context), so
        the local session can join the trace before its first frame."""
        self._subscribe()
        assert self._call is not None
        traceparent = self.owner.trace
        try:
            async with asyncio.timeout(5):
                metadata = await self._call.initial_metadata()
            for name, value in metadata or ():
                if name == "traceparent":
                    traceparent = str(value)
        except (grpc.aio.AioRpcError, TimeoutError):
            pass  # next_frame() reports what went wrong
        if traceparent:
            self.upstream.trace_parents[self.key] = traceparent

    def _subscribe(self) -> None:
        stub = self.upstream.channel(self.owner.relay)
        metadata = (("authorization", f"Bearer {self.upstream.settings.relay.token}"),)
        self._call = stub.unary_stream(
            f"/{SERVICE}/Subscribe", request_serializer=pb.SubscribeRequest.SerializeToString,
            response_deserializer=pb.RelayMessage.FromString,
        )(pb.SubscribeRequest(app=self.key.app, stream=self.key.stream,
                              node_id=self.upstream.node_id), metadata=metadata)
        log.info("relay subscribed stream=%s origin=%s relay=%s token=%d", self.key,
                 self.owner.node_id, self.owner.relay, self.owner.token)

    def claimed(self, token: int) -> None:
        """Someone claimed our key with ``token``: if it is newer than what we relay, leave the
        current call (even one that still looks alive) and re-resolve."""
        if token <= self.highest_token:
            return
        self._claimed.set()
        if self._call is not None and not self._moving:
            self._moving = True
            self._call.cancel()  # wakes a pending read()

    async def next_frame(self) -> Frame | None:
        while True:
            if self._call is None:
                self._subscribe()
            assert self._call is not None
            try:
                message = await self._call.read()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not self._moving or (task is not None and task.cancelling()):
                    raise  # our own task is being cancelled
                self._moving = False
                log.info("relay moving stream=%s: a newer owner claimed it", self.key)
                if not await self._reresolve():
                    return None
                continue
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                    log.error("relay refused stream=%s code=%s detail=%s", self.key, code.name,
                              exc.details())
                    return None
                log.warning("relay lost stream=%s origin=%s code=%s", self.key,
                            self.owner.node_id, code.name)
                if not await self._reresolve():
                    return None
                continue
            if message is grpc.aio.EOF:
                if not await self._reresolve():
                    return None
                continue
            if message.HasField("ended"):
                log.info("relay stream ended stream=%s reason=%r", self.key,
                         message.ended.reason)
                return None
            frame = message.frame
            if frame.fencing_token < self.highest_token:
                continue  # a stale owner's frame
            self.highest_token = frame.fencing_token
            if frame.origin_time_us:
                self.lag_ms = max(0.0, time.time() * 1000 - frame.origin_time_us / 1000)
                self.upstream.lag_ms = self.lag_ms
            mark = None
            if frame.HasField("mark"):
                m = frame.mark  # (from an origin without parts: part 0 of every segment)
                mark = SegmentMark(m.sequence, m.discontinuity, m.start, m.session, m.part,
                                   m.part_start, m.independent or m.part == 0)
            return Frame(FrameKind(frame.kind), frame.timestamp, frame.payload,
                         keyframe=frame.keyframe, config=frame.config, mark=mark)

    async def _reresolve(self) -> bool:
        """Wait for the key's next owner (a republish, here or on another origin): look now,
        then whenever a claim is announced, else with backoff."""
        if self._call is not None:
            self._moving = True  # a late claimed() must not cancel anything
            self._call.cancel()
            self._call = None
        self._moving = False
        deadline = time.monotonic() + self.upstream.settings.reconnect_window
        delay = self.upstream.settings.poll_interval
        while time.monotonic() < deadline:
            self._claimed.clear()
            try:
                owner = await self.upstream.registry.owner(self.key)
            except RegistryUnavailable:
                owner = None
            if owner is not None and owner.relay and (
                    owner.token != self.owner.token or owner.node_id != self.owner.node_id):
                self.owner = owner
                self.highest_token = max(self.highest_token, owner.token)
                self.resubscriptions += 1
                return True
            try:
                await asyncio.wait_for(self._claimed.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, 2.0)
        log.info("relay gave up stream=%s after %.0f s without a new owner", self.key,
                 self.upstream.settings.reconnect_window)
        return False

    async def aclose(self) -> None:
        if self.upstream.sources.get(self.key) is self:
            del self.upstream.sources[self.key]
        if self._call is not None:
            self._call.cancel()
            self._call = None
