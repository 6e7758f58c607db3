"""The few Kubernetes API calls the operator makes outside kopf's handlers: the leader Lease,
Pod annotations (deletion cost) and ``ArclyCluster`` status, from its reconcile loop.

kopf watches and hands events to handlers; it has no public client for other calls, so this is
a thin one over aiohttp with the same credentials kopf uses (the service account in a Pod, or
the API server tests give in ``ARCLY_OPERATOR_KUBE_URL``). The service-account token is read
again for every request: bound tokens are rotated under a running Pod.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(Exception):
    """An API call failed (status and the server's message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Conflict(KubeError):
    """409: someone else changed (or created) the object first."""


@dataclass(frozen=True, slots=True)
class KubeAccess:
    server: str
    token: str = ""           # a fixed token (tests)
    token_path: str = ""      # or a file to read it from on every request
    ca_path: str = ""
    insecure: bool = False

    @classmethod
    def from_settings(cls, kube_url: str) -> KubeAccess:
        """The API server of the tests, else the Pod's service account."""
        if kube_url:
            return cls(server=kube_url.rstrip("/"), token="test", insecure=True)
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        return cls(server=f"https://{host}:{port}", token_path=str(SERVICE_ACCOUNT / "token"),
                   ca_path=str(SERVICE_ACCOUNT / "ca.crt"))

    def bearer(self) -> str:
        if self.token_path:
            return Path(self.token_path).read_text().strip()
        return self.token


class Kube:
    def __init__(self, access: KubeAccess, *, timeout: float = 10.0) -> None:
        self.access = access
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl_context: ssl.SSLContext | bool = True
            if self.access.insecure:
                ssl_context = False
            elif self.access.ca_path:
                ssl_context = ssl.create_default_context(cafile=self.access.ca_path)
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(ssl=ssl_context))
        return self._session

    async def _call(self, method: str, path: str, body: Any = None, *,
                    content_type: str = "application/json",
                    params: dict[str, str] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.access.bearer()}",
                   "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with self._client().request(method, self.access.server + path, data=data,
                                          headers=headers, params=params) as response:
            text = await response.text()
            if response.status == 404 and method == "GET":
                return None
            if response.status == 409:
                raise Conflict(409, text[:300])
            if response.status >= 300:
                raise KubeError(response.status, text[:300])
            return json.loads(text) if text else {}

    async def get(self, path: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._call("GET", path)
        return result

    async def list(self, path: str, *, labels: Mapping[str, str] | None = None
                   ) -> list[dict[str, Any]]:
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} \
            if labels else None
        result = await self._call("GET", path, params=params)
        items: list[dict[str, Any]] = (result or {}).get("items", [])
        return items

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", path, body)
        return result

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch. With ``metadata.resourceVersion`` in ``body`` the API server
        applies it only to that version of the object (409 otherwise): compare-and-swap."""
        result: dict[str, Any] = await self._call(
            "PATCH", path, body, content_type="application/merge-patch+json")
        return result

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
