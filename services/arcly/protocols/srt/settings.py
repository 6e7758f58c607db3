"""SRT settings (the defaults of the ``--srt-*`` flags)."""

from __future__ import annotations

from dataclasses import dataclass


def check_passphrase(text: str) -> str:
    """SRT's AES passphrase: empty (no encryption) or 10 to 79 characters."""
    if text and not 10 <= len(text.encode()) <= 79:
        raise ValueError("an SRT passphrase is 10 to 79 bytes (characters, in ASCII)")
    return text


@dataclass(frozen=True, slots=True)
class SrtSettings:
    """``passphrase``: callers must use it (AES; empty: no encryption). ``latency_ms``: the
    receive latency this side asks for (SRT's own default, 120 ms; the larger of both sides'
    wins, so a caller's ``latency=`` may raise it). ``admit_timeout``: how long a handshake may
    wait for the auth decision (it runs on libsrt's receive thread: keep webhooks fast). A
    reader is cut when libsrt's send buffer for it is full (``CloseReason.SLOW_VIEWER``)."""

    passphrase: str = ""
    latency_ms: int = 120
    admit_timeout: float = 1.0
