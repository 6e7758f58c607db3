"""Observers of stream life: logging, composite (OpenTelemetry arrives with its own issue)."""

from .logging import CompositeObserver, LoggingObserver

__all__ = ["CompositeObserver", "LoggingObserver"]
