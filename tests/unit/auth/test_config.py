"""``--auth-config``: a TOML file builds one provider per app (and a default), with secrets
from the environment or files, and refuses unusable configurations with a clear message."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from arcly.auth import (
    AuthConfigError,
    PerApp,
    SignedTokens,
    StaticKeys,
    Webhooks,
    load_auth,
    tokens,
)
from arcly.engine import Action, AllowAll, AuthError, AuthRequest, StreamKey


def write(tmp_path: Path, text: str, name: str = "auth.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


async def allowed(routing: PerApp, action: Action, key: str, query: dict[str, str]) -> bool:
    try:
        await routing.authorize(AuthRequest(action, StreamKey.parse(key), "rtmp",
                                            "192.0.2.1:1935", query))
    except AuthError:
        return False
    return True


def test_empty_file_allows_everything(tmp_path: Path) -> None:
    routing = load_auth(write(tmp_path, ""))
    assert isinstance(routing.default, AllowAll)
    assert routing.apps == {}
    assert routing.open


def test_app_sections_get_their_own_provider_and_others_the_default(tmp_path: Path) -> None:
    routing = load_auth(write(tmp_path, """
        [default]
        provider = "static"
        publish_keys = ["d"]

        [apps.open]
        provider = "allow-all"

        [apps.studio]
        provider = "static"
        play_keys = ["v"]
    """))
    assert isinstance(routing.default, StaticKeys)
    assert isinstance(routing.provider_for("open"), AllowAll)
    assert routing.provider_for("studio") == StaticKeys(play_keys=frozenset({"v"}))
    assert routing.provider_for("anything-else") is routing.default
    assert not routing.open


def test_section_without_provider_is_allow_all(tmp_path: Path) -> None:
    routing = load_auth(write(tmp_path, "[apps.live]\n"))
    assert isinstance(routing.provider_for("live"), AllowAll)


def test_static_keys_merge_inline_lists_and_key_files(tmp_path: Path) -> None:
    keys_file = tmp_path / "publish-keys"
    keys_file.write_text("# mounted Secret\nfile-key-1\n\n  file-key-2  \n#comment\n")
    takeover_file = tmp_path / "takeover"
    takeover_file.write_text("boss\n")
    routing = load_auth(write(tmp_path, f"""
        [default]
        provider = "static"
        publish_keys = ["inline"]
        publish_keys_file = "{keys_file}"
        play_keys = ["viewer"]
        takeover_keys_file = "{takeover_file}"
    """))
    assert routing.default == StaticKeys(
        publish_keys=frozenset({"inline", "file-key-1", "file-key-2"}),
        play_keys=frozenset({"viewer"}), takeover_keys=frozenset({"boss"}))


async def test_static_keys_from_file_authorize_publish(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("k1\n")
    routing = load_auth(write(tmp_path, f"""
        [apps.studio]
        provider = "static"
        publish_keys_file = "{keys_file}"
    """))
    assert await allowed(routing, Action.PUBLISH, "studio/cam", {"key": "k1"})
    assert not await allowed(routing, Action.PUBLISH, "studio/cam", {"key": "k2"})
    assert await allowed(routing, Action.PUBLISH, "live/cam", {}), "default stays open"


def test_tokens_with_inline_secret_actions_and_skew(tmp_path: Path) -> None:
    routing = load_auth(write(tmp_path, """
        [apps.live]
        provider = "tokens"
        secret = "inline-secret"
        actions = ["publish"]
        skew = 5
    """))
    assert routing.provider_for("live") == SignedTokens(
        "inline-secret", frozenset({Action.PUBLISH}), 5.0)


def test_tokens_default_to_guarding_publish_and_play_with_30s_skew(tmp_path: Path) -> None:
    provider = load_auth(write(tmp_path, '[default]\nprovider = "tokens"\nsecret = "x"\n')).default
    assert provider == SignedTokens("x", frozenset({Action.PUBLISH, Action.PLAY}), 30.0)


async def test_tokens_secret_from_the_named_environment_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCLY_TEST_TOKEN_SECRET", "from-env")
    routing = load_auth(write(tmp_path, """
        [apps.live]
        provider = "tokens"
        secret_env = "ARCLY_TEST_TOKEN_SECRET"
    """))
    provider = routing.provider_for("live")
    assert isinstance(provider, SignedTokens) and provider.secret == "from-env"
    good = tokens.sign("from-env", "play", "live", "cam1", expires=int(time.time()) + 60)
    bad = tokens.sign("other", "play", "live", "cam1", expires=int(time.time()) + 60)
    assert await allowed(routing, Action.PLAY, "live/cam1", good)
    assert not await allowed(routing, Action.PLAY, "live/cam1", bad)


def test_webhook_section_builds_hooks_with_every_setting(tmp_path: Path) -> None:
    routing = load_auth(write(tmp_path, """
        [apps.partner]
        provider = "webhook"
        on_publish = "http://auth.internal/on_publish"
        on_play = "https://auth.internal/on_play"
        on_publish_done = "http://auth.internal/done"
        on_play_done = "http://auth.internal/play_done"
        timeout = 2.5
        on_failure = "allow"
        cache_seconds = 7
    """), node="origin-7")
    hooks = routing.provider_for("partner")
    assert isinstance(hooks, Webhooks)
    assert (hooks.on_publish, hooks.on_play, hooks.on_publish_done, hooks.on_play_done) == (
        "http://auth.internal/on_publish", "https://auth.internal/on_play",
        "http://auth.internal/done", "http://auth.internal/play_done")
    assert (hooks.timeout, hooks.on_failure, hooks.cache_seconds, hooks.node) == (
        2.5, "allow", 7.0, "origin-7")
    assert routing.webhooks == [hooks]


def test_webhook_defaults_deny_on_failure_with_3s_timeout_and_5s_cache(tmp_path: Path) -> None:
    hooks = load_auth(write(tmp_path, '[default]\nprovider = "webhook"\n'
                                      'on_play = "http://h/"\n')).default
    assert isinstance(hooks, Webhooks)
    assert (hooks.on_failure, hooks.timeout, hooks.cache_seconds) == ("deny", 3.0, 5.0)
    assert hooks.on_publish == "", "no on_publish: publish is not hooked"


# -- refusals ---------------------------------------------------------------------------------


def test_unknown_provider_names_the_section_and_the_valid_kinds(tmp_path: Path) -> None:
    path = write(tmp_path, '[apps.live]\nprovider = "ldap"\n')
    with pytest.raises(AuthConfigError, match=r"\[apps\.live\]: unknown provider 'ldap'") as exc:
        load_auth(path)
    for kind in ("allow-all", "static", "tokens", "webhook"):
        assert kind in str(exc.value)


def test_tokens_without_secret_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match=r"\[default\]: tokens need 'secret'"):
        load_auth(write(tmp_path, '[default]\nprovider = "tokens"\n'))


def test_tokens_with_unset_secret_env_are_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARCLY_TEST_UNSET_SECRET", raising=False)
    path = write(tmp_path, '[apps.live]\nprovider = "tokens"\n'
                           'secret_env = "ARCLY_TEST_UNSET_SECRET"\n')
    with pytest.raises(AuthConfigError, match=r"\[apps\.live\]: tokens need"):
        load_auth(path)
    monkeypatch.setenv("ARCLY_TEST_UNSET_SECRET", "")
    with pytest.raises(AuthConfigError, match="secret_env"):
        load_auth(path)


def test_tokens_with_unknown_action_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[default]\nprovider = "tokens"\nsecret = "s"\n'
                           'actions = ["publish", "delete"]\n')
    with pytest.raises(AuthConfigError, match="actions are 'publish' and 'play'"):
        load_auth(path)


@pytest.mark.parametrize("policy", ["maybe", "Deny", ""])
def test_webhook_bad_on_failure_is_refused(tmp_path: Path, policy: str) -> None:
    path = write(tmp_path, f'[apps.p]\nprovider = "webhook"\non_failure = "{policy}"\n')
    with pytest.raises(AuthConfigError, match=r"\[apps\.p\]: on_failure is 'deny' or 'allow'"):
        load_auth(path)


@pytest.mark.parametrize("hook", ["on_publish", "on_play", "on_publish_done", "on_play_done"])
@pytest.mark.parametrize("url", ["ftp://auth.internal/x", "auth.internal/hook", "/on_publish"])
def test_webhook_non_http_url_is_refused(tmp_path: Path, hook: str, url: str) -> None:
    path = write(tmp_path, f'[default]\nprovider = "webhook"\n{hook} = "{url}"\n')
    with pytest.raises(AuthConfigError, match=rf"\[default\]: {hook} must be an http\(s\) URL"):
        load_auth(path)


def test_unreadable_keys_file_is_refused_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-keys"
    path = write(tmp_path, f'[apps.s]\nprovider = "static"\nplay_keys_file = "{missing}"\n')
    with pytest.raises(AuthConfigError, match=r"\[apps\.s\]: cannot read play_keys_file") as exc:
        load_auth(path)
    assert str(missing) in str(exc.value)


def test_keys_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, f'[default]\nprovider = "static"\npublish_keys_file = "{tmp_path}"\n')
    with pytest.raises(AuthConfigError, match="cannot read publish_keys_file"):
        load_auth(path)


@pytest.mark.parametrize("value", ['[""]', "[1]", '["ok", 2]'])
def test_empty_or_non_string_keys_are_refused(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f'[default]\nprovider = "static"\npublish_keys = {value}\n')
    with pytest.raises(AuthConfigError, match="publish_keys must be non-empty strings"):
        load_auth(path)


def test_keys_given_as_a_string_instead_of_a_list_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[default]\nprovider = "static"\npublish_keys = "secret"\n')
    with pytest.raises(AuthConfigError, match="publish_keys"):
        load_auth(path)


def test_non_numeric_timeout_is_refused_with_the_section(tmp_path: Path) -> None:
    path = write(tmp_path, '[apps.p]\nprovider = "webhook"\ntimeout = "two"\n')
    with pytest.raises(AuthConfigError, match=r"\[apps\.p\]"):
        load_auth(path)


def test_bad_toml_is_refused_with_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, '[default\nprovider = "static"\n', name="broken.toml")
    with pytest.raises(AuthConfigError, match=r"auth config .*broken\.toml"):
        load_auth(path)


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match=r"auth config .*absent\.toml"):
        load_auth(tmp_path / "absent.toml")


def test_auth_config_error_is_a_value_error_for_callers_that_catch_those() -> None:
    assert issubclass(AuthConfigError, ValueError)


def test_timings_written_as_numeric_strings_still_load(tmp_path: Path) -> None:
    path = write(tmp_path, '[apps.p]\nprovider = "webhook"\ntimeout = "2.5"\n'
                           'cache_seconds = 0\n')
    hooks = load_auth(path).apps["p"]
    assert isinstance(hooks, Webhooks) and (hooks.timeout, hooks.cache_seconds) == (2.5, 0.0)
