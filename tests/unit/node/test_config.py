"""Node configuration: flag > ARCLY_* env > default, and every default written once — in the
component it configures."""

from __future__ import annotations

import argparse
import re

import pytest

from arcly.auth import PerApp
from arcly.cluster.model import NodeRole
from arcly.cluster.registry import RegistrySettings
from arcly.cluster.relay_client import EdgeSettings
from arcly.cluster.relay_server import RelaySettings
from arcly.engine import AllowAll, Engine, EngineConfig
from arcly.hls.service import HlsSettings
from arcly.node.config import Address, NodeConfig, add_node_options, build_config, load_config
from arcly.node.server import _Node, _reconfigure
from arcly.protocols.egress import DEFAULT_COALESCE
from arcly.protocols.http import HttpServer, HttpSettings
from arcly.protocols.listener import Admission, Limits
from arcly.protocols.rtmp import RtmpConnection, RtmpSettings
from arcly.protocols.rtmp.chunk import ChunkDecoder
from arcly.recording import RecordSettings
from arcly_operator.settings import OperatorSettings


def test_a_flag_beats_its_env_twin_which_beats_the_default() -> None:
    assert load_config([], env={}).chunk_size == RtmpSettings().chunk_size
    assert load_config([], env={"ARCLY_CHUNK_SIZE": "1024"}).chunk_size == 1024
    assert load_config(["--chunk-size", "512"], env={"ARCLY_CHUNK_SIZE": "1024"}).chunk_size \
        == 512


def test_booleans_and_off_values_parse_from_flags_and_env() -> None:
    assert load_config(["--no-hls"], env={"ARCLY_HLS": "true"}).hls is False
    assert load_config([], env={"ARCLY_HLS": "off"}).hls is False
    assert load_config([], env={"ARCLY_IDLE_TIMEOUT": "off"}).idle_timeout is None
    assert load_config(["--idle-timeout", "0"], env={"ARCLY_IDLE_TIMEOUT": "9"}).idle_timeout \
        is None, "a flag given as off beats the env"
    assert load_config(["--rtmp-listen", "[::1]:0"], env={}).rtmp_listen == Address("::1", 0)


def test_a_retired_flag_is_accepted_and_named_in_a_warning() -> None:
    assert load_config([], env={}).retired == ()
    for config in (load_config(["--ownership-lease", "10"], env={}),
                   load_config([], env={"ARCLY_OWNERSHIP_LEASE": "10"})):
        assert config.session_ttl == RegistrySettings().session_ttl
        (notice,) = config.retired
        assert notice.startswith("--ownership-lease / ARCLY_OWNERSHIP_LEASE is ignored")
        assert "--session-ttl" in notice


@pytest.mark.parametrize(("env", "message"), [
    ({"ARCLY_CHUNK_SIZE": "-1"}, "ARCLY_CHUNK_SIZE='-1': must be positive"),
    ({"ARCLY_RTMP_LISTEN": "nowhere"}, "is not HOST:PORT"),
    ({"ARCLY_HLS": "maybe"}, "'maybe' is not a boolean"),
    ({"ARCLY_LOG_LEVEL": "loud"}, "log level 'loud' is not one of"),
    ({"ARCLY_HLS_VARIANT": "dash"}, "'dash' is not one of mpegts, fmp4, lowlatency"),
    ({"ARCLY_HLS_PART_MS": "3000"}, "--hls-part-ms 3000 is longer than the segment target"),
])
def test_a_bad_env_value_is_refused_naming_the_variable(env: dict[str, str],
                                                        message: str) -> None:
    parser = argparse.ArgumentParser(prog="arcly")
    add_node_options(parser)
    with pytest.raises(ValueError, match=re.escape(message)):
        build_config(parser.parse_args([]), env)


def test_every_node_default_is_the_default_of_the_component_it_configures() -> None:
    node, engine, rtmp = NodeConfig(), EngineConfig(), RtmpSettings()
    hls, limits, registry = HlsSettings(), Limits(), RegistrySettings()
    assert (node.idle_timeout, node.gop_max_bytes, node.viewer_backlog_bytes,
            node.edge_linger) == (engine.idle_timeout, engine.gop_max_bytes,
                                  engine.viewer_backlog_bytes, engine.upstream_linger)
    assert (node.chunk_size, node.max_message_size, node.handshake_timeout,
            node.command_timeout) == (rtmp.chunk_size, rtmp.max_message_size,
                                      rtmp.handshake_timeout, rtmp.command_timeout)
    assert rtmp.chunk_size == RtmpConnection().out_chunk_size
    assert rtmp.max_message_size == ChunkDecoder().max_message_size
    assert node.write_coalesce_ms / 1000 == rtmp.write_coalesce == \
        HttpSettings().write_coalesce == DEFAULT_COALESCE
    assert (node.hls_segment_seconds, node.hls_window, node.hls_on_publish, node.hls_variant,
            node.hls_part_ms / 1000) == (hls.segment_seconds, hls.window, hls.on_publish,
                                         hls.variant, hls.part_seconds)
    assert hls.part_seconds == engine.part_target
    assert hls.segment_seconds == engine.segment_target == RecordSettings().segment_seconds
    assert node.record_hls == RecordSettings().hls
    assert (node.max_connections, node.max_connections_per_ip, node.max_publishers,
            node.max_viewers_per_stream) == (limits.max_connections,
                                             limits.max_connections_per_ip,
                                             limits.max_publishers,
                                             limits.max_viewers_per_stream)
    assert (node.redis_url, node.redis_prefix, node.session_ttl) == (
        registry.url, registry.prefix, registry.session_ttl)
    assert node.relay_token == RelaySettings().token
    assert node.reconnect_window == EdgeSettings().reconnect_window
    operator = OperatorSettings.from_env({})
    assert (operator.redis_url, operator.redis_prefix) == (registry.url, registry.prefix)


def test_the_cli_help_shows_the_components_defaults() -> None:
    parser = argparse.ArgumentParser(prog="arcly")
    add_node_options(parser)
    text = parser.format_help()
    assert f"default {RtmpSettings().chunk_size}]" in text
    assert f"default {RegistrySettings().url}]" in text
    assert f"default {Limits().max_connections_per_ip}]" in text


def test_operator_settings_come_from_its_environment() -> None:
    settings = OperatorSettings.from_env({"ARCLY_REDIS_URL": "redis://r:6379/1",
                                          "ARCLY_REDIS_PREFIX": "x:", "ARCLY_RELEASE": "demo",
                                          "ARCLY_OPERATOR_INTERVAL": "2.5"})
    assert settings.registry() == RegistrySettings(url="redis://r:6379/1", prefix="x:")
    assert (settings.release, settings.reap_interval) == ("demo", 2.5)


async def test_a_reload_that_swaps_the_auth_providers_voids_hls_grants() -> None:
    # Kept-alive HLS players are answered from a per-connection grant (see
    # test_http_hls_shortcut); new providers must be asked on their next request.
    class Http(HttpServer):
        forgotten = 0

        def forget_grants(self) -> None:
            self.forgotten += 1

    engine = Engine()
    config = NodeConfig()
    http = Http("127.0.0.1", 0, engine=engine)
    node = _Node(role=NodeRole.SINGLE, config=config, identity={}, admission=Admission(),
                 per_app=PerApp({}, AllowAll()), http=http)
    await _reconfigure(node, engine, config, config, PerApp({}, AllowAll()))
    assert http.forgotten == 1


async def test_a_reload_sets_the_on_demand_fallback_cap_the_engine_checks_next() -> None:
    engine = Engine()
    old = NodeConfig()
    new = load_config(["--max-on-demand-fallbacks", "7"], env={})
    assert old.max_on_demand_fallbacks == EngineConfig().max_on_demand_fallbacks == 100
    node = _Node(role=NodeRole.SINGLE, config=old, identity={}, admission=Admission())
    await _reconfigure(node, engine, old, new, None)
    assert engine.config.max_on_demand_fallbacks == 7
    with pytest.raises(SystemExit):
        load_config(["--max-on-demand-fallbacks", "0"], env={})
