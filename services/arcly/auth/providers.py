"""Auth providers: static keys, signed tokens, HTTP webhooks — and per-app routing among them.

Credentials come from the query string of the publish/play name or URL (``cam1?token=…``,
``/live/cam1.flv?key=…``), the way nginx-rtmp and SRS users pass them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from arcly.engine import Action, AuthError, AuthGrant, AuthRequest, NullObserver, StreamKey

from . import tokens

log = logging.getLogger("arcly.auth")


def _matches(offered: str, accepted: frozenset[str]) -> bool:
    # Compare against every key in constant time each: no early exit that leaks which matched.
    found = False
    for key in accepted:
        found |= hmac.compare_digest(offered.encode(), key.encode())
    return found


@dataclass(frozen=True, slots=True)
class StaticKeys:
    """Fixed keys per action (``?key=…``). No keys for an action: that action is open.
    ``takeover_keys`` may replace a live publisher of the same key."""

    publish_keys: frozenset[str] = frozenset()
    play_keys: frozenset[str] = frozenset()
    takeover_keys: frozenset[str] = frozenset()

    async def authorize(self, request: AuthRequest) -> AuthGrant | None:
        offered = request.query.get("key", "")
        if request.action is Action.PUBLISH and _matches(offered, self.takeover_keys):
            return AuthGrant(takeover=True)
        accepted = self.publish_keys if request.action is Action.PUBLISH else self.play_keys
        if not accepted and not (request.action is Action.PUBLISH and self.takeover_keys):
            return None
        if offered and _matches(offered, accepted):
            return None
        raise AuthError(f"{request.action.value} {request.key}: "
                        f"{'wrong' if offered else 'missing'} key")


@dataclass(frozen=True, slots=True)
class SignedTokens:
    """HMAC-signed expiring tokens (``arcly token sign``) for the listed actions."""

    secret: str
    actions: frozenset[Action] = frozenset({Action.PUBLISH, Action.PLAY})
    skew: float = tokens.DEFAULT_SKEW

    async def authorize(self, request: AuthRequest) -> AuthGrant | None:
        if request.action not in self.actions:
            return None
        token = request.query.get("token", "")
        expires = request.query.get("expires", "")
        if not token or not expires:
            raise AuthError(f"{request.action.value} {request.key}: token required")
        if not tokens.verify(self.secret, request.action.value, request.key.app,
                             request.key.stream, token, expires, skew=self.skew):
            raise AuthError(f"{request.action.value} {request.key}: invalid or expired token")
        return None


@dataclass(slots=True)
class Webhooks(NullObserver):
    """nginx-rtmp ``on_publish``-style hooks: a JSON POST per publish/play; any 2xx allows.
    A JSON body ``{"takeover": true}`` on an on_publish answer grants takeover. When the hook
    fails or times out, ``on_failure`` ("deny" or "allow") decides. Answers are cached for
    ``cache_seconds`` per (action, key, client, query). ``on_publish_done``/``on_play_done``
    are notified (fire and forget) when sessions end."""

    on_publish: str = ""
    on_play: str = ""
    on_publish_done: str = ""
    on_play_done: str = ""
    timeout: float = 3.0
    on_failure: str = "deny"
    cache_seconds: float = 5.0
    node: str = ""
    _cache: dict[tuple[str, ...], tuple[float, AuthGrant | None, str]] = field(
        default_factory=dict, init=False, repr=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    def _payload(self, event: str, key: StreamKey, protocol: str, peer: str,
                 query: Mapping[str, str], **extra: str) -> dict[str, object]:
        return {"action": event, "app": key.app, "stream": key.stream, "protocol": protocol,
                "client_ip": peer.rpartition(":")[0] or peer, "client": peer,
                "query": dict(query), "node": self.node, **extra}

    async def authorize(self, request: AuthRequest) -> AuthGrant | None:
        url = self.on_publish if request.action is Action.PUBLISH else self.on_play
        if not url:
            return None
        event = "on_publish" if request.action is Action.PUBLISH else "on_play"
        cache_key = (event, str(request.key), request.peer.rpartition(":")[0],
                     json.dumps(dict(request.query), sort_keys=True))
        cached = self._cache.get(cache_key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.cache_seconds:
            grant, refusal = cached[1], cached[2]
        else:
            grant, refusal = await self._ask(url, self._payload(
                event, request.key, request.protocol, request.peer, request.query), request)
            self._cache[cache_key] = (now, grant, refusal)
            if len(self._cache) > 10_000:
                self._cache.clear()
        if refusal:
            raise AuthError(refusal)
        return grant

    async def _ask(self, url: str, payload: dict[str, object],
                   request: AuthRequest) -> tuple[AuthGrant | None, str]:
        try:
            async with self._client().post(url, json=payload) as response:
                body = await response.read()
                if 200 <= response.status < 300:
                    takeover = False
                    if body:
                        try:
                            takeover = bool(json.loads(body).get("takeover", False))
                        except (ValueError, AttributeError):
                            takeover = False
                    return (AuthGrant(takeover=True) if takeover and
                            request.action is Action.PUBLISH else None), ""
                return None, f"{payload['action']} {request.key}: hook answered {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("auth webhook failed url=%s error=%r policy=%s", url, exc,
                        self.on_failure)
            if self.on_failure == "allow":
                return None, ""
            return None, f"{payload['action']} {request.key}: auth hook unavailable"

    def _notify(self, url: str, payload: dict[str, object]) -> None:
        async def post() -> None:
            try:
                async with self._client().post(url, json=payload) as response:
                    await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("webhook notification failed url=%s error=%r", url, exc)

        task = asyncio.get_running_loop().create_task(post())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_publish_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        if self.on_publish_done and protocol == "rtmp":
            self._notify(self.on_publish_done, self._payload(
                "on_publish_done", key, protocol, peer, {}, reason=reason))

    def on_play_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        if self.on_play_done and protocol in ("rtmp", "http-flv"):
            self._notify(self.on_play_done, self._payload(
                "on_play_done", key, protocol, peer, {}, reason=reason))

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
