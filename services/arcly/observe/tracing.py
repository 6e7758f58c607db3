"""Trace hygiene: every span belongs to a story someone opens.

A backend shows traces by their root span, so only sessions are roots: ``publish``, ``relay``,
``play`` (and the operator's actions). What happens before a session exists — the RTMP
handshake, the auth decision, the ownership claim — is *recorded* (name, times, attributes)
and attached as children when the session span starts, which then starts as early as its first
part. A refused publish or play becomes a session span of its own, marked as an error, with its
parts. Parts of connections that never become a session (a port scan, a client that hangs up)
are dropped after a minute. Background work (registry heartbeats and session renewals) makes no
span at all: ``ChildSpansOnly`` gives instrumentation (Redis) spans only inside a parent.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from arcly.engine import (
    Action,
    ArclyError,
    AuthError,
    AuthGrant,
    AuthProvider,
    AuthRequest,
    KeyOwnership,
    StreamKey,
)

PART_TTL = 60.0  # seconds a connection's parts wait for its session
MAX_PENDING = 10_000  # connections with parts waiting (oldest dropped first)
# Requests that are not sessions of their own (HLS: every playlist and segment is one):
# their auth decisions are not traced.
SESSIONLESS = frozenset({"hls"})


@dataclass(frozen=True, slots=True)
class Part:
    """Something that happened before its session span existed."""

    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""


class SessionParts:
    """Parts waiting for their session, by connection (``peer``) and, for claims, by key."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self._by_peer: OrderedDict[str, tuple[float, list[Part]]] = OrderedDict()
        self._claims: dict[StreamKey, Part] = {}

    def add(self, peer: str, part: Part) -> None:
        now = time.monotonic()
        created, parts = self._by_peer.pop(peer, (now, []))
        parts.append(part)
        self._by_peer[peer] = (created, parts)
        while self._by_peer:
            oldest, (seen, _) = next(iter(self._by_peer.items()))
            if now - seen < PART_TTL and len(self._by_peer) <= MAX_PENDING:
                break
            del self._by_peer[oldest]

    def add_claim(self, key: StreamKey, part: Part) -> None:
        self._claims[key] = part

    def take(self, peer: str, key: StreamKey | None = None) -> list[Part]:
        parts = list(self._by_peer.pop(peer, (0.0, []))[1])
        if key is not None and key in self._claims:
            parts.append(self._claims.pop(key))
        return parts

    def start_session(self, name: str, *, parts: Sequence[Part], kind: SpanKind,
                      attributes: Mapping[str, Any], parent: context.Context | None = None,
                      links: Sequence[trace.Link] = ()) -> trace.Span:
        """A session span that starts with its first part, the parts as its children."""
        start = min((p.start_ns for p in parts), default=None)
        span = self.tracer.start_span(name, context=parent or context.Context(), kind=kind,
                                      attributes=attributes, links=links, start_time=start)
        inside = trace.set_span_in_context(span)
        for part in parts:
            child = self.tracer.start_span(part.name, context=inside, attributes=part.attributes,
                                           start_time=part.start_ns)
            if part.error:
                child.set_status(Status(StatusCode.ERROR, part.error))
            child.end(end_time=part.end_ns)
        return span

    def refused(self, name: str, *, parts: Sequence[Part], attributes: Mapping[str, Any],
                reason: str) -> None:
        """A session that never started: one error span with what happened."""
        span = self.start_session(name, parts=parts, kind=SpanKind.SERVER,
                                  attributes={**attributes, "arcly.refused": reason})
        span.set_status(Status(StatusCode.ERROR, reason))
        span.end()


def _timed(name: str, started: int, attributes: Mapping[str, Any], error: str = "") -> Part:
    return Part(name, started, time.time_ns(), dict(attributes), error)


class TracedAuth:
    """Wraps an ``AuthProvider``: each decision is a part of its session (or of the refused
    session it causes)."""

    def __init__(self, inner: AuthProvider, *, node_id: str, parts: SessionParts,
                 session_attributes: Any) -> None:
        self.inner = inner
        self.node_id = node_id
        self.parts = parts
        self.session_attributes = session_attributes  # (key, protocol, peer) -> attributes

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)  # e.g. PerApp.webhooks, PerApp.open

    async def authorize(self, request: AuthRequest) -> AuthGrant | None:
        if request.protocol in SESSIONLESS:
            return await self.inner.authorize(request)
        attributes = {"arcly.stream.key": str(request.key), "arcly.node.id": self.node_id,
                      "arcly.auth.action": request.action.value,
                      "network.protocol.name": request.protocol,
                      "arcly.auth.provider": type(self.inner).__name__}
        name = f"auth {request.action.value}"
        started = time.time_ns()
        try:
            grant = await self.inner.authorize(request)
        except AuthError as exc:
            part = _timed(name, started, {**attributes, "arcly.auth.allowed": False}, str(exc))
            session = "publish" if request.action is Action.PUBLISH else "play"
            self.parts.refused(
                f"{session} {request.key}",
                parts=[*self.parts.take(request.peer), part],
                attributes=self.session_attributes(request.key, request.protocol,
                                                   request.peer),
                reason=str(exc))
            raise
        self.parts.add(request.peer, _timed(name, started, {
            **attributes, "arcly.auth.allowed": True,
            "arcly.auth.takeover": bool(grant and grant.takeover)}))
        return grant


class TracedOwnership:
    """Wraps the kernel's ``KeyOwnership``: each claim is a part of its publish session (the
    observer's ``on_publish_start``, or ``on_publish_refused`` when it fails)."""

    def __init__(self, inner: KeyOwnership, *, node_id: str, parts: SessionParts) -> None:
        self.inner = inner
        self.node_id = node_id
        self.parts = parts

    async def claim(self, key: StreamKey) -> int:
        attributes: dict[str, Any] = {"arcly.stream.key": str(key),
                                      "arcly.node.id": self.node_id}
        started = time.time_ns()
        try:
            token = await self.inner.claim(key)
        except ArclyError as exc:
            self.parts.add_claim(key, _timed("ownership claim", started, attributes, str(exc)))
            raise
        self.parts.add_claim(key, _timed("ownership claim", started,
                                         {**attributes, "arcly.fencing_token": token}))
        return token

    async def release(self, key: StreamKey, token: int) -> None:
        await self.inner.release(key, token)


class ChildSpansOnly(trace.TracerProvider):
    """A tracer provider for instrumentation (Redis): spans inside a parent, none at the root
    (a heartbeat is nobody's story)."""

    def __init__(self, inner: trace.TracerProvider) -> None:
        self.inner = inner

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _ChildSpansOnlyTracer(self.inner.get_tracer(*args, **kwargs))


class _ChildSpansOnlyTracer(trace.Tracer):
    def __init__(self, inner: trace.Tracer) -> None:
        self.inner = inner

    @staticmethod
    def _orphan(ctx: context.Context | None) -> bool:
        return not trace.get_current_span(ctx).get_span_context().is_valid

    def start_span(self, name: str, context: context.Context | None = None,
                   *args: Any, **kwargs: Any) -> trace.Span:
        if self._orphan(context):
            return trace.INVALID_SPAN
        return self.inner.start_span(name, context, *args, **kwargs)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
            self, name: str, context: context.Context | None = None, *args: Any,
            **kwargs: Any) -> Iterator[trace.Span]:
        if self._orphan(context):
            yield trace.INVALID_SPAN
            return
        with self.inner.start_as_current_span(name, context, *args, **kwargs) as span:
            yield span
