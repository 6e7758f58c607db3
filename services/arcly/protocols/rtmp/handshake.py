"""The RTMP handshake, server side: C0+C1 → S0+S1+S2, then C2.

Two flavours of C1 exist in the wild. The "simple" one (RTMP spec §5.2) is time + zero +
random; the "digest" one (Flash Player, ffmpeg, librtmp) embeds an HMAC-SHA256 digest at an
offset derived from the packet itself. For a digest C1 we answer in kind (S1 carries our digest,
S2 the signature clients check — ffmpeg validates it whenever S1 announces a version); for a
simple C1 we echo it, as the spec says.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from arcly.engine.errors import ProtocolError

PACKET = 1536
VERSION = 3

_TAIL = bytes.fromhex("F0EEC24A8068BEE82E00D0D1029E7E576EEC5D2D29806FAB93B8E636CFEB31AE")
FP_KEY = b"Genuine Adobe Flash Player 001" + _TAIL  # 62 bytes; first 30 sign C1
FMS_KEY = b"Genuine Adobe Flash Media Server 001" + _TAIL  # 68 bytes; first 36 sign S1
SERVER_VERSION = bytes([0x04, 0x05, 0x00, 0x01])  # what FMS 4.5 reports


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def digest_offset(packet: bytes, scheme: int) -> int:
    """Where the 32-byte digest sits: scheme 0 reads bytes 8..11, scheme 1 bytes 772..775."""
    base = 8 if scheme == 0 else 772
    return sum(packet[base:base + 4]) % 728 + base + 4


def packet_digest(packet: bytes, offset: int, key: bytes) -> bytes:
    return _hmac(key, packet[:offset] + packet[offset + 32:])


def find_client_digest(c1: bytes) -> bytes | None:
    """The digest of a digest-style C1 (either scheme), or None for a simple C1."""
    for scheme in (0, 1):
        offset = digest_offset(c1, scheme)
        if hmac.compare_digest(c1[offset:offset + 32], packet_digest(c1, offset, FP_KEY[:30])):
            return c1[offset:offset + 32]
    return None


def server_response(c1: bytes, now_ms: int, *, random: bytes | None = None) -> bytes:
    """S0 + S1 + S2 for the client's C1."""
    if len(c1) != PACKET:
        raise ProtocolError(f"RTMP handshake: C1 of {len(c1)} bytes")
    rand = random if random is not None else os.urandom(PACKET)
    client_digest = find_client_digest(c1) if c1[4:8] != b"\x00\x00\x00\x00" else None
    if client_digest is None:
        s1 = struct.pack(">I", now_ms & 0xFFFFFFFF) + b"\x00\x00\x00\x00" + rand[8:]
        s2 = c1[:4] + struct.pack(">I", now_ms & 0xFFFFFFFF) + c1[8:]
        return bytes([VERSION]) + s1 + s2
    digest_s1 = bytearray(struct.pack(">I", now_ms & 0xFFFFFFFF) + SERVER_VERSION + rand[8:])
    offset = digest_offset(bytes(digest_s1), 0)
    digest_s1[offset:offset + 32] = packet_digest(bytes(digest_s1), offset, FMS_KEY[:36])
    digest_s2 = bytearray(rand[::-1])
    key = _hmac(FMS_KEY, client_digest)
    digest_s2[-32:] = _hmac(key, bytes(digest_s2[:-32]))
    return bytes([VERSION]) + bytes(digest_s1) + bytes(digest_s2)
