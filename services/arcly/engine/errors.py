"""The one error hierarchy of arcly. Adapters turn these into closed connections and log lines."""

from __future__ import annotations


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
