"""Node configuration: one object from CLI flags, ``ARCLY_*`` env vars and the config file
(``--config``, see ``configfile``): flags win over env vars, env vars over the file, the file over
defaults.

Every flag ``--some-thing`` has the env twin ``ARCLY_SOME_THING``. A default belongs to the
component it configures (``EngineConfig``, ``RtmpSettings``, ``Limits``, ``RegistrySettings``,
...): ``NodeConfig`` takes it from there, so no default is written twice. Only what is the
node's own (listen addresses, the drain timeout, logging) is written here.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from arcly.cluster.registry import RegistrySettings
from arcly.cluster.relay_client import EdgeSettings
from arcly.cluster.relay_server import RelaySettings
from arcly.engine import EngineConfig
from arcly.hls.service import HlsSettings, HlsVariant
from arcly.protocols.egress import DEFAULT_COALESCE, DEFAULT_COALESCE_MAX
from arcly.protocols.listener import Limits
from arcly.protocols.readmerge import DEFAULT_READ_MERGE_MAX
from arcly.protocols.rtmp import RtmpSettings
from arcly.protocols.srt.settings import SrtSettings, check_passphrase
from arcly.protocols.webrtc.settings import (
    IceServer,
    WebRtcSettings,
    parse_addresses,
    parse_ice_servers,
    parse_port_range,
)
from arcly.recording import RecordSettings

from .configfile import AppSettings, read_file

# The components' own defaults, which NodeConfig's are taken from.
_ENGINE = EngineConfig()
_RTMP = RtmpSettings()
_HLS = HlsSettings()
_RECORD = RecordSettings()
_LIMITS = Limits()
_REGISTRY = RegistrySettings()
_RELAY = RelaySettings()
_EDGE = EdgeSettings()
_WEBRTC = WebRtcSettings()
_SRT = SrtSettings()

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"address {text!r} is not HOST:PORT")
        host = host.strip("[]") or "0.0.0.0"
        try:
            number = int(port)
        except ValueError:
            raise ValueError(f"address {text!r}: port {port!r} is not a number") from None
        if not 0 <= number <= 65535:
            raise ValueError(f"address {text!r}: port {number} out of range")
        return cls(host, number)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    rtmp_listen: Address = Address("0.0.0.0", 1935)
    http_listen: Address = Address("0.0.0.0", 8080)
    idle_timeout: float | None = _ENGINE.idle_timeout
    log_level: str = "info"
    log_json: bool = False
    chunk_size: int = _RTMP.chunk_size
    max_message_size: int = _RTMP.max_message_size
    gop_max_bytes: int = _ENGINE.gop_max_bytes
    viewer_backlog_bytes: int = _ENGINE.viewer_backlog_bytes
    hls: bool = True
    hls_segment_seconds: float = _HLS.segment_seconds
    hls_variant: HlsVariant = _HLS.variant
    hls_part_ms: float = round(_HLS.part_seconds * 1000)
    hls_window: int = _HLS.window
    hls_on_publish: bool = _HLS.on_publish
    record: str | None = None
    record_hls: bool = _RECORD.hls
    record_max_age: float | None = _RECORD.max_age
    record_max_bytes: int | None = _RECORD.max_bytes
    grpc_listen: Address = Address("0.0.0.0", 7000)
    advertise_address: str | None = None
    redis_url: str = _REGISTRY.url
    redis_password: str = _REGISTRY.password
    redis_prefix: str = _REGISTRY.prefix
    node_id: str | None = None
    relay_token: str = _RELAY.token
    session_ttl: float = _REGISTRY.session_ttl
    drain_timeout: float = 30.0
    edge_linger: float = _ENGINE.upstream_linger
    reconnect_window: float = _EDGE.reconnect_window
    relay_tls_cert: str | None = None
    relay_tls_key: str | None = None
    relay_tls_ca: str | None = None
    auth_config: str | None = None
    api_token: str = ""
    max_connections: int = _LIMITS.max_connections
    max_connections_per_ip: int = _LIMITS.max_connections_per_ip
    max_publishers: int = _LIMITS.max_publishers
    max_viewers_per_stream: int = _LIMITS.max_viewers_per_stream
    max_on_demand_fallbacks: int = _ENGINE.max_on_demand_fallbacks
    handshake_timeout: float = _RTMP.handshake_timeout
    command_timeout: float = _RTMP.command_timeout
    write_coalesce_ms: float = DEFAULT_COALESCE * 1000
    write_coalesce_max_ms: float = DEFAULT_COALESCE_MAX * 1000
    read_merge_max_ms: float = DEFAULT_READ_MERGE_MAX * 1000
    metrics: bool = True
    metrics_listen: Address | None = None
    webrtc: bool = _WEBRTC.enabled
    webrtc_udp_ports: tuple[int, int] | None = _WEBRTC.udp_ports
    webrtc_advertise_ip: tuple[str, ...] = _WEBRTC.advertise_ips
    ice_servers: tuple[IceServer, ...] = _WEBRTC.ice_servers
    webrtc_consent_timeout: float = _WEBRTC.consent_timeout
    srt_listen: Address | None = Address("0.0.0.0", 8890)  # MediaMTX's port
    srt_passphrase: str = _SRT.passphrase
    srt_latency_ms: int = _SRT.latency_ms
    config: str | None = None  # the config file, if any
    # From the config file only: per-app settings and the [auth] table.
    apps: dict[str, AppSettings] = field(default_factory=dict)
    auth: dict[str, Any] | None = None
    # Warnings about retired flags that were given (logged at start; the node still runs).
    retired: tuple[str, ...] = ()

    def app(self, app: str) -> AppSettings:
        return self.apps.get(app) or _NO_APP_SETTINGS

    def records(self, app: str) -> bool:
        """Whether ``app``'s streams are recorded (``--record`` and the app's ``record``)."""
        chosen = self.app(app).record
        return bool(self.record) and (chosen is None or chosen)


_NO_APP_SETTINGS = AppSettings()


def _positive_float_or_off(text: str) -> float | None:
    if text.strip().lower() in ("0", "off", "none", "never"):
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive (or 0/off to disable)")
    return value


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZES = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20,
          "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
          "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def _scaled(text: str, units: dict[str, int], what: str) -> float | None:
    lowered = text.strip().lower()
    if lowered in ("0", "off", "none", "never", ""):
        return None
    number = lowered.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = lowered[len(number):].strip()
    if unit not in units:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown unit {unit!r} ({what})")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number ({what})") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive (or 0/off)")
    return value


def _duration_or_off(text: str) -> float | None:
    return _scaled(text, _UNITS, "seconds, or with s/m/h/d/w")


def _size_or_off(text: str) -> int | None:
    value = _scaled(text, _SIZES, "bytes, or with K/M/G/T")
    return None if value is None else int(value)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value > 1000:
        raise argparse.ArgumentTypeError("must be between 0 and 1000")
    return value


def _hls_variant(text: str) -> HlsVariant:
    try:
        return HlsVariant(text.strip().lower())
    except ValueError:
        choices = ", ".join(v.value for v in HlsVariant)
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {choices}") from None


def _part_ms(text: str) -> float:
    value = float(text)
    if not 50 <= value <= 5000:
        raise argparse.ArgumentTypeError("must be between 50 and 5000 (ms)")
    return value


def _address_or_off(text: str) -> Address | None:
    if text.strip().lower() in ("", "off", "none", "0"):
        return None
    return _address(text)


def _passphrase(text: str) -> str:
    try:
        return check_passphrase(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _latency_ms(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError("must be between 0 and 10000 (ms)")
    return value


def _port_range(text: str) -> tuple[int, int] | None:
    if text.strip().lower() in ("", "0", "any", "ephemeral"):
        return None
    try:
        return parse_port_range(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ice_servers(text: str) -> tuple[IceServer, ...]:
    try:
        return parse_ice_servers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _addresses(text: str) -> tuple[str, ...]:
    try:
        return parse_addresses(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean")


# (flag, type, help) — the env var is ARCLY_ + the flag upper-cased with dashes as underscores.
_OPTIONS: list[tuple[str, object, str]] = [
    ("--config", str,
     "TOML file with any of these settings (keys are the flags without dashes), per-app "
     "settings and auth; reloaded on SIGHUP and when it changes (see README 'Configuration')"),
    ("--rtmp-listen", _address, "RTMP listen address HOST:PORT (port 0 picks a free port)"),
    ("--http-listen", _address, "HTTP listen address HOST:PORT (HTTP-FLV, health)"),
    ("--idle-timeout", _positive_float_or_off,
     "seconds without a frame before a publish is reaped (0/off: never)"),
    ("--log-level", str, "debug, info, warning or error"),
    ("--log-json", _bool, "log JSON lines instead of key=value text"),
    ("--chunk-size", _positive_int, "outgoing RTMP chunk size in bytes"),
    ("--max-message-size", _positive_int, "largest RTMP message accepted, in bytes"),
    ("--gop-max-bytes", _positive_int, "cap of the per-stream GOP cache, in bytes"),
    ("--viewer-backlog-bytes", _positive_int,
     "per-viewer backlog cap before skipping to the next keyframe, in bytes"),
    ("--hls", _bool, "serve HLS at /{app}/{stream}/index.m3u8 (--no-hls to turn off)"),
    ("--hls-segment-seconds", _positive_float, "HLS target segment duration, seconds"),
    ("--hls-variant", _hls_variant,
     "HLS flavour: lowlatency (fMP4 parts, LL-HLS: ~1-2 s in hls.js/Safari), fmp4 (fMP4 "
     "segments) or mpegts (TS segments: any player, even pre-2016 devices)"),
    ("--hls-part-ms", _part_ms,
     "LL-HLS part target, ms (every node cuts parts; lowlatency serves them)"),
    ("--hls-window", _positive_int, "segments in the live HLS playlist"),
    ("--hls-on-publish", _bool,
     "segment every stream from its first frame, not from the first HLS request"),
    ("--record", str, "record every stream as FLV under this directory (off when unset)"),
    ("--record-hls", _bool, "also record HLS VOD next to the FLV (fMP4, or TS with "
     "--hls-variant mpegts)"),
    ("--record-max-age", _duration_or_off,
     "delete recordings older than this (e.g. 86400, 36h, 7d; 0/off: keep them)"),
    ("--record-max-bytes", _size_or_off,
     "keep all recordings under this size, deleting the oldest first (e.g. 50G; 0/off: no cap)"),
    ("--grpc-listen", _address, "origin: relay gRPC listen address HOST:PORT"),
    ("--advertise-address", str,
     "origin: HOST:PORT edges dial for the relay (default: the gRPC listen address)"),
    ("--redis-url", str, "origin/edge: the registry, redis://[:password@]host:port/db"),
    ("--redis-password", str,
     "origin/edge: the registry's password, if not in the URL (use the env var)"),
    ("--redis-prefix", str, "origin/edge: prefix of every registry key"),
    ("--node-id", str, "origin/edge: this node's id (default: $POD_NAME, else host-pid)"),
    ("--relay-token", str, "origin/edge: shared secret of the relay (use the env var)"),
    ("--session-ttl", _positive_float,
     "origin/edge: seconds after its last renewal a node's registry session (and what it "
     "owns) lapses: the failover time after an origin dies"),
    ("--drain-timeout", _positive_float,
     "origin/edge: seconds existing sessions may continue after SIGTERM"),
    ("--edge-linger", _positive_float,
     "edge: seconds an upstream stays open after its last viewer left"),
    ("--reconnect-window", _positive_float,
     "edge: seconds to wait for a stream's new owner when its origin is lost"),
    ("--relay-tls-cert", str, "origin: serve the relay over TLS with this PEM certificate; "
     "edge: client certificate for mTLS"),
    ("--relay-tls-key", str, "the PEM private key of --relay-tls-cert"),
    ("--relay-tls-ca", str, "origin: require client certificates from this CA (mTLS); "
     "edge: verify origins against this CA (turns TLS on)"),
    ("--auth-config", str, "per-app auth providers (TOML; see README 'Security')"),
    ("--api-token", str, "bearer token for the management API (use the env var)"),
    ("--max-connections", _positive_int, "open RTMP + HTTP connections, in total"),
    ("--max-connections-per-ip", _positive_int, "open connections from one client IP"),
    ("--max-publishers", _positive_int, "live publishers on this node"),
    ("--max-viewers-per-stream", _positive_int, "viewers of one stream on this node"),
    ("--max-on-demand-fallbacks", _positive_int,
     "on-demand fallbacks running at once (unpublished keys a viewer asked for)"),
    ("--handshake-timeout", _positive_float,
     "seconds an RTMP client has for its handshake, an HTTP client for its request head"),
    ("--command-timeout", _positive_float,
     "seconds an RTMP client has from connecting to publish/play"),
    ("--write-coalesce-ms", _non_negative_float,
     "merge a viewer's frames into one write per this many ms (0: write each frame at once)"),
    ("--write-coalesce-max-ms", _non_negative_float,
     "the merge interval grows with the node's paced viewers up to this many ms (from "
     "--write-coalesce-ms up to 100 viewers to this at 1000; at most --write-coalesce-ms: fixed)"),
    ("--read-merge-max-ms", _non_negative_float,
     "on a node with 20+ RTMP publishers, read each publisher at most once per interval: at "
     "least 20 ms, growing to this many ms at 100 publishers (0: read every frame at once)"),
    ("--metrics", _bool, "serve Prometheus metrics at /metrics (--no-metrics to turn off)"),
    ("--metrics-listen", _address,
     "serve /metrics on this HOST:PORT instead of the HTTP port (keeps it off public Services)"),
    ("--webrtc", _bool, "serve WHEP playback and WHIP ingest on the HTTP port (--no-webrtc to "
     "turn off)"),
    ("--webrtc-udp-ports", _port_range,
     "LOW-HIGH: the UDP ports WebRTC sessions bind, one per session (default: any ephemeral "
     "port; a cluster exposes this range)"),
    ("--webrtc-advertise-ip", _addresses,
     "comma-separated addresses ICE candidates carry (default: this machine's; in Kubernetes "
     "the node's or LoadBalancer's address)"),
    ("--ice-servers", _ice_servers,
     "comma-separated STUN/TURN servers for the node and its clients: stun:HOST:PORT, "
     "turn:USER:PASSWORD@HOST:PORT"),
    ("--srt-listen", _address_or_off,
     "SRT listen address HOST:PORT for MPEG-TS over SRT (publish on origins/single nodes, read "
     "everywhere; off to disable)"),
    ("--srt-passphrase", _passphrase,
     "AES passphrase SRT callers must use (10-79 characters; use the env var; empty: none)"),
    ("--srt-latency-ms", _latency_ms,
     "SRT receive latency this node asks for, ms (the larger of both sides' wins)"),
    ("--webrtc-consent-timeout", _positive_float,
     "seconds a WebRTC session lives without answers to ICE consent checks (a vanished "
     "browser)"),
]


# Flags of earlier versions: accepted (old manifests keep working) and ignored with a warning.
_RETIRED = {
    "--ownership-lease": "ownership follows node sessions now; --session-ttl (default "
                         f"{_REGISTRY.session_ttl:g} s) sets the failover time",
}


def env_name(flag: str) -> str:
    return "ARCLY_" + flag.lstrip("-").upper().replace("-", "_")


def add_node_options(parser: argparse.ArgumentParser) -> None:
    defaults = NodeConfig()
    for flag, kind, what in _OPTIONS:
        attr = flag.lstrip("-").replace("-", "_")
        help_text = f"{what} [env {env_name(flag)}; default {getattr(defaults, attr)}]"
        # SUPPRESS: a flag not given leaves no attribute, so "given as off" (None) and "not
        # given" stay apart.
        if kind is _bool:  # --flag / --no-flag
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=kind,  # type: ignore[arg-type]
                                default=argparse.SUPPRESS, help=help_text)
    _add_retired(parser)


def _add_retired(parser: argparse.ArgumentParser) -> None:
    for flag in _RETIRED:
        parser.add_argument(flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where a ``NodeConfig`` comes from: the flags given and the env (as at start) and the
    config file they name — kept, so a reload reads the file again with the same precedence."""

    given: dict[str, object]
    env: dict[str, str]

    @property
    def path(self) -> str | None:
        path = self.given.get("config", self.env.get(env_name("--config")))
        return str(path) if path else None

    def build(self) -> NodeConfig:
        """Flags first, then ``ARCLY_*`` env vars, then the file, then defaults. Raises
        ``ValueError`` (``ConfigFileError`` for the file) when something is wrong."""
        path = self.path
        from_file = read_file(path, _PARSERS) if path else None
        values: dict[str, object] = {}
        for flag, kind, _ in _OPTIONS:
            attr = flag.lstrip("-").replace("-", "_")
            if attr in self.given:
                values[attr] = self.given[attr]
            elif env_name(flag) in self.env:
                raw = self.env[env_name(flag)]
                try:
                    values[attr] = kind(raw)  # type: ignore[operator]
                except (ValueError, argparse.ArgumentTypeError) as exc:
                    raise ValueError(f"{env_name(flag)}={raw!r}: {exc}") from None
            elif from_file is not None and attr in from_file.values:
                values[attr] = from_file.values[attr]
        retired = tuple(
            f"{flag} / {env_name(flag)} is ignored: {why}" for flag, why in _RETIRED.items()
            if flag.lstrip("-").replace("-", "_") in self.given or env_name(flag) in self.env)
        if from_file is not None:
            values.update(apps=from_file.apps, auth=from_file.auth)
        config = NodeConfig(**values, retired=retired)  # type: ignore[arg-type]
        _check(config)
        return config


def _check(config: NodeConfig) -> None:
    message = ""
    if config.log_level not in LOG_LEVELS:
        message = f"log level {config.log_level!r} is not one of {', '.join(LOG_LEVELS)}"
    elif config.hls_part_ms > config.hls_segment_seconds * 1000:
        message = (f"--hls-part-ms {config.hls_part_ms:g} is longer than the segment target "
                   f"(--hls-segment-seconds {config.hls_segment_seconds:g})")
    elif config.auth is not None and config.auth_config:
        message = "auth is given twice: in the config file's [auth] and as --auth-config"
    else:
        recorded = [app for app, settings in config.apps.items() if settings.record]
        if recorded and not config.record:
            message = (f"[apps.{recorded[0]}] record = true needs the recordings directory "
                       "(--record, or 'record' in the config file)")
    if message:
        raise ValueError(message)


_PARSERS: dict[str, Callable[[str], object]] = {
    flag.lstrip("-").replace("-", "_"): kind  # type: ignore[misc]
    for flag, kind, _ in _OPTIONS if flag != "--config"}


def build_config(args: argparse.Namespace, env: Mapping[str, str] | None = None,
                 parser: argparse.ArgumentParser | None = None) -> NodeConfig:
    """Flags first, then ``ARCLY_*`` env vars, then the config file, then defaults."""
    try:
        return config_source(args, env).build()
    except ValueError as exc:
        if parser is not None:
            parser.error(str(exc))
        raise


def config_source(args: argparse.Namespace, env: Mapping[str, str] | None = None
                  ) -> ConfigSource:
    return ConfigSource(dict(vars(args)), dict(os.environ if env is None else env))


def load_config(argv: Sequence[str] = (), env: Mapping[str, str] | None = None) -> NodeConfig:
    """The node configuration from ``argv`` flags and ``ARCLY_*`` env vars (for embedding)."""
    parser = argparse.ArgumentParser(prog="arcly")
    add_node_options(parser)
    return build_config(parser.parse_args(list(argv)), env, parser=parser)
