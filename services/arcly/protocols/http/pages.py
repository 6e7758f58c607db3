"""Pages for people: the status page at ``/``, a minimal player page per stream, and the static
player scripts they load.

``/play/{app}/{stream}`` plays HLS with hls.js (or natively where the browser can, as Safari
does); ``?type=flv`` plays HTTP-FLV with mpegts.js. The scripts are served from the node's
``static`` folder (``make static`` fetches them from the npm registry) and fall back to a
public CDN when the node has no copy.
"""

from __future__ import annotations

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


def player_page(key: StreamKey, *, kind: str = "hls") -> str:
    title = html.escape(str(key))
    if kind == "flv":
        src = f"/{key.app}/{key.stream}.flv"
        attach = (f'<script src="{_script("mpegts.js")}"></script><script>\n'
                  "const player = mpegts.createPlayer({type: 'flv', isLive: true, "
                  f"url: '{src}'}});\nplayer.attachMediaElement(video); player.load(); "
                  "player.play();\n</script>")
    else:
        src = f"/{key.app}/{key.stream}/index.m3u8"
        attach = (f'<script src="{_script("hls.min.js")}"></script><script>\n'
                  "if (window.Hls && Hls.isSupported()) {\n"
                  f"  const hls = new Hls({{liveSyncDurationCount: 2}}); hls.loadSource('{src}');\n"
                  "  hls.attachMedia(video);\n"
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


def status_page() -> str:
    """The page people open first: live streams with their figures and an embedded player."""
    template = Path(__file__).with_name("status.html").read_text()
    return template.replace("__HLS__", _script("hls.min.js")).replace(
        "__MPEGTS__", _script("mpegts.js"))


async def serve_status(exchange: Exchange, params: dict[str, str]) -> None:
    exchange.respond(200, status_page(), HTML)


async def serve_static(exchange: Exchange, params: dict[str, str]) -> None:
    script = static_file(params["name"])
    if script is None:
        exchange.respond(404, "not found\n")
    else:
        exchange.respond(200, script, "text/javascript; charset=utf-8",
                         {"Cache-Control": "public, max-age=3600"})


async def serve_player(exchange: Exchange, params: dict[str, str]) -> None:
    try:
        key = StreamKey(params["app"], params["stream"])
    except InvalidStreamKey as exc:
        exchange.respond(404, f"{exc}\n")
        return
    kind = "flv" if exchange.request.query.get("type") == "flv" else "hls"
    exchange.respond(200, player_page(key, kind=kind), HTML)
