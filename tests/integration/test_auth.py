"""Auth providers on a real node: static keys, signed tokens, webhooks, takeover, the API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from aiohttp import web

from arcly.auth import tokens
from tests.support.media import load_tags
from tests.support.processes import Node
from tests.support.rtmp_client import RtmpClient
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration
JWT_SECRET = "jwt-test-secret-of-thirty-two-bytes!"
SECRET = "token-secret"


class HookServer:
    """An auth webhook service on loopback (aiohttp), in its own thread."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.port = 0
        self._ready = asyncio.Event()
        self._loop = asyncio.new_event_loop()
        import threading
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            body = await request.json()
            body["_path"] = request.path
            self.calls.append(body)
            if request.path.endswith("_done"):
                return web.Response(status=200)
            if body["stream"].startswith("boss"):
                return web.json_response({"takeover": True})
            denied = body["stream"].startswith("no") or body["query"].get("deny") == "1"
            return web.Response(status=403 if denied else 200)

        app = web.Application()
        app.router.add_post("/{name}", hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture
def hooks() -> Iterator[HookServer]:
    server = HookServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def secured(node_factory: Callable[..., Node], hooks: HookServer, tmp_path: Path) -> Node:
    (tmp_path / "publish-keys").write_text("# publishers\npk\n")
    config = tmp_path / "auth.toml"
    config.write_text(f"""
[default]
provider = "allow-all"

[apps.static]
provider = "static"
publish_keys_file = "{tmp_path / 'publish-keys'}"
play_keys = ["vk"]
takeover_keys = ["boss"]

[apps.signed]
provider = "tokens"
secret_env = "ARCLY_TEST_SECRET"
skew = 5

[apps.hooked]
provider = "webhook"
on_publish = "http://127.0.0.1:{hooks.port}/on_publish"
on_play = "http://127.0.0.1:{hooks.port}/on_play"
on_publish_done = "http://127.0.0.1:{hooks.port}/on_publish_done"
on_play_done = "http://127.0.0.1:{hooks.port}/on_play_done"
cache_seconds = 0

[apps.down]
provider = "webhook"
on_publish = "http://127.0.0.1:9/on_publish"
timeout = 1
on_failure = "deny"

[apps.jwt]
provider = "jwt"
secret_env = "ARCLY_TEST_JWT"
audience = "arcly"

[apps.downok]
provider = "webhook"
on_publish = "http://127.0.0.1:9/on_publish"
timeout = 1
on_failure = "allow"
""")
    return node_factory("--auth-config", str(config), "--api-token", "api-secret",
                        env={"ARCLY_TEST_SECRET": SECRET, "ARCLY_TEST_JWT": JWT_SECRET})


def publish_status(node: Node, app: str, name: str, tags: list[Any] | None = None) -> str:
    async def run() -> str:
        client = await RtmpClient.connect("127.0.0.1", node.rtmp, app)
        status = await client.publish(name)
        if status.code == "NetStream.Publish.Start" and tags:
            for tag in tags:
                client.send_media(tag.tag_type, tag.timestamp, tag.body)
            await client.writer.drain()
            await asyncio.to_thread(node.wait_for_stream, f"{app}/{name.partition('?')[0]}",
                                    len(tags))
        await client.close()
        return status.code
    return asyncio.run(run())


def play_status(node: Node, app: str, name: str) -> str:
    async def run() -> str:
        client = await RtmpClient.connect("127.0.0.1", node.rtmp, app)
        status = await client.play(name)
        await client.close()
        return status.code
    return asyncio.run(run())


def http_status(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> int:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            resp.read(1)
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


class LivePublisher:
    """A test-client publisher in a background thread: it sends ``tags`` in real time, then
    stays connected (silent) until the node closes the connection or ``stop()`` is called,
    so the stream outlasts whatever the test does meanwhile, however slow the machine."""

    def __init__(self, node: Node, app: str, name: str, tags: list[Any]) -> None:
        import threading

        self.status = ""
        self.closed = False
        self._stopping = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._run(node, app, name, tags),), daemon=True)
        self._started = threading.Event()
        self._thread.start()
        self._started.wait(20)

    async def _run(self, node: Node, app: str, name: str, tags: list[Any]) -> None:
        client = await RtmpClient.connect("127.0.0.1", node.rtmp, app)
        self.status = (await client.publish(name)).code
        self._started.set()
        if self.status != "NetStream.Publish.Start":
            return
        start = time.monotonic()
        for tag in tags:
            delay = tag.timestamp / 1000 - (time.monotonic() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            if client.reader.at_eof() or self._stopping.is_set():
                break
            client.send_media(tag.tag_type, tag.timestamp, tag.body)
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await client.read_message(0.2)
        except EOFError:
            self.closed = client.closed
        await client.close()

    def join(self, timeout: float = 30) -> None:
        """Wait for the node to close the connection."""
        self._thread.join(timeout)

    def stop(self) -> None:
        """Leave (the test is done with the stream)."""
        self._stopping.set()
        self._thread.join(30)


def test_static_keys_guard_publish_play_flv_and_hls(secured: Node, source_flv: Path) -> None:
    tags = load_tags(source_flv)
    assert publish_status(secured, "static", "cam") == "NetStream.Publish.Unauthorized"
    assert publish_status(secured, "static", "cam?key=wrong") == "NetStream.Publish.Unauthorized"
    live = LivePublisher(secured, "static", "cam?key=pk", tags[:400])
    assert live.status == "NetStream.Publish.Start"
    secured.wait_for_stream("static/cam", frames=8)
    assert play_status(secured, "static", "cam") == "NetStream.Play.Failed"
    assert play_status(secured, "static", "cam?key=vk") == "NetStream.Play.Start"
    base = f"http://127.0.0.1:{secured.http}/static/cam"
    assert http_status(f"{base}.flv") == 403
    assert http_status(f"{base}.flv?key=vk") == 200
    assert http_status(f"{base}/index.m3u8") == 403
    with urllib.request.urlopen(f"{base}/index.m3u8?key=vk", timeout=20) as resp:
        playlist = resp.read().decode()
    # Every URI the playlist names (init segment, parts, segments) carries the credentials.
    named = re.findall(r'URI="([^"]+)"|^([^#\s]\S*)$', playlist, re.MULTILINE)
    uris = [quoted or bare for quoted, bare in named]
    assert uris and all(uri.endswith("?key=vk") for uri in uris)
    for uri in uris[:3]:
        assert http_status(f"{base}/{uri}") == 200
        assert http_status(f"{base}/{uri.split('?')[0]}") == 403
    # Hijack protection: a second publisher with a plain key is refused, a takeover key wins.
    assert publish_status(secured, "static", "cam?key=pk") == "NetStream.Publish.BadName"
    assert publish_status(secured, "static", "cam?key=boss") == "NetStream.Publish.Start"
    live.join()
    assert live.closed, "the replaced publisher was disconnected"
    secured.wait_for_log(r"publish takeover stream=static/cam")


def test_jwt_permissions_decide_publish_and_play_on_a_real_node(secured: Node) -> None:
    def token(*permissions: tuple[str, str], **claims: Any) -> str:
        body = {"arcly_permissions": [{"action": a, "path": p} for a, p in permissions],
                "aud": "arcly", "exp": int(time.time()) + 60, **claims}
        return pyjwt.encode(body, JWT_SECRET, algorithm="HS256")

    publisher = token(("publish", "jwt/*"), ("play", "jwt/*"))
    viewer = token(("play", "jwt/*"))
    assert publish_status(secured, "jwt", "cam") == "NetStream.Publish.Unauthorized"
    assert publish_status(secured, "jwt", f"cam?jwt={viewer}") == \
        "NetStream.Publish.Unauthorized"
    assert publish_status(secured, "jwt", f"cam?jwt={token(('publish', 'jwt/*'), aud='x')}") \
        == "NetStream.Publish.Unauthorized"
    assert publish_status(secured, "jwt", f"cam?jwt={publisher}") == "NetStream.Publish.Start"
    secured.wait_for_log(r"jwt refused action=publish stream=jwt/cam .*reason=no permission")
    secured.wait_for_log(r"jwt refused action=publish stream=jwt/cam .*Audience")


def test_signed_tokens_expire_and_cannot_be_tampered(secured: Node) -> None:
    minted = subprocess.run([sys.executable, "-m", "arcly", "token", "sign", "--key", SECRET,
                             "--app", "signed", "--stream", "cam", "--ttl", "60"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert publish_status(secured, "signed", "cam") == "NetStream.Publish.Unauthorized"
    assert publish_status(secured, "signed", f"cam?{minted}") == "NetStream.Publish.Start"
    expired = tokens.sign(SECRET, "publish", "signed", "cam", expires=int(time.time()) - 60)
    fresh = tokens.sign(SECRET, "publish", "signed", "cam", ttl=60)
    tampered = ("0" if fresh["token"][0] != "0" else "1") + fresh["token"][1:]
    other = tokens.sign(SECRET, "publish", "signed", "other", ttl=60)
    play = tokens.sign(SECRET, "play", "signed", "cam", ttl=60)
    refused = [
        expired,                                                   # expired
        {"token": tampered, "expires": fresh["expires"]},          # tampered signature
        {"token": fresh["token"],                                  # expiry stretched
         "expires": str(int(fresh["expires"]) + 3600)},
        other,                                                     # another stream's token
        play,                                                      # a play token
    ]
    for query in refused:
        name = f"cam?token={query['token']}&expires={query['expires']}"
        assert publish_status(secured, "signed", name) == "NetStream.Publish.Unauthorized"
    secured.wait_for_log(r"publish refused app=signed name=cam .*invalid or expired token")


def test_webhooks_see_nginx_style_json_and_failures_follow_policy(
        secured: Node, hooks: HookServer, source_flv: Path) -> None:
    tags = load_tags(source_flv)[:60]
    assert publish_status(secured, "hooked", "no-entry") == "NetStream.Publish.Unauthorized"
    assert publish_status(secured, "hooked", "welcome?sign=abc", tags) == \
        "NetStream.Publish.Start"
    wait_until(lambda: any(c["_path"] == "/on_publish_done" for c in hooks.calls),
               message="no on_publish_done call")
    by_path = {c["_path"]: c for c in hooks.calls if c["stream"] == "welcome"}
    call = by_path["/on_publish"]
    assert call["action"] == "on_publish" and call["app"] == "hooked"
    assert call["stream"] == "welcome" and call["protocol"] == "rtmp"
    assert call["client_ip"] == "127.0.0.1" and call["query"] == {"sign": "abc"}
    assert by_path["/on_publish_done"]["action"] == "on_publish_done"
    assert publish_status(secured, "down", "cam") == "NetStream.Publish.Unauthorized"
    assert publish_status(secured, "downok", "cam") == "NetStream.Publish.Start"


def test_management_api_needs_its_token_and_can_kick(secured: Node, source_flv: Path) -> None:
    tags = load_tags(source_flv)
    live = LivePublisher(secured, "live", "kickme", tags[:600])
    assert live.status == "NetStream.Publish.Start"
    url = f"http://127.0.0.1:{secured.http}/api/v1/streams"
    assert http_status(url) == 401
    assert http_status(url, {"Authorization": "Bearer wrong"}) == 401
    with urllib.request.urlopen(urllib.request.Request(
            url, headers={"Authorization": "Bearer api-secret"}), timeout=10) as resp:
        assert "live/kickme" in json.load(resp)["streams"][0]["key"]
    assert http_status(f"{url}/live/kickme", method="DELETE") == 401
    assert http_status(f"{url}/live/kickme", {"Authorization": "Bearer api-secret"},
                       "DELETE") == 200
    live.join()
    assert live.closed, "the kicked publisher was disconnected"
    secured.wait_for_log(r"publish end stream=live/kickme .*kicked via API")


@pytest.mark.parametrize("app", ["static", "signed", "hooked"])
def test_each_provider_guards_play_over_rtmp_flv_and_hls(
        app: str, secured: Node, source_flv: Path) -> None:
    def signed(action: str) -> str:
        return "token={token}&expires={expires}".format(
            **tokens.sign(SECRET, action, "signed", "show", ttl=600))

    # (publish credentials, play credentials, refused play credentials)
    creds = {
        "static": ("key=pk", "key=vk", "key=wrong"),
        "signed": (signed("publish"), signed("play"), "token=00&expires=9999999999"),
        "hooked": ("", "", "deny=1"),
    }[app]
    publish_q, allowed, refused = creds
    live = LivePublisher(secured, app, f"show?{publish_q}" if publish_q else "show",
                         load_tags(source_flv)[:500])
    assert live.status == "NetStream.Publish.Start"
    secured.wait_for_stream(f"{app}/show", frames=8)
    assert play_status(secured, app, f"show?{refused}") == "NetStream.Play.Failed"
    assert play_status(secured, app, f"show?{allowed}" if allowed else "show") == \
        "NetStream.Play.Start"
    base = f"http://127.0.0.1:{secured.http}/{app}/show"
    assert http_status(f"{base}.flv?{refused}") == 403
    assert http_status(f"{base}.flv?{allowed}") == 200
    assert http_status(f"{base}/index.m3u8?{refused}") == 403
    assert http_status(f"{base}/index.m3u8?{allowed}") == 200
    live.stop()
