"""``GET /metrics``: the node's OpenTelemetry instruments in the Prometheus text format.

The same instruments feed OTLP when that is on (``arcly.observe.sdk``); here they are read by a
Prometheus reader, and the scrape is what runs the per-stream callbacks (nothing per frame).
Open like the probes: it carries stream keys and counts, never peers or credentials.
"""

from __future__ import annotations

from collections.abc import Callable

from .exchange import Exchange

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsRoute:
    def __init__(self, render: Callable[[], bytes] | None) -> None:
        self.render = render  # None: metrics are off on this node

    async def serve(self, exchange: Exchange, params: dict[str, str]) -> None:
        if self.render is None:
            exchange.respond(404, "no metrics on this port (see --metrics-listen, --no-metrics, "
                                  "OTEL_SDK_DISABLED)\n")
            return
        exchange.respond(200, self.render(), CONTENT_TYPE)
