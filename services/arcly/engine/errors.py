"""The one error hierarchy of arcly. Adapters turn these into closed connections and log lines."""

from __future__ import annotations

import os


class ArclyError(Exception):
    """Base of every error arcly raises on purpose."""


class ProtocolError(ArclyError):
    """A peer sent bytes that break the protocol; the connection is closed."""


class InvalidStreamKey(ArclyError):
    """A stream key part does not match ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``."""


class StreamBusy(ArclyError):
    """Someone already publishes on this key."""


class StreamNotFound(ArclyError):
    """Nobody publishes on this key."""


class AuthError(ArclyError):
    """The auth provider refused the request."""


class HandlerCrashed(ArclyError):
    """A protocol handler raised something that is not an ``ArclyError``."""


class ListenError(ArclyError):
    """A listener cannot bind its address (in use, not ours, no such interface)."""

    def __init__(self, protocol: str, host: str, port: int, error: OSError) -> None:
        reason = os.strerror(error.errno) if error.errno else (error.strerror or str(error))
        super().__init__(f"cannot listen on {host}:{port} for {protocol}: {reason.lower()}")
        self.protocol = protocol
        self.address = f"{host}:{port}"
        self.reason = reason
