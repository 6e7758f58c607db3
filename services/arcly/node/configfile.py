"""The node's TOML config file (``--config arcly.toml``): every flag is a key, plus per-app
settings and the auth providers.

    # Any flag, without the dashes (``-`` or ``_`` both work):
    log_level = "info"
    hls_segment_seconds = 2
    max_viewers_per_stream = 5000
    record = "/var/lib/arcly/recordings"

    [auth.default]            # the --auth-config file's sections, under "auth."
    provider = "allow-all"
    [auth.apps.live]
    provider = "jwt"
    jwks_url = "https://idp.example.com/.well-known/jwks.json"

    [apps.live]               # per app
    record = false            # recording on/off for this app (needs ``record`` set)
    fallback = "/srv/slate.flv"         # looped while nobody publishes (or:)
    # fallback_stream = "studio/slate"  # another live stream
    on_demand_fallback = true           # viewers of an unpublished key wait on the fallback

Flags and ``ARCLY_*`` env vars win over the file. The file is read whole and checked before
anything of it is used: an unknown key, a bad value or a TOML syntax error is a
``ConfigFileError`` naming the key and its line, and (on reload) the running config stays.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arcly.engine import ArclyError, StreamKey


class ConfigFileError(ValueError):
    """The config file cannot be used; the message names the file, line and key."""


@dataclass(frozen=True, slots=True)
class AppSettings:
    """One app's settings (``[apps.NAME]``)."""

    record: bool | None = None         # None: as the node (record every app when --record)
    fallback: str | None = None        # an FLV file looped while the publisher is absent
    fallback_stream: StreamKey | None = None  # or another live stream
    on_demand_fallback: bool = False   # keys nobody published yet play the fallback too

    @property
    def has_fallback(self) -> bool:
        return self.fallback is not None or self.fallback_stream is not None


@dataclass(frozen=True, slots=True)
class FileConfig:
    """What a config file says: flag values (by attribute name, converted), per-app settings and
    the raw ``[auth]`` table (built into providers by ``arcly.auth``)."""

    path: str
    values: dict[str, object] = field(default_factory=dict)
    apps: dict[str, AppSettings] = field(default_factory=dict)
    auth: dict[str, Any] | None = None


_APP_KEYS = ("record", "fallback", "fallback_stream", "on_demand_fallback")


def read_file(path: str, options: Mapping[str, Callable[[str], object]]) -> FileConfig:
    """Parse and check ``path``. ``options`` maps each flag's attribute name to the parser of
    its text form (the same one the flag uses)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigFileError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config file {path}: {exc}") from None
    lines = _Lines(path, text)
    values: dict[str, object] = {}
    apps: dict[str, AppSettings] = {}
    auth: dict[str, Any] | None = None
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key == "apps":
            apps = _apps(value, lines)
        elif key == "auth":
            if not isinstance(value, dict):
                raise lines.error((), raw_key, "must be a table: [auth.default], [auth.apps.NAME]")
            auth = value
        elif key == "config":
            raise lines.error((), raw_key, "a config file cannot name another")
        elif isinstance(value, dict):
            raise lines.error((raw_key,), None, f"unknown table [{raw_key}] (tables: [apps.NAME], "
                                                "[auth.default], [auth.apps.NAME])")
        elif key in options:
            values[key] = _convert(options[key], value, lines, raw_key)
        else:
            raise lines.error((), raw_key, "unknown key (every flag is a key: see arcly serve "
                                           "--help)")
    if "auth_config" in values and auth is not None:
        raise lines.error((), "auth_config", "give auth either in [auth] or as auth_config, "
                                             "not both")
    return FileConfig(path, values, apps, auth)


def _convert(parse: Callable[[str], object], value: object, lines: _Lines, key: str) -> object:
    """A TOML value through the flag's own parser (so a file and a flag accept the same)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = ",".join(value)  # lists: --ice-servers, --webrtc-advertise-ip
    else:
        raise lines.error((), key, f"{value!r} is not a string, number, boolean or list of "
                                   "strings")
    try:
        return parse(text)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise lines.error((), key, str(exc)) from None


def _apps(value: object, lines: _Lines) -> dict[str, AppSettings]:
    if not isinstance(value, dict):
        raise lines.error((), "apps", "must be tables: [apps.NAME]")
    apps: dict[str, AppSettings] = {}
    for app, section in value.items():
        where = ("apps", app)
        if not isinstance(section, dict):
            raise lines.error(("apps",), app, "must be a table: [apps.NAME]")
        try:
            StreamKey(app, "x")
        except ArclyError as exc:
            raise lines.error(where, None, f"app name: {exc}") from None
        for key in section:
            if key not in _APP_KEYS:
                raise lines.error(where, key, f"unknown key (one of {', '.join(_APP_KEYS)})")
        apps[app] = _app(section, where, lines)
    return apps


def _app(section: Mapping[str, Any], where: tuple[str, ...], lines: _Lines) -> AppSettings:
    for key in ("record", "on_demand_fallback"):
        if key in section and not isinstance(section[key], bool):
            raise lines.error(where, key, "must be true or false")
    fallback = section.get("fallback")
    if fallback is not None:
        if not isinstance(fallback, str) or not fallback:
            raise lines.error(where, "fallback", "must be the path of an FLV file")
        if not Path(fallback).is_file():
            raise lines.error(where, "fallback", f"no such file {fallback!r}")
    stream: StreamKey | None = None
    if "fallback_stream" in section:
        text = section["fallback_stream"]
        app_name, _, name = str(text).partition("/")
        try:
            stream = StreamKey(app_name, name)
        except ArclyError as exc:
            raise lines.error(where, "fallback_stream", f"{text!r} is not APP/STREAM: {exc}") \
                from None
        if stream.app == where[-1]:
            raise lines.error(where, "fallback_stream", "must be in another app (a fallback "
                                                        "of its own app would fall back to "
                                                        "itself)")
    if fallback is not None and stream is not None:
        raise lines.error(where, "fallback_stream", "give fallback or fallback_stream, not both")
    if section.get("on_demand_fallback") and fallback is None and stream is None:
        raise lines.error(where, "on_demand_fallback", "needs fallback or fallback_stream")
    return AppSettings(record=section.get("record"), fallback=fallback, fallback_stream=stream,
                       on_demand_fallback=bool(section.get("on_demand_fallback", False)))


class _Lines:
    """Finds the line of a key in the file's text, for error messages (tomllib keeps none)."""

    _HEADER = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
    _KEY = re.compile(r"""^\s*("?)([A-Za-z0-9_\-]+)\1\s*=""")

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text

    def find(self, table: tuple[str, ...], key: str | None) -> int | None:
        current: tuple[str, ...] = ()
        for number, line in enumerate(self.text.splitlines(), 1):
            header = self._HEADER.match(line)
            if header:
                current = tuple(p.strip().strip('"') for p in header.group(1).split("."))
                if key is None and current == table:
                    return number
                continue
            found = self._KEY.match(line)
            if key is not None and current == table and found and found.group(2) == key:
                return number
        return None

    def error(self, table: tuple[str, ...], key: str | None, problem: str) -> ConfigFileError:
        line = self.find(table, key)
        name = ".".join([*table, key] if key is not None else table)
        at = f" line {line}" if line is not None else ""
        return ConfigFileError(f"config file {self.path}{at}: {name}: {problem}")

    def table_line(self, table: tuple[str, ...]) -> int | None:
        return self.find(table, None)


def auth_error(path: str, text: str, message: str) -> ConfigFileError:
    """An ``AuthConfigError`` from the file's ``[auth]`` table, with its line: the message
    starts with the section (``[auth.apps.live]: ...``)."""
    match = re.match(r"\[([^\]]+)\]", message)
    line = None
    if match:
        lines = _Lines(path, text)
        names = tuple(match.group(1).split("."))
        # [auth.apps.live] as a table header, or as a key: live = ... under [auth.apps]
        line = lines.table_line(names) or lines.find(names[:-1], names[-1])
    at = f" line {line}" if line is not None else ""
    return ConfigFileError(f"config file {path}{at}: {message}")
