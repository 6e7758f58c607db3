"""Auth providers decide publish/play from the credentials in the query: static keys, signed
expiring tokens, and webhooks (proved against a real aiohttp app on loopback)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from arcly.auth import PerApp, SignedTokens, StaticKeys, Webhooks, tokens
from arcly.engine import (
    Action,
    AllowAll,
    AuthError,
    AuthGrant,
    AuthProvider,
    AuthRequest,
    StreamKey,
)
from tests.support.wait import eventually

KEY = StreamKey("live", "cam1")
PEER = "203.0.113.7:50123"
SECRET = "s3cret"


def request(action: Action, query: dict[str, str] | None = None, *, key: StreamKey = KEY,
            peer: str = PEER, protocol: str = "rtmp") -> AuthRequest:
    return AuthRequest(action, key, protocol, peer, query or {})


async def allowed(provider: AuthProvider, req: AuthRequest) -> bool:
    """True when ``provider`` lets ``req`` through (any grant), False when it refuses."""
    try:
        await provider.authorize(req)
    except AuthError:
        return False
    return True



# -- static keys ------------------------------------------------------------------------------


async def test_static_publish_key_allows_publish_and_wrong_or_missing_key_is_refused() -> None:
    keys = StaticKeys(publish_keys=frozenset({"pub-key"}))
    assert await keys.authorize(request(Action.PUBLISH, {"key": "pub-key"})) is None
    with pytest.raises(AuthError, match="wrong key"):
        await keys.authorize(request(Action.PUBLISH, {"key": "other"}))
    with pytest.raises(AuthError, match="missing key"):
        await keys.authorize(request(Action.PUBLISH))


async def test_static_play_key_guards_play_and_does_not_open_publish() -> None:
    keys = StaticKeys(publish_keys=frozenset({"pub-key"}), play_keys=frozenset({"view-key"}))
    assert await allowed(keys, request(Action.PLAY, {"key": "view-key"}))
    assert not await allowed(keys, request(Action.PLAY, {"key": "pub-key"}))
    assert not await allowed(keys, request(Action.PUBLISH, {"key": "view-key"}))
    assert not await allowed(keys, request(Action.PLAY))


async def test_static_action_without_keys_is_open() -> None:
    keys = StaticKeys(publish_keys=frozenset({"pub-key"}))
    assert await keys.authorize(request(Action.PLAY)) is None
    assert await keys.authorize(request(Action.PLAY, {"key": "anything"})) is None
    assert await StaticKeys().authorize(request(Action.PUBLISH)) is None


async def test_static_takeover_key_grants_takeover_on_publish_only() -> None:
    keys = StaticKeys(publish_keys=frozenset({"pub-key"}), play_keys=frozenset({"view-key"}),
                      takeover_keys=frozenset({"boss-key"}))
    assert await keys.authorize(request(Action.PUBLISH, {"key": "boss-key"})) == AuthGrant(
        takeover=True)
    assert await keys.authorize(request(Action.PUBLISH, {"key": "pub-key"})) is None, \
        "an ordinary publish key never implies takeover"
    assert not await allowed(keys, request(Action.PLAY, {"key": "boss-key"}))


async def test_static_takeover_keys_alone_close_publish_to_everyone_else() -> None:
    keys = StaticKeys(takeover_keys=frozenset({"boss-key"}))
    assert not await allowed(keys, request(Action.PUBLISH))
    assert not await allowed(keys, request(Action.PUBLISH, {"key": "guess"}))
    grant = await keys.authorize(request(Action.PUBLISH, {"key": "boss-key"}))
    assert grant is not None and grant.takeover
    assert await allowed(keys, request(Action.PLAY)), "play has no keys: open"


@pytest.mark.parametrize("offered", ["pub-ke", "pub-key2", "PUB-KEY", " pub-key", "", "pub"])
async def test_static_key_match_is_exact_no_prefix_suffix_or_case_variant(offered: str) -> None:
    keys = StaticKeys(publish_keys=frozenset({"pub-key"}))
    assert not await allowed(keys, request(Action.PUBLISH, {"key": offered}))


async def test_static_key_matches_any_of_several_keys_including_non_ascii() -> None:
    accepted = frozenset({"alpha", "beta", "clé-ünïcode", "x" * 200})
    keys = StaticKeys(publish_keys=accepted)
    for key in accepted:
        assert await allowed(keys, request(Action.PUBLISH, {"key": key})), key
    assert not await allowed(keys, request(Action.PUBLISH, {"key": "clé"}))
    assert not await allowed(keys, request(Action.PUBLISH, {"key": "x" * 199}))


# -- signed tokens ----------------------------------------------------------------------------


def signed(action: str, *, app: str = "live", stream: str = "cam1", ttl: float = 600,
           expires: int | None = None, secret: str = SECRET) -> dict[str, str]:
    return tokens.sign(secret, action, app, stream, ttl=ttl, expires=expires)


async def test_token_signed_for_the_action_and_stream_is_accepted() -> None:
    provider = SignedTokens(SECRET)
    assert await provider.authorize(request(Action.PUBLISH, signed("publish"))) is None
    assert await provider.authorize(request(Action.PLAY, signed("play"))) is None


async def test_token_within_clock_skew_after_expiry_is_accepted() -> None:
    provider = SignedTokens(SECRET, skew=30)
    expired_recently = int(time.time()) - 10
    assert await allowed(provider, request(Action.PLAY, signed("play", expires=expired_recently)))


async def test_token_expired_beyond_skew_is_refused() -> None:
    provider = SignedTokens(SECRET, skew=30)
    long_ago = int(time.time()) - 31 - 5
    with pytest.raises(AuthError, match="invalid or expired"):
        await provider.authorize(request(Action.PLAY, signed("play", expires=long_ago)))
    strict = SignedTokens(SECRET, skew=0)
    assert not await allowed(strict, request(Action.PLAY,
                                             signed("play", expires=int(time.time()) - 2)))


async def test_play_token_cannot_publish() -> None:
    provider = SignedTokens(SECRET)
    assert not await allowed(provider, request(Action.PUBLISH, signed("play")))


async def test_token_for_another_stream_or_app_is_refused() -> None:
    provider = SignedTokens(SECRET)
    assert not await allowed(provider, request(Action.PLAY, signed("play", stream="cam2")))
    assert not await allowed(provider, request(Action.PLAY, signed("play", app="other")))


async def test_token_with_tampered_expiry_is_refused() -> None:
    provider = SignedTokens(SECRET)
    query = signed("publish", ttl=60)
    extended = {**query, "expires": str(int(query["expires"]) + 86_400)}
    assert not await allowed(provider, request(Action.PUBLISH, extended))
    assert not await allowed(provider, request(Action.PUBLISH, {**query, "expires": "soon"}))


async def test_token_signed_with_another_secret_or_altered_is_refused() -> None:
    provider = SignedTokens(SECRET)
    assert not await allowed(provider, request(Action.PLAY, signed("play", secret="guess")))
    query = signed("play")
    flipped = query["token"][:-1] + ("0" if query["token"][-1] != "0" else "1")
    assert not await allowed(provider, request(Action.PLAY, {**query, "token": flipped}))


async def test_token_missing_is_refused_but_unguarded_action_stays_open() -> None:
    provider = SignedTokens(SECRET, actions=frozenset({Action.PUBLISH}))
    with pytest.raises(AuthError, match="token required"):
        await provider.authorize(request(Action.PUBLISH))
    with pytest.raises(AuthError, match="token required"):
        await provider.authorize(request(Action.PUBLISH, {"token": signed("publish")["token"]}))
    assert await provider.authorize(request(Action.PLAY)) is None


def test_tokens_verify_round_trips_with_explicit_clock() -> None:
    query = tokens.sign(SECRET, "publish", "live", "cam1", expires=2_000_000_000)
    assert tokens.verify(SECRET, "publish", "live", "cam1", query["token"], query["expires"],
                         now=1_999_999_999)
    assert tokens.verify(SECRET, "publish", "live", "cam1", query["token"], query["expires"],
                         now=2_000_000_030, skew=30)
    assert not tokens.verify(SECRET, "publish", "live", "cam1", query["token"],
                             query["expires"], now=2_000_000_031, skew=30)


# -- webhooks against a real aiohttp app ------------------------------------------------------


@dataclass
class HookApp:
    """A loopback auth service: records every request, answers per path."""

    base: str
    received: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def hits(self, path: str) -> list[dict[str, object]]:
        return [body for p, body in self.received if p == path]


@pytest.fixture
async def hook_app() -> AsyncIterator[HookApp]:
    state = HookApp(base="")

    def recorded(answer: Callable[[], Awaitable[web.StreamResponse]]
                 ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(req: web.Request) -> web.StreamResponse:
            state.received.append((req.path, await req.json()))
            return await answer()
        return handler

    async def ok() -> web.StreamResponse:
        return web.Response(status=200)

    async def no_content() -> web.StreamResponse:
        return web.Response(status=204)

    async def forbidden() -> web.StreamResponse:
        return web.Response(status=403, text="no")

    async def broken() -> web.StreamResponse:
        return web.Response(status=500)

    async def takeover() -> web.StreamResponse:
        return web.json_response({"takeover": True})

    async def not_json() -> web.StreamResponse:
        return web.Response(status=200, text="fine, go ahead")

    async def slow() -> web.StreamResponse:
        try:
            await asyncio.wait_for(state.release.wait(), 10)
        except TimeoutError:
            pass
        return web.Response(status=200)

    app = web.Application()
    for path, answer in (("/allow", ok), ("/created", no_content), ("/deny", forbidden),
                         ("/broken", broken), ("/takeover", takeover), ("/text", not_json),
                         ("/slow", slow), ("/done", ok)):
        app.router.add_post(path, recorded(answer))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.base = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


@pytest.fixture
async def hooks_factory() -> AsyncIterator[Callable[..., Webhooks]]:
    made: list[Webhooks] = []

    def make(**kwargs: object) -> Webhooks:
        hooks = Webhooks(**kwargs)  # type: ignore[arg-type]
        made.append(hooks)
        return hooks

    try:
        yield make
    finally:
        for hooks in made:
            await hooks.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_webhook_2xx_allows(hook_app: HookApp,
                                  hooks_factory: Callable[..., Webhooks]) -> None:
    hooks = hooks_factory(on_publish=hook_app.url("/allow"), on_play=hook_app.url("/created"))
    assert await hooks.authorize(request(Action.PUBLISH)) is None
    assert await hooks.authorize(request(Action.PLAY)) is None
    assert len(hook_app.hits("/allow")) == 1 and len(hook_app.hits("/created")) == 1


@pytest.mark.parametrize("path,status", [("/deny", 403), ("/broken", 500)])
async def test_webhook_non_2xx_refuses_with_the_status(
        hook_app: HookApp, hooks_factory: Callable[..., Webhooks], path: str,
        status: int) -> None:
    hooks = hooks_factory(on_publish=hook_app.url(path), on_failure="allow")
    with pytest.raises(AuthError, match=f"answered {status}"):
        await hooks.authorize(request(Action.PUBLISH))
    assert len(hook_app.hits(path)) == 1


async def test_webhook_sees_action_key_client_protocol_node_and_query_credentials(
        hook_app: HookApp, hooks_factory: Callable[..., Webhooks]) -> None:
    hooks = hooks_factory(on_play=hook_app.url("/allow"), node="edge-1")
    await hooks.authorize(request(Action.PLAY, {"key": "v1", "token": "abc"},
                                  protocol="http-flv"))
    [body] = hook_app.hits("/allow")
    assert body == {"action": "on_play", "app": "live", "stream": "cam1",
                    "protocol": "http-flv", "client_ip": "203.0.113.7", "client": PEER,
                    "query": {"key": "v1", "token": "abc"}, "node": "edge-1"}


async def test_webhook_takeover_answer_grants_takeover_to_publish_only(
        hook_app: HookApp, hooks_factory: Callable[..., Webhooks]) -> None:
    hooks = hooks_factory(on_publish=hook_app.url("/takeover"), on_play=hook_app.url("/takeover"))
    assert await hooks.authorize(request(Action.PUBLISH)) == AuthGrant(takeover=True)
    assert await hooks.authorize(request(Action.PLAY)) is None


async def test_webhook_non_json_2xx_body_allows_without_takeover(
        hook_app: HookApp, hooks_factory: Callable[..., Webhooks]) -> None:
    hooks = hooks_factory(on_publish=hook_app.url("/text"))
    assert await hooks.authorize(request(Action.PUBLISH)) is None


async def test_webhook_without_url_for_the_action_is_open(
        hook_app: HookApp, hooks_factory: Callable[..., Webhooks]) -> None:
    hooks = hooks_factory(on_publish=hook_app.url("/deny"))
    assert await hooks.authorize(request(Action.PLAY)) is None
    assert hook_app.received == []


@pytest.mark.parametrize("policy,allows", [("deny", False), ("allow", True)])
async def test_webhook_timeout_follows_on_failure_policy(
        hook_app: HookApp, hooks_factory: Callable[..., Webhooks], policy: str,
        allows: bool) -> None:
    hooks = hooks_factory(on_publish=hook_app.url("/slow"), timeout=0.3, on_failure=policy)
    started = time.monotonic()
    if allows:
        assert await hooks.authorize(request(Action.PUBLISH)) is None
    else:
        with pytest.raises(AuthError, match="unavailable"):
            await hooks.authorize(request(Action.PUBLISH))
    assert time.monotonic() - started < 3, "the hook's timeout bounds the wait"
    assert len(hook_app.hits("/slow")) == 1, "the hook was asked"


@pytest.mark.parametrize("policy,allows", [("deny", False), ("allow", True)])
async def test_webhook_unreachable_follows_on_failure_policy(
        hooks_factory: Callable[..., Webhooks], policy: str, allows: bool) -> None:
    hooks = hooks_factory(on_play=f"http://127.0.0.1:{closed_port()}/hook", timeout=2.0,
                          on_failure=policy)
    assert await allowed(hooks, request(Action.PLAY)) is allows


async def test_webhook_answer_is_cached_for_identical_requests(
        hook_app: HookApp, hooks_factory: Callable[..., Webhooks]) -> None:
    hooks = hooks_factory(on_publish=hook_app.url("/takeover"), cache_seconds=60)
    first = await hooks.authorize(request(Action.PUBLISH, {"key": "a"}))
    second = await hooks.authorize(request(Action.PUBLISH, {"key": "a"},
                                           peer="203.0.113.7:60000"))
    assert first == second == AuthGrant(takeover=True)
    assert len(hook_app.hits("/takeover")) == 1, "same action, key, client IP and query"
    await hooks.authorize(request(Action.PUBLISH, {"key": "b"}))
    await hooks.authorize(request(Action.PUBLISH, {"key": "a"}, peer="198.51.100.1:1"))
    await hooks.authorize(request(Action.PUBLISH, {"key": "a"}, key=StreamKey("live", "cam2")))
    assert len(hook_app.hits("/takeover")) == 4, "any difference asks the hook again"


async def test_webhook_refusal_is_cached_too(
        hook_app: HookApp, hooks_factory: Callable[..., Webhooks]) -> None:
    hooks = hooks_factory(on_play=hook_app.url("/deny"), cache_seconds=60)
    for _ in range(3):
        assert not await allowed(hooks, request(Action.PLAY))
    assert len(hook_app.hits("/deny")) == 1


async def test_webhook_cache_seconds_zero_asks_every_time(
        hook_app: HookApp, hooks_factory: Callable[..., Webhooks]) -> None:
    hooks = hooks_factory(on_play=hook_app.url("/allow"), cache_seconds=0)
    for _ in range(3):
        await hooks.authorize(request(Action.PLAY))
    assert len(hook_app.hits("/allow")) == 3


async def test_webhook_publish_done_is_posted_with_the_end_reason(
        hook_app: HookApp, hooks_factory: Callable[..., Webhooks]) -> None:
    hooks = hooks_factory(on_publish_done=hook_app.url("/done"), node="origin-a")
    hooks.on_publish_end(KEY, "rtmp", PEER, "unpublished")
    await eventually(lambda: len(hook_app.hits("/done")) == 1)
    [body] = hook_app.hits("/done")
    assert body == {"action": "on_publish_done", "app": "live", "stream": "cam1",
                    "protocol": "rtmp", "client_ip": "203.0.113.7", "client": PEER,
                    "query": {}, "node": "origin-a", "reason": "unpublished"}


async def test_webhook_play_done_is_posted_for_rtmp_and_http_flv_viewers(
        hook_app: HookApp, hooks_factory: Callable[..., Webhooks]) -> None:
    hooks = hooks_factory(on_play_done=hook_app.url("/done"))
    hooks.on_play_end(KEY, "rtmp", PEER, "closed")
    hooks.on_play_end(KEY, "http-flv", "198.51.100.9:4000", "stream ended: ended")
    hooks.on_play_end(KEY, "hls", "segmenter", "segmenter stopped")  # not a viewer session
    await hooks.close()  # waits for the notifications in flight
    bodies = sorted(hook_app.hits("/done"), key=lambda b: str(b["protocol"]))
    assert [(b["action"], b["protocol"], b["client_ip"], b["reason"]) for b in bodies] == [
        ("on_play_done", "http-flv", "198.51.100.9", "stream ended: ended"),
        ("on_play_done", "rtmp", "203.0.113.7", "closed")]


async def test_webhook_done_notification_failure_is_logged_not_raised(
        hooks_factory: Callable[..., Webhooks], caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}/done"
    hooks = hooks_factory(on_publish_done=url)
    with caplog.at_level(logging.WARNING, logger="arcly.auth"):
        hooks.on_publish_end(KEY, "rtmp", PEER, "ended")
        await hooks.close()  # awaits the POST in flight; its failure does not propagate
    assert any("webhook notification failed" in r.getMessage() and url in r.getMessage()
               for r in caplog.records)


# -- per-app routing --------------------------------------------------------------------------


async def test_per_app_routes_to_the_app_section_or_the_default() -> None:
    guarded = StaticKeys(publish_keys=frozenset({"k"}))
    routing = PerApp({"studio": guarded}, StaticKeys(play_keys=frozenset({"view"})))
    assert routing.provider_for("studio") is guarded
    studio = StreamKey("studio", "cam")
    assert not await allowed(routing, request(Action.PUBLISH, key=studio))
    assert await allowed(routing, request(Action.PUBLISH, {"key": "k"}, key=studio))
    assert await allowed(routing, request(Action.PUBLISH, key=KEY)), "default: publish open"
    assert not await allowed(routing, request(Action.PLAY, key=KEY)), "default guards play"
    assert await allowed(routing, request(Action.PLAY, key=studio)), "studio: play open"


def test_per_app_is_open_only_when_every_provider_allows_all() -> None:
    assert PerApp({}, AllowAll()).open
    assert PerApp({"a": AllowAll()}, AllowAll()).open
    assert not PerApp({"a": StaticKeys(publish_keys=frozenset({"k"}))}, AllowAll()).open
    assert not PerApp({}, SignedTokens(SECRET)).open


def test_per_app_lists_its_webhook_providers() -> None:
    app_hooks, default_hooks = Webhooks(on_publish="http://a/"), Webhooks(on_play="http://b/")
    routing = PerApp({"a": app_hooks, "b": AllowAll()}, default_hooks)
    assert routing.webhooks == [app_hooks, default_hooks]
    assert PerApp({"a": SignedTokens(SECRET)}, AllowAll()).webhooks == []


async def test_webhook_sees_the_app_it_was_routed_for(
        hook_app: HookApp, hooks_factory: Callable[..., Webhooks]) -> None:
    routing = PerApp({"partner": hooks_factory(on_play=hook_app.url("/allow"))}, AllowAll())
    await routing.authorize(request(Action.PLAY, key=StreamKey("partner", "s1")))
    await routing.authorize(request(Action.PLAY, key=StreamKey("live", "s1")))
    assert [(b["app"], b["stream"]) for b in hook_app.hits("/allow")] == [("partner", "s1")]


async def test_webhook_client_ip_strips_the_port_of_an_ipv6_peer(
        hook_app: HookApp, hooks_factory: Callable[..., Webhooks]) -> None:
    hooks = hooks_factory(on_play=hook_app.url("/allow"))
    # Listeners name peers "host:port" with the bare IPv6 address (arcly.protocols.listener).
    await hooks.authorize(request(Action.PLAY, peer="2001:db8::5:5000"))
    [body] = hook_app.hits("/allow")
    assert (body["client_ip"], body["client"]) == ("2001:db8::5", "2001:db8::5:5000")
