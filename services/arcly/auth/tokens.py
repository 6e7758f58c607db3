"""HMAC-SHA256 signed, expiring tokens: ``?token=…&expires=…`` on publish and play URLs.

The signature covers the action, the stream key and the expiry, so a play token cannot
publish, a token for one stream opens no other, and nobody can extend an expiry. Verification
is constant-time and tolerates a little clock skew.

    >>> q = sign("s3cret", "publish", "live", "cam1", expires=2_000_000_000)
    >>> verify("s3cret", "publish", "live", "cam1", q["token"], q["expires"], now=1_999_999_999)
    True
"""

from __future__ import annotations

import hashlib
import hmac
import time

DEFAULT_SKEW = 30.0  # seconds of clock difference a token's expiry tolerates


def signature(secret: str, action: str, app: str, stream: str, expires: int) -> str:
    message = f"{action}:{app}/{stream}:{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, action: str, app: str, stream: str, *, ttl: float = 3600,
         expires: int | None = None) -> dict[str, str]:
    """The query parameters that authorize ``action`` on ``app/stream`` until ``expires``."""
    until = expires if expires is not None else int(time.time() + ttl)
    return {"token": signature(secret, action, app, stream, until), "expires": str(until)}


def verify(secret: str, action: str, app: str, stream: str, token: str, expires: str, *,
           now: float | None = None, skew: float = DEFAULT_SKEW) -> bool:
    try:
        until = int(expires)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if current > until + skew:
        return False
    expected = signature(secret, action, app, stream, until)
    return hmac.compare_digest(expected.encode(), token.encode())
