"""Observers of stream life, outside the kernel: one log line per session (``logging``), a
composite that fans out to several, and OpenTelemetry spans and metrics (``otel``)."""

from .logging import CompositeObserver, LoggingObserver

__all__ = ["CompositeObserver", "LoggingObserver"]
