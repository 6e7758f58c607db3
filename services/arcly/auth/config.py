"""Per-app auth from a TOML file (``--auth-config``).

    [default]                      # apps without a section of their own
    provider = "allow-all"

    [apps.live]
    provider = "tokens"            # arcly token sign --key … --app live --stream … --ttl …
    secret_env = "ARCLY_TOKEN_SECRET"
    actions = ["publish"]          # play stays open

    [apps.studio]
    provider = "static"
    publish_keys_file = "/etc/arcly/publish-keys"   # one key per line (a mounted Secret)
    play_keys = ["viewer-key"]
    takeover_keys = ["producer-key"]

    [apps.partner]
    provider = "webhook"
    on_publish = "http://auth.internal/on_publish"
    on_play = "http://auth.internal/on_play"
    on_publish_done = "http://auth.internal/done"
    timeout = 2.0
    on_failure = "deny"            # or "allow"
    cache_seconds = 5

    [apps.app]
    provider = "jwt"               # ?jwt=… or Authorization: Bearer (see arcly.auth.jwt)
    jwks_url = "https://idp.example.com/.well-known/jwks.json"   # RS256/ES256
    # secret_env = "ARCLY_JWT_SECRET"                            # or HS256
    audience = "arcly"             # checked when set
    skew = 30

Secrets never need to be in the file: ``secret_env`` names an environment variable, ``*_file``
names a file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from arcly.engine import (
    Action,
    AllowAll,
    AuthGrant,
    AuthProvider,
    AuthRequest,
    NullObserver,
    StreamKey,
)

from .jwt import JwtTokens
from .providers import SignedTokens, StaticKeys, Webhooks

PROVIDERS = ("allow-all", "static", "tokens", "webhook", "jwt")


class AuthConfigError(ValueError):
    """The auth configuration is unusable; the node refuses to start with it."""


class PerApp(NullObserver):
    """Routes each request to its app's provider (or the default one). Also the observer that
    tells webhook providers a session ended. ``swap`` replaces the providers in place (a config
    reload): requests already being decided finish with the old ones."""

    def __init__(self, apps: Mapping[str, AuthProvider], default: AuthProvider) -> None:
        self.apps = dict(apps)
        self.default = default

    def provider_for(self, app: str) -> AuthProvider:
        return self.apps.get(app, self.default)

    async def authorize(self, request: AuthRequest) -> AuthGrant | None:
        return await self.provider_for(request.key.app).authorize(request)

    def swap(self, other: PerApp) -> list[Webhooks]:
        """Take ``other``'s providers; returns the webhook providers no longer used (to close
        once their notifications are sent)."""
        before = self.webhooks
        self.apps, self.default = dict(other.apps), other.default
        return [hooks for hooks in before if hooks not in self.webhooks]

    @property
    def webhooks(self) -> list[Webhooks]:
        providers = [*self.apps.values(), self.default]
        return [p for p in providers if isinstance(p, Webhooks)]

    @property
    def open(self) -> bool:
        """True when nothing is protected (for the loud startup warning)."""
        return all(isinstance(p, AllowAll) for p in [*self.apps.values(), self.default])

    def on_publish_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        provider = self.provider_for(key.app)
        if isinstance(provider, Webhooks):
            provider.on_publish_end(key, protocol, peer, reason)

    def on_play_end(self, key: StreamKey, protocol: str, peer: str, reason: str) -> None:
        provider = self.provider_for(key.app)
        if isinstance(provider, Webhooks):
            provider.on_play_end(key, protocol, peer, reason)


def _keys(section: Mapping[str, Any], name: str, where: str) -> frozenset[str]:
    listed = section.get(name, [])
    if not isinstance(listed, list):  # a string would become one key per character
        raise AuthConfigError(f"{where}: {name} must be a list of strings, like [\"key\"]")
    keys = list(listed)
    path = section.get(f"{name}_file")
    if path:
        try:
            keys += [line.strip() for line in Path(path).read_text().splitlines()
                     if line.strip() and not line.startswith("#")]
        except OSError as exc:
            raise AuthConfigError(f"{where}: cannot read {name}_file {path}: {exc}") from exc
    if not all(isinstance(k, str) and k for k in keys):
        raise AuthConfigError(f"{where}: {name} must be non-empty strings")
    return frozenset(keys)


def _number(section: Mapping[str, Any], name: str, provider: type, where: str) -> float:
    """A number of seconds (a numeric string too); the provider's own default when absent."""
    if name not in section:
        default = next(f.default for f in dataclasses.fields(provider) if f.name == name)
        return float(default)  # type: ignore[arg-type]
    value = section[name]
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if not number >= 0:
        raise AuthConfigError(f"{where}: {name} must be a number of seconds, not {value!r}")
    return number


def build_provider(section: Mapping[str, Any], where: str, *, node: str = "") -> AuthProvider:
    kind = section.get("provider", "allow-all")
    if kind == "allow-all":
        return AllowAll()
    if kind == "static":
        return StaticKeys(_keys(section, "publish_keys", where), _keys(section, "play_keys", where),
                          _keys(section, "takeover_keys", where))
    if kind == "tokens":
        secret = section.get("secret") or os.environ.get(section.get("secret_env", ""), "")
        if not secret:
            raise AuthConfigError(f"{where}: tokens need 'secret' or a set 'secret_env'")
        try:
            actions = frozenset(Action(a) for a in section.get("actions", ["publish", "play"]))
        except ValueError as exc:
            raise AuthConfigError(f"{where}: actions are 'publish' and 'play'") from exc
        return SignedTokens(secret, actions, _number(section, "skew", SignedTokens, where))
    if kind == "webhook":
        policy = section.get("on_failure", "deny")
        if policy not in ("deny", "allow"):
            raise AuthConfigError(f"{where}: on_failure is 'deny' or 'allow'")
        hooks = {name: str(section.get(name, "")) for name in
                 ("on_publish", "on_play", "on_publish_done", "on_play_done")}
        for name, url in hooks.items():
            if url and not url.startswith(("http://", "https://")):
                raise AuthConfigError(f"{where}: {name} must be an http(s) URL")
        return Webhooks(on_publish=hooks["on_publish"], on_play=hooks["on_play"],
                        on_publish_done=hooks["on_publish_done"],
                        on_play_done=hooks["on_play_done"],
                        timeout=_number(section, "timeout", Webhooks, where),
                        on_failure=policy,
                        cache_seconds=_number(section, "cache_seconds", Webhooks, where),
                        node=node)
    if kind == "jwt":
        secret = section.get("secret") or os.environ.get(section.get("secret_env", ""), "")
        jwks_url = str(section.get("jwks_url", ""))
        if jwks_url and not jwks_url.startswith(("http://", "https://")):
            raise AuthConfigError(f"{where}: jwks_url must be an http(s) URL")
        if bool(jwks_url) == bool(secret):
            raise AuthConfigError(f"{where}: jwt needs 'jwks_url' (RS256/ES256) or a set "
                                  "'secret_env' (HS256), not both")
        return JwtTokens(jwks_url=jwks_url, secret=secret,
                         audience=str(section.get("audience", "")),
                         skew=_number(section, "skew", JwtTokens, where),
                         jwks_cache_seconds=_number(section, "jwks_cache_seconds", JwtTokens,
                                                    where),
                         jwks_refresh_cooldown=_number(section, "jwks_refresh_cooldown",
                                                       JwtTokens, where))
    raise AuthConfigError(f"{where}: unknown provider {kind!r} (one of {', '.join(PROVIDERS)})")


def load_auth(path: str | Path, *, node: str = "") -> PerApp:
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AuthConfigError(f"auth config {path}: {exc}") from exc
    return build_auth(data, node=node)


def build_auth(data: Mapping[str, Any], *, node: str = "", section: str = "") -> PerApp:
    """Providers from an auth table (``[default]`` and ``[apps.NAME]``); ``section`` prefixes
    the names in errors (``auth.`` inside the node's config file)."""
    unknown = [name for name in data if name not in ("default", "apps")]
    if unknown:
        raise AuthConfigError(f"[{section}{unknown[0]}]: unknown section (sections: "
                              f"[{section}default], [{section}apps.NAME])")
    default = data.get("default", {})
    apps = data.get("apps") or {}
    if not isinstance(default, dict):
        raise AuthConfigError(f"[{section}default]: must be a table, like "
                              f"[{section}default] provider = \"allow-all\"")
    if not isinstance(apps, dict) or not all(isinstance(t, dict) for t in apps.values()):
        raise AuthConfigError(f"[{section}apps]: must hold tables, like [{section}apps.live]")
    return PerApp({app: build_provider(table, f"[{section}apps.{app}]", node=node)
                   for app, table in apps.items()},
                  build_provider(default, f"[{section}default]", node=node))
