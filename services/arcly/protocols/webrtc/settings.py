"""WebRTC settings: which UDP ports sessions use, which addresses ICE candidates carry, which
STUN/TURN servers browsers are told about."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import unquote


@dataclass(frozen=True, slots=True)
class IceServer:
    """A STUN or TURN server: ``stun:host:port`` or ``turn:user:password@host:port``
    (``turns:`` for TLS; ``?transport=tcp`` as in the URL syntax of RFC 7065)."""

    url: str
    username: str = ""
    credential: str = ""

    @classmethod
    def parse(cls, text: str) -> IceServer:
        text = text.strip()
        scheme, sep, rest = text.partition(":")
        if not sep or scheme not in ("stun", "stuns", "turn", "turns") or not rest:
            raise ValueError(f"ICE server {text!r} is not stun:HOST[:PORT] or "
                             "turn:USER:PASSWORD@HOST[:PORT]")
        userinfo, at, hostpart = rest.rpartition("@")
        if not at:
            return cls(text)
        if not scheme.startswith("turn"):
            raise ValueError(f"ICE server {text!r}: only TURN servers take credentials")
        user, colon, password = userinfo.partition(":")
        if not colon or not user:
            raise ValueError(f"ICE server {text!r}: credentials must be USER:PASSWORD")
        return cls(f"{scheme}:{hostpart}", unquote(user), unquote(password))

    def link_header(self) -> str:
        """The ``Link`` header value WHIP/WHEP answers carry (RFC 9725 §4.4)."""
        value = f'<{self.url}>; rel="ice-server"'
        if self.username:
            value += (f'; username="{self.username}"; credential="{self.credential}"; '
                      'credential-type="password"')
        return value


def parse_port_range(text: str) -> tuple[int, int]:
    """``LOW-HIGH`` (inclusive), both in 1024..65535."""
    low, sep, high = text.strip().partition("-")
    try:
        first, last = int(low), int(high if sep else low)
    except ValueError:
        raise ValueError(f"UDP port range {text!r} is not LOW-HIGH") from None
    if not 1024 <= first <= last <= 65535:
        raise ValueError(f"UDP port range {text!r} must be LOW-HIGH within 1024-65535")
    return first, last


def parse_ice_servers(text: str) -> tuple[IceServer, ...]:
    return tuple(IceServer.parse(part) for part in text.split(",") if part.strip())


def parse_addresses(text: str) -> tuple[str, ...]:
    """Comma-separated IP addresses (ICE candidates carry addresses, not names)."""
    addresses = tuple(part.strip() for part in text.split(",") if part.strip())
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address") from None
    return addresses


@dataclass(frozen=True, slots=True)
class WebRtcSettings:
    """``udp_ports``: the range each session's socket is bound in (``None``: any ephemeral
    port); ``bind_host``: the address those sockets bind (every interface by default);
    ``advertise_ips``: the addresses ICE host candidates carry (empty: this machine's own
    addresses, which is right outside containers; in Kubernetes the node's or LoadBalancer's
    address); ``ice_servers``: STUN/TURN servers used by the node and given to clients.
    ``connect_timeout``: a session whose ICE/DTLS has not connected by then is dropped;
    ``consent_timeout``: one whose peer stopped answering ICE consent checks (RFC 7675);
    ``keyframe_interval``: how often a WHIP publisher is asked for a keyframe (browsers send
    one only when asked: HLS segments and the GOP cache need them)."""

    enabled: bool = True
    udp_ports: tuple[int, int] | None = None
    bind_host: str = "0.0.0.0"
    advertise_ips: tuple[str, ...] = ()
    ice_servers: tuple[IceServer, ...] = ()
    connect_timeout: float = 10.0
    consent_timeout: float = 30.0  # RFC 7675
    keyframe_interval: float = 2.0
    max_body: int = 64 * 1024  # bytes of SDP a POST may carry
