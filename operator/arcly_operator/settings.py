"""Operator settings from the environment (the chart sets them). The registry's defaults are
the nodes' own (``RegistrySettings``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from arcly.cluster.registry import RegistrySettings

_REGISTRY = RegistrySettings()


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    redis_url: str = _REGISTRY.url
    redis_password: str = _REGISTRY.password
    redis_prefix: str = _REGISTRY.prefix
    release: str = ""            # only Pods of this Helm release (all arcly Pods when empty)
    namespace: str = "default"   # where the Pods, the Lease and the ArclyCluster live
    reap_interval: float = 10.0  # seconds between reconcile runs of the leader
    lease_seconds: float = 15.0  # a leader silent this long is replaced
    lease_retry: float = 2.0     # how often a follower tries to take over
    metrics_listen: str = "0.0.0.0:8082"  # GET /metrics; empty: off
    kube_url: str = ""           # tests: an API server to talk to instead of in-cluster login

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        defaults = cls()

        def number(name: str, default: float) -> float:
            raw = env.get(name, "")
            try:
                value = float(raw) if raw else default
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None
            if value <= 0:
                raise ValueError(f"{name}={raw!r} must be positive")
            return value

        return cls(redis_url=env.get("ARCLY_REDIS_URL", defaults.redis_url),
                   redis_password=env.get("ARCLY_REDIS_PASSWORD", defaults.redis_password),
                   redis_prefix=env.get("ARCLY_REDIS_PREFIX", defaults.redis_prefix),
                   release=env.get("ARCLY_RELEASE", ""),
                   namespace=env.get("POD_NAMESPACE", defaults.namespace),
                   reap_interval=number("ARCLY_OPERATOR_INTERVAL", defaults.reap_interval),
                   lease_seconds=number("ARCLY_OPERATOR_LEASE_SECONDS",
                                        defaults.lease_seconds),
                   lease_retry=number("ARCLY_OPERATOR_LEASE_RETRY", defaults.lease_retry),
                   metrics_listen=env.get("ARCLY_OPERATOR_METRICS", defaults.metrics_listen),
                   kube_url=env.get("ARCLY_OPERATOR_KUBE_URL", ""))

    @property
    def lease_name(self) -> str:
        return f"{self.release or 'arcly'}-operator"

    def pod_labels(self) -> dict[str, str]:
        """The labels of this release's objects (all arcly objects without a release)."""
        labels = {"app.kubernetes.io/part-of": "arcly"}
        if self.release:
            labels["app.kubernetes.io/instance"] = self.release
        return labels

    def registry(self) -> RegistrySettings:
        return RegistrySettings(url=self.redis_url, password=self.redis_password,
                                prefix=self.redis_prefix)
