"""The JWT provider against a JWKS served by a local aiohttp app: permissions by action and
path glob, exp/nbf/aud, unknown kid (rotation without restart), tampering, HS256 secrets."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from arcly.auth.config import AuthConfigError, build_provider
from arcly.auth.jwt import JwtTokens
from arcly.engine import Action, AuthError, AuthRequest, StreamKey

PUBLISH_LIVE = [{"action": "publish", "path": "live/*"}, {"action": "play", "path": "*"}]


class Issuer:
    """Signing keys and the JWKS that publishes their public halves."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0

    def add_rsa(self, kid: str) -> None:
        self.keys[kid] = ("RS256", rsa.generate_private_key(public_exponent=65537,
                                                            key_size=2048))

    def add_ec(self, kid: str) -> None:
        self.keys[kid] = ("ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid, (alg, key) in self.keys.items():
            algorithm = RSAAlgorithm if alg == "RS256" else ECAlgorithm
            jwk = json.loads(algorithm.to_jwk(key.public_key()))
            out.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        return {"keys": out}

    def token(self, kid: str, permissions: Any = PUBLISH_LIVE, **claims: Any) -> str:
        alg, key = self.keys[kid]
        body = {"arcly_permissions": permissions, "exp": int(time.time()) + 60, **claims}
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture
async def issuer() -> AsyncIterator[tuple[Issuer, str]]:
    keys = Issuer()
    keys.add_rsa("k1")

    async def serve(request: web.Request) -> web.Response:
        keys.fetches += 1
        return web.json_response(keys.jwks())

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield keys, f"http://127.0.0.1:{port}/jwks.json"
    finally:
        await runner.cleanup()


def ask(action: Action, key: str, token: str, *, as_bearer: bool = False) -> AuthRequest:
    app, stream = key.split("/")
    query = {"key": token} if as_bearer else {"jwt": token}
    return AuthRequest(action, StreamKey(app, stream), "rtmp", "10.0.0.1:5000", query)


async def refused(provider: JwtTokens, request: AuthRequest) -> str:
    with pytest.raises(AuthError) as caught:
        await provider.authorize(request)
    return str(caught.value)


async def test_permissions_follow_the_claim(issuer: tuple[Issuer, str]) -> None:
    keys, url = issuer
    provider = JwtTokens(jwks_url=url, audience="arcly")
    token = keys.token("k1", aud="arcly")
    assert await provider.authorize(ask(Action.PUBLISH, "live/cam1", token)) is None
    assert await provider.authorize(ask(Action.PLAY, "other/x", token)) is None
    assert await provider.authorize(ask(Action.PUBLISH, "live/cam1", token,
                                        as_bearer=True)) is None  # WHIP's Bearer
    play_only = keys.token("k1", [{"action": "play", "path": "live/*"}], aud="arcly")
    assert "token refused" in await refused(provider, ask(Action.PUBLISH, "live/cam1",
                                                          play_only))
    assert "token refused" in await refused(provider, ask(Action.PUBLISH, "studio/cam1",
                                                          token))
    assert "token required" in await refused(provider, ask(Action.PLAY, "live/cam1", ""))


async def test_expiry_audience_and_tampering_are_refused(
        issuer: tuple[Issuer, str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="arcly.auth")
    keys, url = issuer
    provider = JwtTokens(jwks_url=url, audience="arcly", skew=5)
    expired = keys.token("k1", aud="arcly", exp=int(time.time()) - 60)
    not_yet = keys.token("k1", aud="arcly", nbf=int(time.time()) + 60)
    wrong_aud = keys.token("k1", aud="someone-else")
    good = keys.token("k1", aud="arcly")
    head, body, signature = good.split(".")
    claims = json.loads(jwt.utils.base64url_decode(body))
    claims["arcly_permissions"] = [{"action": "publish", "path": "*"}]
    tampered = ".".join((head, jwt.utils.base64url_encode(json.dumps(claims).encode()).decode(),
                         signature))
    for token in (expired, not_yet, wrong_aud, tampered, "not.a.jwt"):
        message = await refused(provider, ask(Action.PLAY, "live/cam1", token))
        assert message == "play live/cam1: token refused"  # no detail for the client
    logged = caplog.text
    for why in ("expired", "not yet valid", "Audience", "Signature verification failed"):
        assert why in logged, why
    # Within the skew an expired token still passes.
    lenient = keys.token("k1", aud="arcly", exp=int(time.time()) - 2)
    assert await provider.authorize(ask(Action.PLAY, "live/cam1", lenient)) is None


async def test_a_new_key_in_the_jwks_is_picked_up_without_restart(
        issuer: tuple[Issuer, str]) -> None:
    keys, url = issuer
    provider = JwtTokens(jwks_url=url, jwks_refresh_cooldown=0)
    assert await provider.authorize(ask(Action.PLAY, "live/x", keys.token("k1"))) is None
    fetched = keys.fetches
    keys.add_ec("k2")  # rotation: the identity provider publishes a new key
    assert await provider.authorize(ask(Action.PLAY, "live/x", keys.token("k2"))) is None
    assert keys.fetches == fetched + 1  # fetched again for the unknown kid, once
    assert await provider.authorize(ask(Action.PLAY, "live/x", keys.token("k2"))) is None
    assert keys.fetches == fetched + 1  # cached
    stranger = Issuer()
    stranger.add_rsa("k9")
    await refused(provider, ask(Action.PLAY, "live/x", stranger.token("k9")))
    # With the default cooldown, forged kids do not make it fetch again and again.
    guarded = JwtTokens(jwks_url=url)
    await guarded.authorize(ask(Action.PLAY, "live/x", keys.token("k1")))
    before = keys.fetches
    for _ in range(5):
        await refused(guarded, ask(Action.PLAY, "live/x", stranger.token("k9")))
    assert keys.fetches == before


async def test_hs256_secrets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCLY_TEST_JWT", "s3cret-s3cret-s3cret-s3cret-s3cret!")  # 35 bytes
    provider = build_provider({"provider": "jwt", "secret_env": "ARCLY_TEST_JWT"}, "[apps.x]")
    assert isinstance(provider, JwtTokens)
    token = jwt.encode({"arcly_permissions": PUBLISH_LIVE, "exp": int(time.time()) + 60},
                       "s3cret-s3cret-s3cret-s3cret-s3cret!", algorithm="HS256")
    assert await provider.authorize(ask(Action.PUBLISH, "live/a", token)) is None
    forged = jwt.encode({"arcly_permissions": PUBLISH_LIVE}, "another-secret-another-secret!!!!",
                        algorithm="HS256")
    await refused(provider, ask(Action.PUBLISH, "live/a", forged))


def test_config_errors_name_the_section() -> None:
    with pytest.raises(AuthConfigError, match=r"\[apps.x\]: jwt needs"):
        build_provider({"provider": "jwt"}, "[apps.x]")
    with pytest.raises(AuthConfigError, match="http"):
        build_provider({"provider": "jwt", "jwks_url": "file:///etc/passwd"}, "[apps.x]")
