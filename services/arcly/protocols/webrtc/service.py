"""WHEP and WHIP over the node's HTTP listener (RFC 9725 for WHIP; WHEP is its mirror).

``POST /{app}/{stream}/whep`` (or ``/whip``) with an SDP offer answers ``201 Created``, the SDP
answer and ``Location`` of the session; ``DELETE`` on that location ends it; ``PATCH`` with a
``application/trickle-ice-sdpfrag`` body adds remote candidates. Credentials are those of every
other protocol (``?key=``, ``?token=&expires=``), or ``Authorization: Bearer`` (OBS's "Bearer
Token" field): a bearer is the key, or a ``token=…&expires=…`` query. Refusals carry the reason:

======  ==========================================================================
400     malformed SDP, or an offer with no H.264 / Opus this node can use
401     credentials required and none given (``WWW-Authenticate: Bearer``)
403     wrong credentials; WHIP on an edge (it takes no publishers)
404     no such stream (WHEP), or no such session (DELETE/PATCH)
409     WHIP: the key is being published already
411     no ``Content-Length`` (chunked bodies are not taken)
413     an offer over 64 KiB
415     not ``application/sdp``
422     WHEP: the stream cannot go over WebRTC (B-frames, a codec other than H.264)
503     draining, too many viewers/publishers, or no UDP port left (``Retry-After``)
======  ==========================================================================
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Any
from urllib.parse import parse_qsl

from aiortc import RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.sdp import SessionDescription, candidate_from_sdp

from arcly.engine import (
    Action,
    ArclyError,
    AuthError,
    AuthRequest,
    CloseReason,
    InvalidStreamKey,
    StreamBusy,
    StreamKey,
    StreamNotFound,
)
from arcly.media import codecs
from arcly.protocols.http.exchange import Exchange, refuse_while_draining
from arcly.protocols.listener import Admission

from . import ice
from .feed import AudioFeed
from .session import Session
from .settings import WebRtcSettings
from .tracks import AudioTrack, has_reordering, video_codec
from .whep import WhepSession
from .whip import WhipSession

log = logging.getLogger("arcly.webrtc")

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
_CREDENTIALS = ("key", "token", "expires", "jwt")
_EXPOSE = "Location, Link, ETag, Accept-Patch"
_MAX_CANDIDATES = 32  # per PATCH
_TRICKLE_TIMEOUT = 3.0  # seconds for a PATCH's candidates (mDNS names resolve on the way)


class Refused(Exception):
    """An HTTP refusal: status, reason, extra headers."""

    def __init__(self, status: int, reason: str, extra: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.extra = extra or {}


def credentials(exchange: Exchange) -> dict[str, str]:
    """The query, plus what an ``Authorization: Bearer`` header carries: a key, or a signed
    token as ``token=…&expires=…`` (a key may contain ``=`` too: base64)."""
    query = dict(exchange.request.query)
    scheme, _, value = exchange.request.headers.get("authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        pairs = dict(parse_qsl(value)) if "&" in value or value.startswith("token=") else {}
        if pairs and "token" in pairs and set(pairs) <= set(_CREDENTIALS):
            for name, item in pairs.items():
                query.setdefault(name, item)
        else:
            query.setdefault("key", value)
    return query


def credential_digest(query: dict[str, str]) -> bytes:
    """What a session remembers of the credentials it was opened with (a hash): its DELETE
    and PATCH must carry the same (RFC 9725 §4.3), or anyone who learnt the URL could end it."""
    offered = "&".join(f"{name}={query.get(name, '')}" for name in _CREDENTIALS)
    return hashlib.sha256(offered.encode()).digest()


class WebRtcService:
    """The node's WebRTC sessions and their HTTP routes."""

    def __init__(self, settings: WebRtcSettings, admission: Admission) -> None:
        self.settings = settings
        self.admission = admission
        self.ports = ice.PortAllocator(settings.udp_ports)
        self.sessions: dict[str, Session] = {}
        self.feeds: dict[StreamKey, AudioFeed] = {}
        self.closing = False  # the node is shutting down: no new sessions
        self._feed_closing: set[asyncio.Task[None]] = set()
        self._digests: dict[str, bytes] = {}  # session id -> credential digest

    # --- HTTP ---------------------------------------------------------------------------

    async def whep(self, exchange: Exchange, params: dict[str, str]) -> None:
        await self._answer(exchange, params, self._start_whep)

    async def whip(self, exchange: Exchange, params: dict[str, str]) -> None:
        await self._answer(exchange, params, self._start_whip)

    async def _answer(self, exchange: Exchange, params: dict[str, str], start: Any) -> None:
        if refuse_while_draining(exchange, self.admission):
            return
        try:
            if self.closing:
                raise Refused(503, "node is shutting down", {"Retry-After": "1"})
            try:
                key = StreamKey(params["app"], params["stream"])
            except InvalidStreamKey as exc:
                raise Refused(404, str(exc)) from None
            offer = await self._read_offer(exchange)
            try:
                session: Session = await start(exchange, key, offer)
            except (Refused, asyncio.CancelledError):
                raise
            except Exception as exc:  # a bug, or aiortc failing in a way we did not foresee
                log.exception("webrtc session start failed path=%s peer=%s",
                              exchange.request.path[:200], exchange.peer)
                raise Refused(500, f"could not start the session: {type(exc).__name__}") \
                    from None
        except Refused as refused:
            log.info("webrtc refused path=%s peer=%s status=%d reason=%s",
                     exchange.request.path[:200], exchange.peer, refused.status, refused)
            exchange.respond(refused.status, f"{refused}\n", extra=refused.extra)
            return
        self._digests[session.id] = credential_digest(credentials(exchange))
        session.watch_connect()
        headers = {"Location": session.path, "ETag": f'"{session.id}"',
                   "Accept-Patch": TRICKLE, "Access-Control-Expose-Headers": _EXPOSE}
        if self.settings.ice_servers:
            headers["Link"] = ", ".join(s.link_header() for s in self.settings.ice_servers)
        log.info("webrtc %s start stream=%s peer=%s", session.kind, session.key, session.peer)
        exchange.respond(201, session.pc.localDescription.sdp, SDP, extra=headers)

    async def _read_offer(self, exchange: Exchange) -> tuple[str, set[str]]:
        text = await self._read_body(exchange, SDP, "the offer")
        try:
            parsed = SessionDescription.parse(text)
        except Exception as exc:  # aiortc's parser raises whatever the bad line provokes
            raise Refused(400, f"malformed SDP: {type(exc).__name__}") from None
        kinds = [m.kind for m in parsed.media]
        # One audio and one video section at most: aiortc would open a receiver (and a
        # decoder thread) for every extra one.
        if any(k not in ("audio", "video") for k in kinds) or len(kinds) != len(set(kinds)):
            raise Refused(400, "the offer must have at most one audio and one video section, "
                               "and nothing else")
        if not kinds:
            raise Refused(400, "the offer has no audio or video")
        return text, set(kinds)

    async def _read_body(self, exchange: Exchange, content_type: str, what: str) -> str:
        headers = exchange.request.headers
        if headers.get("content-type", "").split(";")[0].strip().lower() != content_type:
            raise Refused(415, f"{what} must be {content_type}",
                          {"Accept-Post" if content_type == SDP else "Accept-Patch":
                           content_type})
        if "transfer-encoding" in headers or "content-length" not in headers:
            raise Refused(411, "Content-Length required")
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise Refused(400, "bad Content-Length") from None
        if not 0 < length <= self.settings.max_body:
            raise Refused(413, f"{what} must be 1..{self.settings.max_body} bytes")
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                body = await exchange.reader.readexactly(length)
            return body.decode("utf-8")
        except (TimeoutError, asyncio.IncompleteReadError):
            raise Refused(400, f"{what} did not arrive") from None
        except UnicodeDecodeError:
            raise Refused(400, f"{what} is not UTF-8") from None

    async def _authorize(self, exchange: Exchange, action: Action, key: StreamKey,
                         protocol: str) -> Any:
        query = credentials(exchange)
        try:
            return await exchange.registry.authorize(AuthRequest(
                action, key, protocol, exchange.peer, query))
        except AuthError as exc:
            if any(query.get(name) for name in _CREDENTIALS):
                raise Refused(403, str(exc)) from None
            raise Refused(401, str(exc), {"WWW-Authenticate": 'Bearer realm="arcly"'}) from None

    async def _negotiate(self, session: Session, offer: str) -> None:
        """Apply the offer, gather on our ports, make the answer; Refused on failure (the
        session is closed then). The session is known from the start, so a node shutting
        down meanwhile closes it too."""
        self.sessions[session.id] = session
        try:
            await session.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            if isinstance(session, WhipSession):
                session.accept_media()
            ice.configure_gathering(session.pc, self.settings, self.ports)
            await session.pc.setLocalDescription(await session.pc.createAnswer())
        except ice.PortsExhausted as exc:
            await session.close("no UDP port")
            raise Refused(503, str(exc), {"Retry-After": "5"}) from None
        except (OperationError, InvalidAccessError, InvalidStateError, InternalError,
                ValueError) as exc:
            await session.close("bad offer")
            raise Refused(400, f"unusable offer: {exc}") from None
        except BaseException:
            await session.close("internal error")  # gives back its subscription or publish
            raise
        if session.closed:  # the node began shutting down while we negotiated
            raise Refused(503, "node is shutting down", {"Retry-After": "1"})

    async def _start_whep(self, exchange: Exchange, key: StreamKey,
                          offer: tuple[str, set[str]]) -> Session:
        text, kinds = offer
        await self._authorize(exchange, Action.PLAY, key, "webrtc")
        try:
            sub = await exchange.registry.subscribe(key, protocol="webrtc", peer=exchange.peer)
        except StreamNotFound as exc:
            raise Refused(404, str(exc)) from None
        if not self.admission.admit_viewer(sub, exchange.peer):
            raise Refused(503, "too many viewers on this stream", {"Retry-After": "5"})
        gop = sub.stream.gop
        why = ""
        if has_reordering(gop.frames):
            why = ("the stream has B-frames, which WebRTC players cannot show (publish with "
                   "-bf 0, or x264's zerolatency tune)")
        elif gop.video_config is not None and video_codec(gop.video_config) != codecs.H264:
            why = "the stream's video is not H.264"
        if why:
            sub.close("refused: " + why)
            raise Refused(422, why)
        try:
            pc = ice.peer_connection(self.settings)
            session = WhepSession(key, exchange.peer, pc, sub, kinds=kinds,
                                  connect_timeout=self.settings.connect_timeout,
                                  on_closed=self._closed, leave_feed=self._leave_feed)
        except BaseException:
            sub.close("internal error")
            raise
        await self._negotiate(session, text)
        if session.audio is not None:
            try:
                session.attach(await self._feed(exchange, key))
            except BaseException:
                await session.close("internal error")
                raise
        return session

    async def _start_whip(self, exchange: Exchange, key: StreamKey,
                          offer: tuple[str, set[str]]) -> Session:
        text, kinds = offer
        admission = self.admission
        if not admission.allow_publish:
            raise Refused(403, "this node takes no publishers: publish to an origin")
        grant = await self._authorize(exchange, Action.PUBLISH, key, "webrtc")
        if admission.publishers >= admission.limits.max_publishers:
            admission.refuse("max_publishers", f"peer={exchange.peer} stream={key}")
            raise Refused(503, "too many publishers on this node", {"Retry-After": "5"})
        admission.publishers += 1  # held from here: concurrent offers cannot pass the cap
        released = False

        def release_slot() -> None:
            nonlocal released
            if not released:
                released = True
                admission.publishers -= 1

        registry = exchange.registry
        try:
            if grant is not None and grant.takeover and \
                    await registry.end_publish(key, CloseReason.TAKEN_OVER):
                log.warning("publish takeover stream=%s peer=%s", key, exchange.peer)
            handle = await registry.start_publish(key, protocol="webrtc", peer=exchange.peer)
        except StreamBusy as exc:
            release_slot()
            raise Refused(409, str(exc)) from None
        except ArclyError as exc:
            release_slot()
            raise Refused(409, f"cannot publish: {exc}") from None
        except BaseException:
            release_slot()
            raise

        async def end_publish(reason: str) -> None:
            release_slot()
            # Only our own publish: one that replaced it has ended ours already.
            if not handle.ended.cancelled:
                await registry.end_publish(key, "unpublished" if reason in (
                    "client DELETE", "publisher left") else reason)

        try:
            pc = ice.peer_connection(self.settings)
            session = WhipSession(key, exchange.peer, pc, handle, kinds=kinds,
                                  end_publish=end_publish,
                                  connect_timeout=self.settings.connect_timeout,
                                  keyframe_interval=self.settings.keyframe_interval,
                                  on_closed=self._closed)
        except BaseException:
            await end_publish("internal error")
            raise
        await self._negotiate(session, text)
        return session

    async def session(self, exchange: Exchange, params: dict[str, str]) -> None:
        """``DELETE`` / ``PATCH`` on a session's location, with the credentials it was opened
        with."""
        found = self.sessions.get(params["session"])
        if found is None or found.path != exchange.request.path:
            exchange.respond(404, "no such session\n")
            return
        if not hmac.compare_digest(self._digests.get(found.id, b""),
                                   credential_digest(credentials(exchange))):
            exchange.respond(403, "not the credentials this session was opened with\n")
            return
        if exchange.request.method == "DELETE":
            await found.close("client DELETE")
            exchange.respond(200, "")
            return
        try:
            await self._trickle(exchange, found)
        except Refused as refused:
            exchange.respond(refused.status, f"{refused}\n", extra=refused.extra)
            return
        exchange.respond(204)

    async def _trickle(self, exchange: Exchange, session: Session) -> None:
        """Remote candidates from a ``PATCH`` (RFC 8840 fragment). ICE restarts are not
        supported (the answer would need new credentials): a fragment with other ICE
        credentials is refused."""
        match = exchange.request.headers.get("if-match")
        if match is not None and match.strip() not in ("*", f'"{session.id}"'):
            raise Refused(412, "the session's ETag does not match")
        text = await self._read_body(exchange, TRICKLE, "the fragment")
        remote = session.pc.remoteDescription
        candidates = []
        mid: str | None = None
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("a=mid:"):
                mid = line[6:]
            elif line.startswith("a=ice-ufrag:") and remote is not None and \
                    f"a=ice-ufrag:{line[12:]}" not in remote.sdp:
                raise Refused(422, "ICE restarts are not supported: open a new session")
            elif line.startswith("a=candidate:"):
                try:
                    candidate = candidate_from_sdp(line[2:].split(":", 1)[1])
                except Exception:  # aiortc asserts on short lines
                    raise Refused(400, "malformed candidate") from None
                candidate.sdpMid = mid
                candidate.sdpMLineIndex = None if mid is not None else 0
                candidates.append(candidate)
        if len(candidates) > _MAX_CANDIDATES:
            raise Refused(413, f"at most {_MAX_CANDIDATES} candidates per PATCH")
        try:
            async with asyncio.timeout(_TRICKLE_TIMEOUT):
                await asyncio.gather(*(session.pc.addIceCandidate(c) for c in candidates))
        except TimeoutError:
            raise Refused(422, "candidates could not be resolved in time") from None
        except Exception as exc:
            raise Refused(400, f"unusable candidate: {exc}") from None

    # --- sessions and feeds ---------------------------------------------------------------

    def _closed(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        self._digests.pop(session.id, None)

    async def _feed(self, exchange: Exchange, key: StreamKey) -> AudioFeed | None:
        feed = self.feeds.get(key)
        if feed is not None and not feed.ended:
            return feed
        if feed is not None:  # its stream ended (and maybe came back): a new one
            self._close_feed(key, feed)
        try:
            sub = await exchange.registry.subscribe(key, protocol="webrtc-audio",
                                                    peer="transcoder", viewer=False)
        except StreamNotFound:
            return None
        feed = self.feeds[key] = AudioFeed(key, sub)
        return feed

    def _leave_feed(self, feed: AudioFeed, track: AudioTrack) -> None:
        if feed.discard(track):
            self._close_feed(feed.key, feed)

    def _close_feed(self, key: StreamKey, feed: AudioFeed) -> None:
        if self.feeds.get(key) is feed:
            del self.feeds[key]
        task = asyncio.create_task(feed.close(), name=f"close audio feed {key}")
        self._feed_closing.add(task)
        task.add_done_callback(self._feed_closing.discard)

    async def close_all(self, reason: str) -> None:
        """End every session (node shutdown) and wait for their teardown."""
        self.closing = True
        await asyncio.gather(*(s.close(reason) for s in list(self.sessions.values())),
                             return_exceptions=True)
        for key, feed in list(self.feeds.items()):
            self._close_feed(key, feed)
        if self._feed_closing:
            await asyncio.gather(*self._feed_closing, return_exceptions=True)

    def summary(self) -> dict[str, Any]:
        return {"sessions": [s.summary() for s in self.sessions.values()],
                "audio_transcoders": {str(k): f.stats() for k, f in self.feeds.items()}}
