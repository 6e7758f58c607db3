"""JWT auth (PyJWT): tokens whose claims say what their holder may publish and play.

The token rides as ``?jwt=…`` on any protocol's URL (the RTMP stream name, an SRT stream id's
``jwt=`` pair, HLS/HTTP-FLV/WHEP queries) or as ``Authorization: Bearer`` (WHIP/WHEP, where it
arrives as the request's key). Its ``arcly_permissions`` claim lists what it allows::

    {"arcly_permissions": [{"action": "publish", "path": "live/*"},
                           {"action": "play", "path": "*"}], "exp": 1999999999, "aud": "arcly"}

``path`` is a glob on ``app/stream``. ``exp``, ``nbf`` and (when configured) ``aud`` are checked
with ``skew`` seconds of leeway. Keys: a JWKS URL (RS256/ES256; keys cached, fetched again when
a token names an unknown ``kid`` — at most every ``jwks_refresh_cooldown`` seconds — so a key
rotation needs no restart) or a shared secret from
the environment (HS256). A refusal logs why; the client only hears that its token was refused.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Any

import jwt
import jwt.types

from arcly.engine import AuthError, AuthGrant, AuthRequest

log = logging.getLogger("arcly.auth")

CLAIM = "arcly_permissions"
ASYMMETRIC = ("RS256", "ES256")


def _token(request: AuthRequest) -> str:
    query = request.query
    token = query.get("jwt", "")
    if not token:  # a bearer header arrives as the key; a JWT is three dotted parts
        key = query.get("key", "")
        token = key if key.count(".") == 2 else ""
    return token


def allows(claims: dict[str, Any], action: str, path: str) -> bool:
    """Whether ``claims`` grant ``action`` on ``app/stream`` ``path``."""
    permissions = claims.get(CLAIM)
    if not isinstance(permissions, list):
        return False
    return any(isinstance(p, dict) and p.get("action") == action and
               isinstance(p.get("path"), str) and fnmatch.fnmatchcase(path, p["path"])
               for p in permissions)


@dataclass(slots=True)
class JwtTokens:
    """The ``jwt`` provider (see the module docstring). ``jwks_url`` or ``secret``."""

    jwks_url: str = ""
    secret: str = ""
    audience: str = ""
    skew: float = 30.0
    jwks_cache_seconds: float = 300.0
    # An unknown kid fetches the set again at most this often (a flood of forged kids must
    # not flood the identity provider); a rotated-in key is known within this long.
    jwks_refresh_cooldown: float = 30.0
    _jwks: jwt.PyJWKClient | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if bool(self.jwks_url) == bool(self.secret):
            raise ValueError("a jwt provider needs exactly one of jwks_url and secret")
        if self.jwks_url:
            self._jwks = jwt.PyJWKClient(self.jwks_url, cache_keys=True,
                                         lifespan=self.jwks_cache_seconds, timeout=5,
                                         cooldown_duration=self.jwks_refresh_cooldown)

    async def authorize(self, request: AuthRequest) -> AuthGrant | None:
        action = request.action.value
        path = f"{request.key.app}/{request.key.stream}"
        token = _token(request)
        if not token:
            raise AuthError(f"{action} {request.key}: token required")
        try:
            claims = await self._decode(token)
        except (jwt.PyJWTError, OSError) as exc:
            log.info("jwt refused action=%s stream=%s peer=%s reason=%s", action, path,
                     request.peer, exc)
            raise AuthError(f"{action} {request.key}: token refused") from None
        if not allows(claims, action, path):
            log.info("jwt refused action=%s stream=%s peer=%s reason=no permission in %s",
                     action, path, request.peer, CLAIM)
            raise AuthError(f"{action} {request.key}: token refused")
        return None

    async def _decode(self, token: str) -> dict[str, Any]:
        options: jwt.types.Options = {"verify_aud": bool(self.audience)}
        audience = self.audience or None
        if self._jwks is not None:
            # PyJWKClient fetches with urllib (blocking): off the loop. An unknown kid makes it
            # fetch the set again (a rotation).
            signing = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
            decoded: dict[str, Any] = jwt.decode(token, signing.key, algorithms=list(ASYMMETRIC),
                                                 audience=audience, leeway=self.skew,
                                                 options=options)
            return decoded
        decoded = jwt.decode(token, self.secret, algorithms=["HS256"], audience=audience,
                             leeway=self.skew, options=options)
        return decoded
