"""One log line per session start and end, with key, peer and reason."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from arcly.engine import Observer, StreamKey

log = logging.getLogger("arcly.session")


class LoggingObserver:
    """Logs publish/play sessions as ``event key=... peer=... reason=...`` lines."""

    def on_publish_start(self, key: StreamKey, protocol: str, peer: str) -> None:
        log.info("publish start stream=%s protocol=%s peer=%s", key, protocol, peer)

    def on_publish_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        log.info("publish end stream=%s protocol=%s peer=%s reason=%r", key, protocol, peer,
                 reason)

    def on_publish_refused(self, key: StreamKey, protocol: str, peer: str,
                           reason: str) -> None:
        log.debug("publish not started stream=%s protocol=%s peer=%s reason=%r", key, protocol,
                  peer, reason)  # the protocol adapter logs the refusal its client sees

    def on_play_start(self, key: StreamKey, protocol: str, peer: str) -> None:
        log.info("play start stream=%s protocol=%s peer=%s", key, protocol, peer)

    def on_play_first_frame(self, key: StreamKey, protocol: str, peer: str,
                            seconds: float) -> None:
        log.debug("first frames stream=%s protocol=%s peer=%s after_ms=%.1f", key, protocol,
                  peer, seconds * 1000)

    def on_handshake(self, protocol: str, peer: str, style: str, seconds: float) -> None:
        log.debug("%s handshake peer=%s style=%s ms=%.1f", protocol, peer, style,
                  seconds * 1000)

    def on_play_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        log.info("play end stream=%s protocol=%s peer=%s reason=%r", key, protocol, peer, reason)

    def on_stream_reaped(self, key: StreamKey) -> None:
        log.info("stream reaped stream=%s reason=idle", key)

    def on_viewer_skipped(self, key: StreamKey, protocol: str, peer: str, dropped: int) -> None:
        log.warning("viewer behind, skipping to next keyframe stream=%s protocol=%s peer=%s "
                    "dropped_total=%d", key, protocol, peer, dropped)


class CompositeObserver:
    """Fans each notification out to several observers; one failing does not stop the rest."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = list(observers)

    def _each(self, method: str, *args: object) -> None:
        for observer in self.observers:
            hook = getattr(observer, method, None)
            if hook is None:  # an observer written before this hook existed
                continue
            try:
                hook(*args)
            except Exception:
                logging.getLogger("arcly.observe").exception(
                    "observer failed observer=%s method=%s", type(observer).__name__, method)

    def on_publish_start(self, key: StreamKey, protocol: str, peer: str) -> None:
        self._each("on_publish_start", key, protocol, peer)

    def on_publish_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        self._each("on_publish_end", key, protocol, peer, reason)

    def on_publish_refused(self, key: StreamKey, protocol: str, peer: str,
                           reason: str) -> None:
        self._each("on_publish_refused", key, protocol, peer, reason)

    def on_play_start(self, key: StreamKey, protocol: str, peer: str) -> None:
        self._each("on_play_start", key, protocol, peer)

    def on_play_first_frame(self, key: StreamKey, protocol: str, peer: str,
                            seconds: float) -> None:
        self._each("on_play_first_frame", key, protocol, peer, seconds)

    def on_handshake(self, protocol: str, peer: str, style: str, seconds: float) -> None:
        self._each("on_handshake", protocol, peer, style, seconds)

    def on_play_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        self._each("on_play_end", key, protocol, peer, reason)

    def on_stream_reaped(self, key: StreamKey) -> None:
        self._each("on_stream_reaped", key)

    def on_viewer_skipped(self, key: StreamKey, protocol: str, peer: str, dropped: int) -> None:
        self._each("on_viewer_skipped", key, protocol, peer, dropped)
