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
    redis_prefix: str = _REGISTRY.prefix
    release: str = ""            # only Pods of this Helm release (all arcly Pods when empty)
    reap_interval: float = 10.0
    kube_url: str = ""           # tests: an API server to talk to instead of in-cluster login

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        defaults = cls()
        return cls(redis_url=env.get("ARCLY_REDIS_URL", defaults.redis_url),
                   redis_prefix=env.get("ARCLY_REDIS_PREFIX", defaults.redis_prefix),
                   release=env.get("ARCLY_RELEASE", ""),
                   reap_interval=float(env.get("ARCLY_OPERATOR_INTERVAL",
                                               defaults.reap_interval)),
                   kube_url=env.get("ARCLY_OPERATOR_KUBE_URL", ""))

    def registry(self) -> RegistrySettings:
        return RegistrySettings(url=self.redis_url, prefix=self.redis_prefix)
