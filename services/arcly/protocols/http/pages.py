"""Pages for people: the status page at ``/``, a minimal player page per stream, and the static
player scripts they load.

``/play/{app}/{stream}`` plays HLS with hls.js (or natively where the browser can, as Safari
does) — in low-latency mode when the node serves Low-Latency HLS; ``?type=flv`` plays HTTP-FLV
with mpegts.js; ``?type=webrtc`` plays over WHEP (sub-second). ``/publish/{app}/{stream}``
publishes the browser's camera and microphone over WHIP. The scripts are served from the node's
``static`` folder (``make static`` fetches them from the npm registry) and fall back to a
public CDN when the node has no copy.
"""

from __future__ import annotations

import functools
import html
import re
from pathlib import Path

from arcly.engine import InvalidStreamKey, StreamKey

from .exchange import HTML, Exchange

STATIC_DIR = Path(__file__).with_name("static")
_STATIC_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}\.js")
CDN = {"hls.min.js": "https://cdn.jsdelivr.net/npm/hls.js@1/dist/hls.min.js",
       "mpegts.js": "https://cdn.jsdelivr.net/npm/mpegts.js@1/dist/mpegts.js"}


def static_file(name: str) -> bytes | None:
    """A player script by name, if this node has it."""
    if not _STATIC_NAME.fullmatch(name):
        return None
    path = STATIC_DIR / name
    return path.read_bytes() if path.is_file() else None


def _script(name: str) -> str:
    return f"/static/{name}" if (STATIC_DIR / name).is_file() else CDN[name]


def hls_config(low_latency: bool) -> str:
    """hls.js options: Low-Latency HLS aims at the playlist's PART-HOLD-BACK (a
    ``liveSyncDuration*`` option would override it) and plays up to 1.5x to catch up after a
    stall; classic HLS starts two segments from the end."""
    if low_latency:
        return "{lowLatencyMode: true, maxLiveSyncPlaybackRate: 1.5}"
    return "{liveSyncDurationCount: 2}"


@functools.cache
def _webrtc_code() -> str:
    return Path(__file__).with_name("webrtc.js").read_text()


def _webrtc_script(call: str) -> str:
    return f"<script>\n{_webrtc_code()}\n{call}\n</script>"


def player_page(key: StreamKey, *, kind: str = "hls", low_latency: bool = False,
                publish: bool = False) -> str:
    title = html.escape(str(key))
    if publish:
        kind = "whip"
        attach = _webrtc_script(f"whipPublish('/{key.app}/{key.stream}/whip');")
    elif kind == "webrtc":
        attach = _webrtc_script(f"whepPlay('/{key.app}/{key.stream}/whep');")
    elif kind == "flv":
        src = f"/{key.app}/{key.stream}.flv"
        attach = (f'<script src="{_script("mpegts.js")}"></script><script>\n'
                  "const player = mpegts.createPlayer({type: 'flv', isLive: true, "
                  f"url: '{src}'}});\nplayer.attachMediaElement(video); player.load(); "
                  "player.play();\n</script>")
    else:
        src = f"/{key.app}/{key.stream}/index.m3u8"
        attach = (f'<script src="{_script("hls.min.js")}"></script><script>\n'
                  "if (window.Hls && Hls.isSupported()) {\n"
                  f"  const hls = window.hls = new Hls({hls_config(low_latency)});\n"
                  f"  hls.loadSource('{src}'); hls.attachMedia(video);\n"
                  "  hls.on(Hls.Events.ERROR, (e, d) => { if (d.fatal) status.textContent = "
                  "'error: ' + d.details; });\n"
                  f"}} else {{ video.src = '{src}'; }}\n</script>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · arcly</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{margin:0;background:#111;color:#ddd;font:14px system-ui,sans-serif}}
video{{width:100%;max-height:90vh;background:#000}}p{{margin:.5em 1em}}</style></head>
<body><video id="video" controls autoplay muted playsinline></video>
<p>{title} · {html.escape(kind.upper())} · <span id="status">loading</span></p>
<script>const video = document.getElementById('video');
const status = document.getElementById('status');
video.addEventListener('playing', () => status.textContent = 'playing');</script>
{attach}
</body></html>
"""


def status_page(*, low_latency: bool = False) -> str:
    """The page people open first: live streams with their figures and an embedded player."""
    template = Path(__file__).with_name("status.html").read_text()
    return template.replace("__HLS__", _script("hls.min.js")).replace(
        "__MPEGTS__", _script("mpegts.js")).replace("__HLS_CONFIG__", hls_config(low_latency))


async def serve_static(exchange: Exchange, params: dict[str, str]) -> None:
    script = static_file(params["name"])
    if script is None:
        exchange.respond(404, "not found\n")
    else:
        exchange.respond(200, script, "text/javascript; charset=utf-8",
                         {"Cache-Control": "public, max-age=3600"})


def _key(exchange: Exchange, params: dict[str, str]) -> StreamKey | None:
    """The page's stream key, or None once the client got its 404."""
    try:
        return StreamKey(params["app"], params["stream"])
    except InvalidStreamKey as exc:
        exchange.respond(404, f"{exc}\n")
        return None


class Pages:
    """The status and player pages of a node (``low_latency``: it serves Low-Latency HLS)."""

    def __init__(self, *, low_latency: bool = False) -> None:
        self.low_latency = low_latency

    async def status(self, exchange: Exchange, params: dict[str, str]) -> None:
        exchange.respond(200, status_page(low_latency=self.low_latency), HTML)

    async def player(self, exchange: Exchange, params: dict[str, str]) -> None:
        key = _key(exchange, params)
        if key is None:
            return
        kind = exchange.request.query.get("type", "hls")
        if kind not in ("flv", "webrtc"):
            kind = "hls"
        exchange.respond(200, player_page(key, kind=kind, low_latency=self.low_latency), HTML)

    async def publisher(self, exchange: Exchange, params: dict[str, str]) -> None:
        key = _key(exchange, params)
        if key is None:
            return
        exchange.respond(200, player_page(key, publish=True), HTML)
