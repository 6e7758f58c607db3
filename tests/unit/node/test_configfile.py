"""The ``--config`` TOML file: every flag is a key, flags and env win over it, errors name the
key and line; and the reloader's rules (refuse a bad file, keep what needs a restart)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from arcly.auth import PerApp, StaticKeys
from arcly.engine import StreamKey
from arcly.node.config import ConfigSource, NodeConfig, load_config
from arcly.node.configfile import ConfigFileError
from arcly.node.reload import RELOADABLE, Reloader, auth_for


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "arcly.toml"
    path.write_text(text)
    return str(path)


def test_every_flag_is_a_key_and_flags_then_env_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'chunk-size = 2048\nhls = false\nlog_level = "debug"\n'
                           'ice_servers = ["stun:a:3478", "stun:b:3478"]\n'
                           'record_max_bytes = "2G"\n')
    config = load_config(["--config", path], env={})
    assert (config.chunk_size, config.hls, config.log_level) == (2048, False, "debug")
    assert [s.url for s in config.ice_servers] == ["stun:a:3478", "stun:b:3478"]
    assert config.record_max_bytes == 2 << 30
    assert load_config(["--config", path], env={"ARCLY_CHUNK_SIZE": "1024"}).chunk_size == 1024
    assert load_config(["--config", path, "--chunk-size", "512"],
                       env={"ARCLY_CHUNK_SIZE": "1024"}).chunk_size == 512
    assert load_config([], env={"ARCLY_CONFIG": path}).chunk_size == 2048


@pytest.mark.parametrize(("text", "expected"), [
    ('chunk_size = 1\nmax_publishers = "lots"\n', r"line 2: max_publishers: invalid literal"),
    ("\n\nchunk_sise = 10\n", r"line 3: chunk_sise: unknown key"),
    ("[hls]\nwindow = 3\n", r"line 1: hls: unknown table"),
    ("log_level = [1]\n", r"line 1: log_level: \[1\] is not a string"),
    ("chunk_size = \n", r"arcly.toml: Invalid value \(at line 1"),
    ("[apps.live]\nrecord = 1\n", r"line 2: apps.live.record: must be true or false"),
    ("[apps.live]\nfallback = \"/nope.flv\"\n", r"line 2: apps.live.fallback: no such file"),
    ("[apps.live]\nfallback_stream = \"live/x\"\n", r"must be in another app"),
    ("[apps.live]\nfallback_stream = \"nostream\"\n", r"is not APP/STREAM"),
    ("[apps.live]\non_demand_fallback = true\n", r"needs fallback or fallback_stream"),
    ("[apps.live]\nfalback = \"x\"\n", r"line 2: apps.live.falback: unknown key"),
    ('auth_config = "a.toml"\n[auth.default]\n', r"auth_config: give auth either"),
])
def test_a_bad_file_is_refused_naming_the_key_and_line(tmp_path: Path, text: str,
                                                       expected: str) -> None:
    with pytest.raises(ConfigFileError, match=expected):
        ConfigSource({"config": write(tmp_path, text)}, {}).build()


def test_apps_choose_recording_and_fallbacks(tmp_path: Path) -> None:
    slate = tmp_path / "slate.flv"
    slate.write_bytes(b"FLV")
    config = load_config(["--config", write(tmp_path, f"""
record = "{tmp_path}"
[apps.live]
fallback = "{slate}"
on_demand_fallback = true
[apps.studio]
record = false
fallback_stream = "live/slate"
""")], env={})
    assert config.records("live") and config.records("other") and not config.records("studio")
    assert config.app("live").fallback == str(slate) and config.app("live").on_demand_fallback
    assert config.app("studio").fallback_stream == StreamKey("live", "slate")
    assert not config.app("other").has_fallback
    with pytest.raises(ValueError, match=r"\[apps.live\] record = true needs"):
        ConfigSource({"config": write(tmp_path, "[apps.live]\nrecord = true\n")}, {}).build()


def test_auth_in_the_file_is_built_with_its_line_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, '[auth.default]\nprovider = "static"\nplay_keys = ["v"]\n'
                           '[auth.apps.live]\nprovider = "tokens"\n')
    config = load_config(["--config", path], env={})
    with pytest.raises(ConfigFileError, match=r"line 4: \[auth.apps.live\]: tokens need"):
        auth_for(config)
    path = write(tmp_path, '[auth.default]\nprovider = "static"\nplay_keys = ["v"]\n')
    routing = auth_for(load_config(["--config", path], env={}))
    assert isinstance(routing, PerApp) and isinstance(routing.default, StaticKeys)
    assert auth_for(NodeConfig()) is None


def test_a_reload_refuses_bad_files_and_keeps_what_needs_a_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "max_publishers = 5\nchunk_size = 4096\n")
    source = ConfigSource({"config": path}, {})
    applied: list[tuple[NodeConfig, NodeConfig]] = []

    async def apply(old: NodeConfig, new: NodeConfig, auth: PerApp | None) -> None:
        applied.append((old, new))

    reloader = Reloader(source, source.build(), apply)
    caplog.set_level(logging.INFO, "arcly.config")

    async def scenario() -> None:
        Path(path).write_text("max_publishers = 7\nchunk_size = 8192\n")
        assert await reloader.reload("SIGHUP")
        Path(path).write_text("max_publishers = 0\n")
        assert not await reloader.reload("SIGHUP")

    asyncio.run(scenario())
    assert reloader.generation == 2 and reloader.refused == 1
    (_, new), = applied
    assert (new.max_publishers, new.chunk_size) == (7, 4096)  # chunk size needs a restart
    assert "chunk_size changed (4096 -> 8192) and needs a restart" in caplog.text
    assert "config refused (SIGHUP)" in caplog.text and "max_publishers" in caplog.text
    assert reloader.summary()["generation"] == 2
    assert {"auth", "apps", "log_level", "max_viewers_per_stream"} <= RELOADABLE
    assert not {"rtmp_listen", "http_listen", "grpc_listen", "redis_url"} & RELOADABLE


def test_one_edit_loaded_by_sighup_and_then_seen_by_the_poller_makes_one_generation(
        tmp_path: Path) -> None:
    path = write(tmp_path, "max_publishers = 5\n")
    source = ConfigSource({"config": path}, {})
    applied: list[NodeConfig] = []

    async def apply(old: NodeConfig, new: NodeConfig, auth: PerApp | None) -> None:
        applied.append(new)

    reloader = Reloader(source, source.build(), apply)

    async def scenario() -> None:
        Path(path).write_text("max_publishers = 7\n")
        # the poller saw the change, but the SIGHUP's reload took the lock first
        assert await reloader.reload("SIGHUP")
        assert not await reloader.reload("file changed", if_changed=True)
        Path(path).write_text("max_publishers = 9\n")
        assert await reloader.reload("file changed", if_changed=True)
        assert await reloader.reload("SIGHUP")  # asked for explicitly: loaded again

    asyncio.run(scenario())
    assert reloader.generation == 4
    assert [c.max_publishers for c in applied] == [7, 9, 9]


@pytest.mark.parametrize("text", ['[auth]\ndefault = "allow-all"\n',
                                  '[auth.apps]\nlive = "static"\n',
                                  '[auth.default]\nprovider = "static"\n[auth.other]\n'])
def test_a_malformed_auth_table_is_refused_and_never_stops_the_reloader(
        tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "")
    source = ConfigSource({"config": path}, {})

    async def apply(old: NodeConfig, new: NodeConfig, auth: PerApp | None) -> None:
        raise AssertionError("a refused file is never applied")

    reloader = Reloader(source, source.build(), apply)
    Path(path).write_text(text)
    assert not asyncio.run(reloader.reload("file changed"))
    assert reloader.refused == 1 and reloader.generation == 1
    with pytest.raises(ConfigFileError, match=r"line \d+: \[auth\."):
        auth_for(source.build())
