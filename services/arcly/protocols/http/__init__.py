"""HTTP: the node's HTTP listener, as a small router plus one module per concern.

- ``request`` — a sans-I/O request-head parser with hard limits;
- ``exchange`` — one request and its response, what every handler gets;
- ``router`` — method + path pattern → handler;
- ``server`` — the listener (shared skeleton in ``arcly.protocols.listener``) and the route table;
- ``flv`` — HTTP-FLV playback; ``hls`` — HLS playlists and segments;
- ``api`` — the JSON management API; ``pages`` — status page, players, static scripts;
- ``probes`` — liveness and readiness; ``metrics`` — ``/metrics`` for Prometheus.
"""

from .probes import LIVENESS_PATH, READINESS_PATH
from .server import HttpServer, MetricsServer
from .settings import HttpSettings

__all__ = ["LIVENESS_PATH", "READINESS_PATH", "HttpServer", "HttpSettings", "MetricsServer"]
