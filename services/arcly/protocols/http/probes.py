"""Health probes every node serves (the Helm chart's probes must use these paths).

Liveness: the process serves. Readiness: it also takes new sessions (false while draining,
so a Service stops sending new viewers and publishers).
"""

from __future__ import annotations

from arcly.protocols.listener import Admission, Listener

from .exchange import Exchange

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"


class Probes:
    def __init__(self, listener: Listener, admission: Admission) -> None:
        self.listener = listener
        self.admission = admission

    def _answer(self, exchange: Exchange, *, readiness: bool) -> None:
        stopping = self.listener.stopping
        draining = readiness and self.admission.draining
        ready = not stopping and not draining
        state = "ok" if ready else "stopping" if stopping else "draining"
        exchange.json(200 if ready else 503, {"status": state})

    async def liveness(self, exchange: Exchange, params: dict[str, str]) -> None:
        self._answer(exchange, readiness=False)

    async def readiness(self, exchange: Exchange, params: dict[str, str]) -> None:
        self._answer(exchange, readiness=True)
