"""WebRTC settings as operators write them: flags, env vars, STUN/TURN URLs, port ranges."""

from __future__ import annotations

import pytest

from arcly.node.config import load_config
from arcly.protocols.webrtc.settings import IceServer, parse_port_range


def test_ice_servers_take_stun_and_turn_with_credentials() -> None:
    assert IceServer.parse("stun:stun.example.com:3478") == IceServer("stun:stun.example.com:3478")
    turn = IceServer.parse("turn:alice:s%40cret@turn.example.com:3478?transport=tcp")
    assert turn == IceServer("turn:turn.example.com:3478?transport=tcp", "alice", "s@cret")
    assert turn.link_header() == ('<turn:turn.example.com:3478?transport=tcp>; '
                                  'rel="ice-server"; username="alice"; credential="s@cret"; '
                                  'credential-type="password"')


@pytest.mark.parametrize("text", ["http://x", "stun:", "stun:u:p@host", "turn:user@host",
                                  "turn::pw@host"])
def test_bad_ice_servers_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        IceServer.parse(text)


def test_port_ranges() -> None:
    assert parse_port_range("40000-40099") == (40000, 40099)
    assert parse_port_range("40000") == (40000, 40000)
    for bad in ("99-100", "50000-40000", "a-b", "40000-70000"):
        with pytest.raises(ValueError):
            parse_port_range(bad)


def test_flags_and_env_configure_webrtc() -> None:
    config = load_config(["--webrtc-udp-ports", "40000-40099",
                          "--webrtc-advertise-ip", "203.0.113.7, 198.51.100.2"],
                         env={"ARCLY_ICE_SERVERS": "stun:stun.example.com:3478",
                              "ARCLY_WEBRTC": "false"})
    assert config.webrtc is False
    assert config.webrtc_udp_ports == (40000, 40099)
    assert config.webrtc_advertise_ip == ("203.0.113.7", "198.51.100.2")
    assert config.ice_servers == (IceServer("stun:stun.example.com:3478"),)
    defaults = load_config([], env={})
    assert defaults.webrtc and defaults.webrtc_udp_ports is None
    assert defaults.webrtc_consent_timeout == 30


def test_a_bad_port_range_stops_the_node_with_a_clear_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_config(["--webrtc-udp-ports", "80-90"])
    assert "within 1024-65535" in capsys.readouterr().err
